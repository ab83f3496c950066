"""Writing JSON that matches a schema with a model that knows no schema.

The writer walks the schema and writes every fixed part itself (braces, brackets, keys in
the schema's order, separators, ``const`` values, closing quotes); the model writes only
the free parts: the characters of a string, the digits of a number, and each choice
(an enum value, ``true``/``false``, an ``anyOf`` branch, whether an optional property is
present, whether an array goes on). The model's text arrives through a
:class:`TextRun`, one engine run continuing the reply written so far, and is checked
character by character:

- A free part takes the model's characters while they can continue the value, and ends
  the moment the value is complete (a closing quote, a character that cannot continue a
  number, ``maxLength`` or the length cap) or the model stops.
- After a free part, the run goes on: the fixed part that follows is compared with
  what the model writes next, so a model that gets the structure right writes a whole
  reply in one run. Whitespace between JSON tokens is the model's choice.
- At the first character that cannot be part of a valid reply (a divergence), the run
  is stopped, the writer writes the fixed part itself, and the next free part starts a
  new run from the reply written so far.
- A choice among fixed texts lets the model write characters until one option is left,
  then completes that option. When the model's text matches no option (or the model
  stops first), the first option still possible is taken; options are ordered so that
  this is the shortest valid continuation: the listed enum value or ``anyOf`` branch that
  comes first, ``true``, an omitted optional property, a closed array.

When the token budget is spent (or the schema nests deeper than ``MAX_DEPTH``), every
remaining value is written in its shortest valid form, so the reply is always complete.
What cannot be enforced this way is left to the server's validation of the whole reply:
``pattern``, ``format``, ``multipleOf``, ``uniqueItems`` and keywords like ``not``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

from .schema import MAX_DEPTH, Schema, SchemaReader, clamp_number, literal

# Whitespace the model may write between two JSON tokens before it counts as rambling.
_MAX_WHITESPACE = 2
_WHITESPACE = " \t\n\r"
# Characters of literals (numbers, true, false, null): no whitespace between two of them.
_WORD = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789+-.")
_MAX_NUMBER_CHARS = 16
_FREE_KEY_CAP = 32
_RECOUNT_EVERY = 16
_ESCAPES = '"\\/bfnrt'
_HEX = "0123456789abcdefABCDEF"
_INT = r"(?:0|[1-9]\d*)"
_NUMBER_PREFIX = re.compile(rf"-?(?:{_INT}(?:\.(?:\d+(?:[eE][+-]?\d*)?)?|[eE][+-]?\d*)?)?")
_NUMBER = re.compile(rf"-?{_INT}(?:\.\d+)?(?:[eE][+-]?\d+)?")
_INTEGER_PREFIX = re.compile(r"-?(?:0|[1-9]\d*)?")
_INTEGER = re.compile(rf"-?{_INT}")


class TextRun(Protocol):
    """One engine run continuing the reply: the model's text, a character at a time."""

    async def next_char(self) -> str | None:
        """The next character, or None when the run has ended."""
        ...

    @property
    def stopped_by_model(self) -> bool:
        """Whether the run ended because the model stopped (not the run's budget)."""
        ...

    async def stop(self) -> None:
        """End the run now (it is not needed any more)."""
        ...


StartRun = Callable[[str, int], Awaitable[TextRun]]


@dataclass(frozen=True)
class Limits:
    """The reply's token budget and the caps on unbounded strings and arrays."""

    max_tokens: int
    string_cap: int
    array_cap: int
    # The most tokens the first run is asked for (later runs: the rest of the budget).
    first_run_tokens: int


class _Option:
    """A fixed text the model may write, with where JSON allows whitespace in it."""

    def __init__(self, text: str) -> None:
        self.text = text
        outside: list[bool] = []
        in_string = escaped = False
        for char in text:
            outside.append(not in_string)
            if escaped:
                escaped = False
            elif char == "\\" and in_string:
                escaped = True
            elif char == '"':
                in_string = not in_string
        self.outside = outside

    def next_position(self, position: int) -> int:
        """The position of the next character that is not optional whitespace."""
        while position < len(self.text) and self.text[position] == " " and self.outside[position]:
            position += 1
        return position

    def whitespace_allowed(self, position: int) -> bool:
        """Between two JSON tokens: outside strings, and not inside a literal."""
        if position >= len(self.text):
            return True
        if not self.outside[position]:
            return False
        return not (
            position > 0 and self.text[position - 1] in _WORD and self.text[position] in _WORD
        )


class JSONWriter:
    """Writes one JSON value matching ``schema``; :attr:`text` is the reply so far."""

    def __init__(
        self,
        schema: Schema,
        start_run: StartRun,
        limits: Limits,
        count_tokens: Callable[[str], int],
    ) -> None:
        self.reader = SchemaReader(schema)
        self.schema = schema
        self.limits = limits
        self.text = ""
        self.runs = 0
        self._start_run = start_run
        self._count_tokens = count_tokens
        self._run: TextRun | None = None
        self._lookahead: str | None = None
        self._shortest_only = False
        self._counted_length = 0
        self._counted_tokens = 0
        # Where text the writer may still take back starts (a number it may move into
        # its bounds, an escape it may drop); None: all of ``text`` is final.
        self._revisable_from: int | None = None

    @property
    def settled(self) -> str:
        """The reply so far without the part the writer may still change: it only grows,
        so it can be sent before the reply is complete."""
        if self._revisable_from is None:
            return self.text
        return self.text[: self._revisable_from]

    @property
    def tokens_so_far(self) -> int:
        """The reply's token count as last counted plus one per character since."""
        return self._counted_tokens + max(len(self.text) - self._counted_length, 0)

    # -- the model's text ------------------------------------------------------------------

    async def _peek(self, *, start: bool) -> str | None:
        """The model's next character without taking it. With ``start``, a new run is
        started when none is going (the reply so far is its prompt's end)."""
        if self._lookahead is not None:
            return self._lookahead
        while True:
            if self._run is None:
                if not start or self._out_of_budget():
                    return None
                budget = self._remaining_tokens()
                if not self.runs:
                    budget = min(self.limits.first_run_tokens, budget)
                self._run = await self._start_run(self.text, max(budget, 1))
                self.runs += 1
                started_at = len(self.text)
            else:
                started_at = -1
            char = await self._run.next_char()
            if char is not None:
                self._lookahead = char
                return char
            by_model = self._run.stopped_by_model
            await self._drop_run()
            # A run that ran out of its own budget mid-value is continued by a new one;
            # a model that stopped (or a run that wrote nothing) has nothing more to say.
            if by_model or started_at == len(self.text) or not start:
                return None

    def _take(self) -> str:
        char = self._lookahead
        assert char is not None
        self._lookahead = None
        self.text += char
        return char

    async def _drop_run(self) -> None:
        self._lookahead = None
        run, self._run = self._run, None
        if run is not None:
            await run.stop()

    async def _diverge(self) -> None:
        """The model wrote something that cannot be part of the reply: stop its run."""
        await self._drop_run()

    async def _skip_whitespace(self) -> None:
        for _ in range(_MAX_WHITESPACE):
            char = await self._peek(start=False)
            if char is None or char not in _WHITESPACE:
                return
            self._take()

    async def _peek_value_start(self) -> str | None:
        """The first character of a value the model writes, after its whitespace."""
        char = await self._peek(start=True)
        for _ in range(_MAX_WHITESPACE):
            if char is None or char not in _WHITESPACE:
                break
            self._take()
            char = await self._peek(start=True)
        return char

    async def close(self) -> None:
        """Stop the run still going, if any (the reply is complete or abandoned)."""
        await self._drop_run()

    # -- budget ----------------------------------------------------------------------------

    def _remaining_tokens(self) -> int:
        """Tokens left for the reply: counted exactly every few characters, and in
        between assumed to be one per character (never fewer than there are)."""
        grown = len(self.text) - self._counted_length
        if grown < 0 or grown >= _RECOUNT_EVERY:
            self._counted_tokens = self._count_tokens(self.text)
            self._counted_length = len(self.text)
            grown = 0
        return self.limits.max_tokens - self._counted_tokens - grown

    def _out_of_budget(self) -> bool:
        if not self._shortest_only and self._remaining_tokens() <= 0:
            self._shortest_only = True
        return self._shortest_only

    # -- fixed parts and choices -----------------------------------------------------------

    async def fixed(self, text: str) -> None:
        """Write a fixed part: taken from the model while it writes exactly this."""
        await self._follow(_Option(text), 0)

    async def _follow(self, option: _Option, position: int) -> None:
        spaces = 0
        while True:
            target = option.next_position(position)
            if target >= len(option.text):
                return
            char = await self._peek(start=False)
            if char is None:
                self.text += option.text[position:]
                return
            if (
                char in _WHITESPACE
                and option.whitespace_allowed(position)
                and spaces < _MAX_WHITESPACE
            ):
                self._take()
                spaces += 1
                continue
            if char != option.text[target]:
                await self._diverge()
                self.text += option.text[position:]
                return
            self._take()
            position = target + 1
            spaces = 0

    async def choose(self, options: list[str]) -> int:
        """Let the model pick one of ``options`` (fixed texts) and write it; the index.

        Characters are read until one option is left (or one is complete and the next
        character cannot continue another); when the model's text matches none of them,
        or it stops, the first option still possible is taken."""
        choices = [_Option(text) for text in options]
        alive = list(range(len(choices)))
        positions = [0] * len(choices)
        spaces = 0
        while len(alive) > 1:
            complete = [
                i for i in alive if choices[i].next_position(positions[i]) >= len(options[i])
            ]
            if len(complete) == len(alive):
                break
            char = await self._peek(start=True)
            if char is None:
                alive = complete or alive
                break
            first = choices[alive[0]]
            allowed = first.whitespace_allowed(positions[alive[0]])
            if char in _WHITESPACE and allowed and spaces < _MAX_WHITESPACE:
                self._take()
                spaces += 1
                continue
            following = []
            for i in alive:
                target = choices[i].next_position(positions[i])
                if target < len(options[i]) and options[i][target] == char:
                    following.append(i)
            if not following:
                if not complete:
                    await self._diverge()
                alive = complete or alive
                break
            self._take()
            for i in following:
                positions[i] = choices[i].next_position(positions[i]) + 1
            alive = following
            spaces = 0
        chosen = alive[0]
        await self._follow(choices[chosen], positions[chosen])
        return chosen

    # -- values ----------------------------------------------------------------------------

    async def write(self) -> str:
        """Write the whole value; the reply text."""
        await self.value(self.schema, 0)
        await self.close()
        return self.text

    async def value(self, raw: Any, depth: int) -> None:
        node = self.reader.resolve(raw)
        if self._out_of_budget() or depth > MAX_DEPTH:
            await self.fixed(literal(self.reader.shortest(node, depth)))
            return
        await self._skip_whitespace()
        fixed = self.reader.options(node)
        if fixed is not None:
            texts = [literal(value) for value in fixed]
            if len(texts) == 1:
                await self.fixed(texts[0])
            else:
                await self.choose(texts)
            return
        branches = self.reader.branches(node)
        if branches is not None:
            await self._branch(branches, depth)
            return
        kind = self.reader.kind(node)
        if kind == "object":
            await self._object(node, depth)
        elif kind == "array":
            await self._array(node, depth)
        elif kind == "string":
            await self._string(node)
        elif kind in ("integer", "number"):
            await self._number(node, integer=kind == "integer")
        elif kind == "boolean":
            await self.choose(["true", "false"])
        elif kind == "null":
            await self.fixed("null")
        else:
            await self._any(depth)

    async def _branch(self, branches: list[Schema], depth: int) -> None:
        """An ``anyOf``/``oneOf``/type-list choice: by the model's first character, then,
        among objects that start alike, by their first key and its fixed value."""
        char = await self._peek_value_start()
        candidates = []
        for index, branch in enumerate(branches):
            starts = self.reader.first_chars(branch)
            if char is not None and (starts is None or char in starts):
                candidates.append(index)
        if not candidates:
            if char is not None:
                await self._diverge()
            await self.value(branches[0], depth + 1)
            return
        heads = [self._object_head(branches[i]) for i in candidates]
        if len(candidates) > 1 and all(head is not None for head in heads):
            texts = [head[0] for head in heads if head is not None]
            picked = await self.choose(texts)
            head = heads[picked]
            assert head is not None
            await self._object(branches[candidates[picked]], depth, skip_first=True)
            return
        await self.value(branches[candidates[0]], depth + 1)

    def _object_head(self, branch: Schema) -> tuple[str, str] | None:
        """``{"key": <fixed value>`` for an object whose first property is required and
        fixed: what tells such objects apart (e.g. a tool call's name)."""
        node = self.reader.resolve(branch)
        if self.reader.kind(node) != "object":
            return None
        properties = node.get("properties") or {}
        if not properties:
            return None
        key = next(iter(properties))
        fixed = self.reader.options(self.reader.resolve(properties[key]))
        if key not in (node.get("required") or []) or fixed is None or len(fixed) != 1:
            return None
        return "{" + literal(key) + ": " + literal(fixed[0]), key

    async def _object(self, node: Schema, depth: int, *, skip_first: bool = False) -> None:
        properties: dict[str, Any] = node.get("properties") or {}
        if not properties and node.get("additionalProperties", True) is not False:
            await self._free_object(node.get("additionalProperties"), depth)
            return
        required = {key for key in node.get("required") or [] if isinstance(key, str)}
        keys = list(properties)
        written = 0
        index = 0
        if skip_first:
            written, index = 1, 1
        else:
            await self.fixed("{")
        while True:
            pending_required = [key for key in keys[index:] if key in required]
            candidates: list[int] = []
            for offset, key in enumerate(keys[index:]):
                candidates.append(index + offset)
                if key in required:
                    break
            if self._out_of_budget():
                candidates = [keys.index(pending_required[0])] if pending_required else []
            separator = ", " if written else ""
            options = [separator + literal(keys[i]) + ": " for i in candidates]
            order = list(candidates)
            if not pending_required:
                options.insert(0, "}")
                order.insert(0, -1)
            elif len(candidates) > 1:
                # The required key first: on no match, optional ones are left out.
                options.insert(0, options.pop())
                order.insert(0, order.pop())
            if len(options) == 1:
                await self.fixed(options[0])
                picked = order[0]
            else:
                picked = order[await self.choose(options)]
            if picked < 0:
                return
            await self.value(properties[keys[picked]], depth + 1)
            written += 1
            index = picked + 1
            if index >= len(keys):
                await self.fixed("}")
                return

    async def _free_object(self, values: Any, depth: int) -> None:
        """An object whose keys are free: ``{`` then key/value pairs while the model
        writes them."""
        value_schema = values if isinstance(values, dict) else {}
        await self.fixed("{")
        count = 0
        while True:
            separator = ", " if count else ""
            if count >= self.limits.array_cap or self._out_of_budget():
                await self.fixed("}")
                return
            if await self.choose(["}", separator + '"']) == 0:
                return
            await self._string_body({"maxLength": _FREE_KEY_CAP})
            await self.fixed(": ")
            await self.value(value_schema, depth + 1)
            count += 1

    async def _array(self, node: Schema, depth: int) -> None:
        items = node.get("items", {})
        if not isinstance(items, (dict, bool)):
            items = {}
        least = int(node.get("minItems") or 0)
        most = node.get("maxItems")
        cap = int(most) if isinstance(most, int) else self.limits.array_cap
        starts = self.reader.first_chars(items)
        await self.fixed("[")
        count = 0
        while True:
            if count >= cap:
                await self.fixed("]")
                return
            if count < least:
                if count:
                    await self.fixed(", ")
            elif self._out_of_budget():
                await self.fixed("]")
                return
            elif count == 0:
                if not await self._item_starts(starts):
                    await self.fixed("]")
                    return
            elif await self.choose(["]", ", "]) == 0:
                return
            await self.value(items, depth + 1)
            count += 1

    async def _item_starts(self, starts: str | None) -> bool:
        """After ``[``: whether the model starts an item (rather than closing the array)."""
        char = await self._peek_value_start()
        if char is None:
            return False
        if char == "]" or (starts is not None and char not in starts):
            if char != "]":
                await self._diverge()
            return False
        return True

    async def _string(self, node: Schema) -> None:
        await self.fixed('"')
        await self._string_body(node)

    async def _string_body(self, node: Schema) -> None:
        """The characters of a string after its opening quote, and the closing quote."""
        most = node.get("maxLength")
        cap = int(most) if isinstance(most, int) else self.limits.string_cap
        least = int(node.get("minLength") or 0)
        length = 0
        while length < cap and not self._out_of_budget():
            char = await self._peek(start=True)
            if char is None:
                break
            if char == '"':
                if length >= least:
                    self._take()
                    return
                await self._diverge()
                break
            if ord(char) < 0x20:
                await self._diverge()  # a raw newline or tab: the model is done here
                break
            if char == "\\":
                if not await self._escape():
                    break
            else:
                self._take()
            length += 1
        if length < least:
            await self._diverge()
            self.text += "x" * (least - length)
        await self.fixed('"')

    async def _escape(self) -> bool:
        """An escape sequence, taken whole or not at all."""
        mark = len(self.text)
        self._revisable_from = mark
        try:
            return await self._escape_sequence(mark)
        finally:
            self._revisable_from = None

    async def _escape_sequence(self, mark: int) -> bool:
        self._take()
        char = await self._peek(start=True)
        if char is not None and char in _ESCAPES:
            self._take()
            return True
        if char == "u":
            self._take()
            for _ in range(4):
                char = await self._peek(start=True)
                if char is None or char not in _HEX:
                    break
                self._take()
            else:
                return True
        self.text = self.text[:mark]
        await self._diverge()
        return False

    async def _number(self, node: Schema, *, integer: bool) -> None:
        prefix = _INTEGER_PREFIX if integer else _NUMBER_PREFIX
        whole = _INTEGER if integer else _NUMBER
        await self._peek_value_start()
        mark = len(self.text)
        self._revisable_from = mark
        try:
            await self._number_digits(mark, prefix, whole, node, integer=integer)
        finally:
            self._revisable_from = None

    async def _number_digits(
        self,
        mark: int,
        prefix: re.Pattern[str],
        whole: re.Pattern[str],
        node: Schema,
        *,
        integer: bool,
    ) -> None:
        digits = ""
        while len(digits) < _MAX_NUMBER_CHARS:
            char = await self._peek(start=True)
            if char is None or not prefix.fullmatch(digits + char):
                break
            digits += self._take()
        taken = self.text[mark:]
        if not whole.fullmatch(digits):
            await self._diverge()
            while digits and not whole.fullmatch(digits):
                digits = digits[:-1]
        value = json.loads(digits) if digits else None
        kept = clamp_number(value if value is not None else 0, node, integer=integer)
        text = digits if digits and kept == value else literal(kept)
        if text != taken:
            await self._diverge()
            self.text = self.text[:mark] + text

    async def _any(self, depth: int) -> None:
        """A value of any type: the model's first character says which."""
        char = await self._peek_value_start()
        kinds = {"{": "object", "[": "array", '"': "string", "t": "boolean", "f": "boolean"}
        kind = kinds.get(char or "", "number" if char and char in "-0123456789" else None)
        if char == "n":
            await self.fixed("null")
            return
        if kind is None:
            if char is not None:
                await self._diverge()
            kind = "string"
        await self.value({"type": kind}, depth + 1)

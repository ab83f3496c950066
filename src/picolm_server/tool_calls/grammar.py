"""One GBNF grammar for llama.cpp from the tool schemas: per tool an alternative whose
arguments follow that tool's schema, repetition for parallel calls, and for ``auto`` a
free-text branch that can never contain a call marker."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from functools import cache, lru_cache
from typing import Any

from .number_grammar import bounded_number_rule
from .plan import CALL_CLOSE, CALL_OPEN, DEFAULT_CAPS, Caps, OutputPlan, compact_json

# JSON strings may not hold raw control characters; llama-cpp-python's converter allows them.
_CHAR_RULE = r'[^"\\\x7F\x00-\x1F] | "\\" (["\\/bfnrt] | "u" [0-9a-fA-F]{4})'
_ANY_CHAR = "[\\U00000000-\\U0010FFFF]"
# The converter writes unbounded arrays as `(item ("," space item)*)?` and strings as
# `"\"" char* "\"" space`; both get the plan's caps.
_UNBOUNDED_ITEMS = re.compile(r'\("," space ([a-zA-Z0-9-]+)\)\*')
_UNBOUNDED_STRING = '"\\"" char* "\\"" space'
_TOKEN = re.compile(
    r'"(?:\\.|[^"\\])*"'  # a literal
    r"|\[(?:\\.|[^\]\\])*\]"  # a character class
    r"|\{[0-9, ]*\}"  # a repetition count
    r"|[a-zA-Z0-9_-]+"  # a rule name
    r"|\s+|."
)
_NAME = re.compile(r"[a-zA-Z0-9_-]+")
# llama.cpp expands a repetition x{m,n} into n copies of x, so a 60-byte schema with
# "maxLength": 1000000 made a 10 MB grammar (12 s to build). The grammar holds no more
# than this many repetitions of one thing: larger maxima are lowered to it (a shorter
# value still matches the schema), and larger minima or regex counts leave that schema
# to the server's validation alone (a JSON-object grammar).
MAX_GRAMMAR_REPEAT = 1000
# And no more than this many in one schema's grammar in all (20 strings of 1,000).
MAX_GRAMMAR_REPEATS_TOTAL = 20_000
_BOUNDS_LOWERED = ("maxLength", "maxItems", "maxProperties")
_MINIMA = ("minLength", "minItems", "minProperties")
_REGEX_COUNT = re.compile(r"\{(\d+)(?:,(\d*))?\}")


class GrammarUnsupported(Exception):
    """The schema has features the JSON-schema-to-grammar converter does not handle."""


# Converted schemas kept (by their JSON text): an application sends the same ones again.
SCHEMA_RULES_CACHE_SIZE = 64


def schema_rules(
    schema: dict[str, Any], prefix: str, caps: Caps = DEFAULT_CAPS
) -> tuple[str, dict[str, str]]:
    """GBNF rules for a value matching ``schema``: the top rule's name and all rules,
    every name starting with ``prefix`` so several schemas live in one grammar."""
    top, rules = _converted(json.dumps(schema), prefix, caps)
    return top, dict(rules)


@lru_cache(maxsize=SCHEMA_RULES_CACHE_SIZE)
def _converted(
    schema_text: str, prefix: str, caps: Caps
) -> tuple[str, tuple[tuple[str, str], ...]]:
    """:func:`schema_rules` of a schema's JSON text, kept: the conversion runs in Python
    on the event loop (0.3 ms for three fields, 20 ms for a schema with a large grammar),
    and its result depends on nothing else. (GrammarUnsupported is not kept.)"""
    converter = _bounded_converter()(
        prop_order={}, allow_fetch=False, dotall=False, raw_pattern=False
    )
    try:
        resolved = converter.resolve_refs(grammar_schema(json.loads(schema_text)), "input")
        converter.visit(resolved, "")
    except Exception as exc:
        raise GrammarUnsupported(str(exc) or type(exc).__name__) from exc
    rules: dict[str, str] = dict(converter._rules)
    if "char" in rules:
        rules["char"] = _CHAR_RULE
    if rules.get("string") == _UNBOUNDED_STRING:
        rules["string"] = f'"\\"" char{{0,{caps.string}}} "\\"" space'
    for name, body in rules.items():
        rules[name] = _UNBOUNDED_ITEMS.sub(rf'("," space \1){{0,{caps.array - 1}}}', body)
    rules = _writer_layout(rules)
    names = set(rules)

    def rename(body: str) -> str:
        out: list[str] = []
        for token in _TOKEN.findall(body):
            out.append(f"{prefix}{token}" if _NAME.fullmatch(token) and token in names else token)
        return "".join(out)

    return f"{prefix}root", tuple((f"{prefix}{name}", rename(body)) for name, body in rules.items())


def _writer_layout(rules: dict[str, str]) -> dict[str, str]:
    """The converter's rules with PicoLM's writer's layout (:mod:`..schema_json.writer`):
    ``": "`` after a key, ``", "`` between members and items, no other whitespace.

    The converter lets an optional space follow every token (its ``space`` rule), so
    the text between two free values is never fixed: after ``{`` a space may come or
    not. Fixed to one layout, a value's keys, separators and brackets are text the
    grammar fixes, which jump-forward writes instead of generating
    (engines/llama_cpp/guidance.py), and both engines write schema-exact JSON alike."""
    out: dict[str, str] = {}
    for name, body in rules.items():
        if name == "space":
            continue
        tokens = _TOKEN.findall(body)
        kept: list[str] = []
        for index, token in enumerate(tokens):
            if token == "space":
                continue
            if token in ('":"', '","'):
                following = [t for t in tokens[index + 1 :] if not t.isspace()]
                if following and following[0] == "space":
                    token = '": "' if token == '":"' else '", "'
            if token.isspace() and (not kept or kept[-1] == " "):
                continue
            kept.append(" " if token.isspace() else token)
        out[name] = "".join(kept).strip()
    return out


@cache
def _bounded_converter() -> Any:
    """llama-cpp-python's schema converter, with numbers held to their bounds
    (:mod:`.number_grammar`), which it leaves out."""
    from llama_cpp import llama_grammar

    base: Any = llama_grammar.SchemaConverter  # untyped library code

    class BoundedNumbers(base):  # type: ignore[misc]
        def visit(self, schema: dict[str, Any], name: str) -> str:
            body = bounded_number_rule(schema) if isinstance(schema, dict) else None
            if body is None:
                return str(super().visit(schema, name))
            rule_name = name + "-" if name in llama_grammar.RESERVED_NAMES else name or "root"
            return str(self._add_rule(rule_name, body + " space"))

    return BoundedNumbers


def grammar_schema(schema: dict[str, Any]) -> dict[str, Any]:
    """A copy of ``schema`` the converter can turn into a grammar of bounded size, or
    GrammarUnsupported. Any reference that is not local is refused here too, so the
    converter (which can fetch https:// references) never sees one."""
    copy: dict[str, Any] = json.loads(json.dumps(schema))
    repeats = 0
    stack: list[Any] = [copy]
    while stack:
        node = stack.pop()
        if isinstance(node, list):
            stack.extend(node)
            continue
        if not isinstance(node, dict):
            continue
        reference = node.get("$ref")
        if isinstance(reference, str) and not reference.startswith("#"):
            raise GrammarUnsupported(f"a reference outside the schema: {reference[:80]}")
        for keyword in _BOUNDS_LOWERED:
            if isinstance(node.get(keyword), int) and node[keyword] > MAX_GRAMMAR_REPEAT:
                node[keyword] = MAX_GRAMMAR_REPEAT
        for keyword in _MINIMA:
            if isinstance(node.get(keyword), int) and node[keyword] > MAX_GRAMMAR_REPEAT:
                raise GrammarUnsupported(f"{keyword} over {MAX_GRAMMAR_REPEAT}")
        pattern = node.get("pattern")
        if isinstance(pattern, str):
            if _regex_repeats(pattern) > MAX_GRAMMAR_REPEAT:
                raise GrammarUnsupported(f"a pattern repeating over {MAX_GRAMMAR_REPEAT} times")
            repeats += _regex_repeats(pattern)
        repeats += sum(
            node[keyword]
            for keyword in (*_BOUNDS_LOWERED, *_MINIMA)
            if isinstance(node.get(keyword), int) and node[keyword] > 0
        )
        if repeats > MAX_GRAMMAR_REPEATS_TOTAL:
            raise GrammarUnsupported(f"over {MAX_GRAMMAR_REPEATS_TOTAL} repetitions in all")
        stack.extend(node.values())
    return copy


def _regex_repeats(pattern: str) -> int:
    """An upper bound on the copies a pattern's counted repetitions make (nested ones
    multiply)."""
    total = 1
    for low, high in _REGEX_COUNT.findall(pattern):
        total *= max(int(low), int(high) if high else 0, 1)
        if total > MAX_GRAMMAR_REPEAT:
            break
    return total


def _literal(text: str) -> str:
    return json.dumps(text)  # GBNF literals take JSON-style escapes


def _no_marker_text(marker: str) -> str:
    """Any text that never contains ``marker`` (whose first character occurs once in it).

    A character other than the marker's first one is free; the first one must be followed
    by a divergence from the rest of the marker before the text goes on."""
    first = marker[0]
    tail = ""
    for index in range(len(marker) - 1, 0, -1):
        char = marker[index]
        excluded = "".join(sorted({first, char}))
        diverge = f"[^{_class_escape(excluded)}]"
        tail = f"{diverge} | {_literal(char)} ({tail})" if tail else diverge
    return f"([^{_class_escape(first)}] | {_literal(first)}+ ({tail}))*"


def _class_escape(chars: str) -> str:
    return "".join("\\" + c if c in "]\\^-[" else c for c in chars)


@dataclass(frozen=True)
class Grammar:
    gbnf: str
    # Tools whose argument schema could not be compiled: only "some JSON object" is
    # enforced for them, and server-side validation does the rest.
    loose_tools: tuple[str, ...] = ()
    loose_response: bool = False


def build_grammar(plan: OutputPlan, *, exact_schemas: bool = True) -> Grammar:
    """One GBNF grammar for the plan (llama.cpp engines only).

    A schema the converter cannot compile (or every schema, with ``exact_schemas``
    False: the fallback when llama.cpp refuses the exact grammar) is enforced only as
    "a JSON object"; the server's validation still checks it."""
    rules: dict[str, str] = {}
    loose: list[str] = []
    loose_response = False

    def value_rule(schema: dict[str, Any], prefix: str) -> tuple[str, bool]:
        try:
            if not exact_schemas:
                raise GrammarUnsupported("exact schemas turned off")
            top, found = schema_rules(schema, prefix, plan.caps)
            exact = True
        except GrammarUnsupported:
            top, found = schema_rules({"type": "object"}, prefix, plan.caps)
            exact = False
        rules.update(found)
        return top, exact

    root_alternatives: list[str] = []
    if plan.tools:
        call_rules: list[str] = []
        for index, tool in enumerate(plan.tools):
            arguments, exact = value_rule(tool.parameters, f"t{index}-")
            if not exact:
                loose.append(tool.name)
            head = '{"name": ' + compact_json(tool.name) + ', "arguments": '
            if plan.call_format == "hermes":
                head = f"{CALL_OPEN}\n{head}"
                tail = "}\n" + CALL_CLOSE
            else:
                tail = "}"
            rules[f"call{index}"] = f"{_literal(head)} {arguments} {_literal(tail)}"
            call_rules.append(f"call{index}")
        rules["call"] = " | ".join(call_rules)
        rules["calls"] = 'call ("\\n" call)*' if plan.parallel else "call"
        root_alternatives.append("calls")
    if plan.mode in ("auto", "json"):
        if plan.response_schema is not None:
            top, exact = value_rule(plan.response_schema, "r-")
            loose_response = not exact
            root_alternatives.append(top)
        elif plan.call_format == "hermes":
            rules["text"] = _no_marker_text(CALL_OPEN)
            root_alternatives.append("text")
        else:
            rules["text"] = f"([^{{] {_ANY_CHAR}*)?"
            root_alternatives.append("text")
    rules["root"] = " | ".join(root_alternatives)
    gbnf = "\n".join(f"{name} ::= {body}" for name, body in rules.items())
    return Grammar(gbnf, tuple(loose), loose_response)

"""A ``json_object`` reply that always ends: the rules that keep a free JSON object (no
schema, a grammar engine holding the model to JSON) valid when a small model runs on.

A tiny model in JSON mode tends to loop inside an object, writing the same keys again
(``{"red": 2, "blue": 2, "green": 2, "blue": 2, "blue": ...``) until ``max_tokens`` cuts
it off, and the client gets JSON that does not parse. Two rules end such a reply:

- **A key repeated within one object ends the reply** at the end of the member before
  it: the repetition is a loop, and nothing after it is worth reading.
- **A reply cut off by max_tokens is closed**: the value being written is completed in
  its shortest form (a string closed, a number's missing digit added, ``tru`` made
  ``true``, a key given ``null``) and every open object and array is closed.

Either way the reply is complete, valid JSON and ends with ``finish_reason: stop``, as
the JSON writer ends a PicoLM reply whose budget is spent. To keep a streamed reply equal
to the non-streamed one, text that a rule may still drop is held back: whitespace
between tokens, a comma until the value or key after it starts, and a key until it is
complete and known not to repeat.

The text fed here is a prefix of a JSON object (a grammar guarantees it); anything after
the top-level object is never released (the decoder refuses it).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

_WHITESPACE = " \t\n\r"
_LITERALS = ("true", "false", "null")

# What the scanner expects next inside the innermost container.
Expect = Literal["value", "key", "colon", "after"]


@dataclass
class _Container:
    kind: Literal["{", "["]
    keys: set[str] = field(default_factory=set)


class JSONCloser:
    """Feeds on a JSON object's text as it is generated; returns what can be sent now."""

    def __init__(self) -> None:
        self.text = ""
        self._length = 0  # of the text scanned (it is appended once per piece)
        self._stack: list[_Container] = []
        self._expect: Expect = "value"
        self._in_string = False
        self._is_key = False
        self._escape = ""  # an escape sequence being read ("\\", "\\u12"), held
        self._string = ""  # the key being read
        self._word = ""  # a number or literal being read
        self._safe = 0  # text[:safe] may be sent
        self._sent = 0
        self.ended = False  # the top-level object is complete
        self.repeated = False  # a key repeated: the reply ends at text[:safe]

    @property
    def done(self) -> bool:
        return self.ended or self.repeated

    def feed(self, text: str) -> str:
        taken = 0
        for char in text:
            if self.done:
                break
            self._length += 1
            taken += 1
            self._char(char)
        self.text += text[:taken]
        released = self.text[self._sent : self._safe]
        self._sent = self._safe
        return released

    def closed(self) -> str:
        """The reply, complete: what may be sent, with the open value completed and
        the open containers closed (the whole object once it has ended)."""
        if self.ended:
            return self.text[: self._safe]
        head = self.text[: self._safe]
        if not head:
            return "{}"  # nothing written yet: the shortest object
        scanner = JSONCloser()
        scanner.feed(head)
        return head + scanner._completion()

    # -- scanning ------------------------------------------------------------------------

    def _char(self, char: str) -> None:
        if self._in_string:
            self._string_char(char)
            return
        if self._word:
            if char.isalnum() or char in "+-.":
                self._word += char
                self._safe = self._length
                return
            self._word = ""
            self._value_done()
        if char in _WHITESPACE:
            return  # held until something follows it
        if char == ",":
            self._expect = "key" if self._stack[-1].kind == "{" else "value"
            return  # held until the next member starts
        if char == '"':
            self._in_string = True
            self._is_key = self._expect == "key"
            self._string = ""
            if not self._is_key:
                self._safe = self._length
            return  # a key is held until it is complete
        if char == ":":
            self._expect = "value"
        elif char in "{[":
            self._stack.append(_Container("{" if char == "{" else "["))
            self._expect = "key" if char == "{" else "value"
        elif char in "}]":
            self._stack.pop()
            self._value_done()
        else:  # a number or a literal
            self._word = char
        self._safe = self._length

    def _string_char(self, char: str) -> None:
        if self._escape:
            self._escape += char
            if not self._escape.startswith("\\u") or len(self._escape) == 6:
                self._escape = ""
        elif char == "\\":
            self._escape = char
        elif char == '"':
            self._in_string = False
            if self._is_key:
                keys = self._stack[-1].keys
                if self._string in keys:
                    self.repeated = True
                    return
                keys.add(self._string)
                self._expect = "colon"
            else:
                self._value_done()
            self._safe = self._length
            return
        if self._is_key:
            self._string += char
        elif not self._escape:  # an escape sequence is sent whole
            self._safe = self._length

    def _value_done(self) -> None:
        self._expect = "after"
        if not self._stack:
            self.ended = True

    # -- completing ----------------------------------------------------------------------

    def _completion(self) -> str:
        """The shortest text that completes the scanned prefix (``text[:safe]``)."""
        tail = ""
        if self._in_string:
            tail += '"'
            if self._is_key:
                tail += ": null"
        elif self._word:
            tail += _complete_word(self._word)
        elif self._expect == "colon":
            tail += ": null"
        elif self._expect == "value" and self._stack and self._stack[-1].kind == "{":
            tail += "null"  # after a key's colon
        closers = "".join("}" if container.kind == "{" else "]" for container in self._stack)
        return tail + closers[::-1]


def _complete_word(word: str) -> str:
    """What completes a number or literal prefix."""
    for literal in _LITERALS:
        if literal.startswith(word):
            return literal[len(word) :]
    return "0" if word[-1] in "-+.eE" else ""

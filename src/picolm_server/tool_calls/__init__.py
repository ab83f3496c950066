"""Tool calling and structured output: from OpenAI's ``tools``/``response_format`` to a
prompt, a decoding constraint, and back to well-formed, schema-valid tool calls.

Everything here is pure (no HTTP, no engine), in four steps, one module each:

1. :func:`~.plan.make_plan` checks the request's ``tools``, ``tool_choice``,
   ``parallel_tool_calls`` and ``response_format`` (400s name the parameter) and decides
   the output mode and the call format: Hermes-style ``<tool_call>\\n{...}\\n</tool_call>``
   blocks for ChatML/Qwen-style templates, bare JSON objects otherwise, and bare JSON
   objects always when the engine cannot run a grammar (PicoLM's ``--json`` only keeps
   JSON balanced and stops after the first object).
   Every client schema goes through :mod:`.schemas` first: local references only,
   bounded size and depth, and a validator that can never fetch anything.
2. :func:`~.prompting.prompt_messages` puts the tool descriptions and the exact output format into
   the conversation (or leaves the tools to a chat template that renders them), and
   writes earlier calls and ``role: tool`` results in that format when the template
   cannot render them.
3. :func:`~.grammar.build_grammar` makes one GBNF grammar for llama.cpp: per tool an alternative
   whose ``arguments`` follow that tool's schema, optional repetition for parallel calls,
   and for ``auto`` a free-text branch that can never contain ``<tool_call>``.
4. :class:`~.decoding.ReplyDecoder` reads the generated text as it streams and turns it into
   content and tool calls, each parsed and validated against its schema before it is
   released. Non-streamed replies run the same decoder over the same text, so a
   streamed reply reassembles to exactly the non-streamed one.
"""

from .decoding import (
    ContentPiece,
    ParsedCall,
    ReplyDecoder,
    ReplyEvent,
    argument_fragments,
    new_call_id,
    schema_error,
)
from .grammar import Grammar, GrammarUnsupported, build_grammar
from .plan import (
    ARRAY_CAP,
    CALL_CLOSE,
    CALL_OPEN,
    STRING_CAP,
    Caps,
    FunctionTool,
    InvalidModelOutputError,
    JSONOutput,
    NamedTool,
    OutputPlan,
    OutputRequest,
    ToolChoiceMode,
    ToolSpec,
    is_hermes_template,
    make_plan,
)
from .prompting import prompt_messages

__all__ = [
    "ARRAY_CAP",
    "CALL_CLOSE",
    "CALL_OPEN",
    "STRING_CAP",
    "Caps",
    "ContentPiece",
    "FunctionTool",
    "Grammar",
    "GrammarUnsupported",
    "InvalidModelOutputError",
    "JSONOutput",
    "NamedTool",
    "OutputPlan",
    "OutputRequest",
    "ParsedCall",
    "ReplyDecoder",
    "ReplyEvent",
    "ToolChoiceMode",
    "ToolSpec",
    "argument_fragments",
    "build_grammar",
    "is_hermes_template",
    "make_plan",
    "new_call_id",
    "prompt_messages",
    "schema_error",
]

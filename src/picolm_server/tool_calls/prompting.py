"""Putting tools and the expected output format into the conversation, and writing
earlier calls and tool results in that format when the template cannot."""

from __future__ import annotations

from typing import Any

from .plan import CALL_CLOSE, CALL_OPEN, CallFormat, OutputPlan, ToolSpec, compact_json
from .schema_outline import schema_outline


def format_call(name: str, arguments: Any, call_format: CallFormat) -> str:
    """One call as the model is asked to write it."""
    body = compact_json({"name": name, "arguments": arguments})
    if call_format == "hermes":
        return f"{CALL_OPEN}\n{body}\n{CALL_CLOSE}"
    return body


def tool_section(plan: OutputPlan) -> str:
    """The system-prompt text that describes the tools and the exact output format."""
    lines: list[str] = []
    if plan.mode == "json":
        if plan.schema_from_prompt and not plan.grammar_engine:
            # The schema is in the prompt already, and the JSON writer holds the reply to it.
            return response_format_section(None)
        return response_format_section(plan.response_schema, outline=plan.grammar_engine)
    tools = plan.prompt_tools
    if plan.mode == "named" and plan.grammar_engine:
        return named_call_section(tools[0], plan.call_format)
    if plan.arguments_only:
        tool = tools[0]
        lines.append(f"# Tool\n\nCall the function `{tool.name}` now.")
        if tool.description:
            lines.append(f"It does this: {tool.description}")
        lines.append(
            "Reply with only the JSON object of its arguments, with no other text. "
            "The arguments must match this JSON schema:\n" + compact_json(tool.parameters)
        )
        return "\n".join(lines)
    if plan.call_format == "hermes":
        lines.append("# Tools\n\nYou may call one or more functions to assist with the user query.")
        lines.append("\nYou are provided with function signatures within <tools></tools> XML tags:")
        lines.append("<tools>")
        lines.extend(compact_json(tool.openai_dict()) for tool in tools)
        lines.append("</tools>")
        lines.append(
            "\nFor each function call, return a json object with function name and arguments "
            "within <tool_call></tool_call> XML tags:\n"
            f'{CALL_OPEN}\n{{"name": <function-name>, "arguments": <args-json-object>}}\n'
            f"{CALL_CLOSE}"
        )
    else:
        lines.append("# Tools\n\nYou can call these functions:")
        lines.extend(compact_json(tool.openai_dict()) for tool in tools)
        lines.append(
            "\nTo call a function, reply with only a JSON object, with no other text:\n"
            '{"name": <function-name>, "arguments": <args-json-object>}'
        )
    if plan.mode == "named":
        lines.append(f"\nYou must call the function `{tools[0].name}` now.")
    elif plan.mode == "required":
        lines.append("\nYou must call at least one function now.")
    elif plan.response_schema is not None:
        lines.append(
            "\nIf no function is needed, reply with a JSON object instead"
            + (
                " that matches this JSON schema:\n" + compact_json(plan.response_schema)
                if plan.response_schema != {"type": "object"}
                else "."
            )
        )
    else:
        lines.append("\nIf no function is needed, answer the user directly in plain text.")
    if not plan.parallel and plan.mode != "named":
        lines.append("Call at most one function at a time.")
    return "\n".join(lines)


def named_call_section(tool: ToolSpec, call_format: CallFormat) -> str:
    """The section for a call a grammar forces (``tool_choice`` naming a function).

    The grammar writes the call's wrapper and the function's name, so the model is
    shown the one call to write, in the format the grammar holds it to, with the
    arguments' outline in place of their values (:mod:`.schema_outline`). The full tools
    section (every signature as JSON, the format described in words) cost SmolLM2 about
    300 prompt tokens, over a second of prompt computation on 2 cores before the first
    token; this one about half, and its arguments came out as good or better (the
    number of guests right more often)."""
    lines = [f"# Tool\n\nCall the function `{tool.name}` now."]
    if tool.description:
        lines[0] += f" It does this: {tool.description}"
    outline = schema_outline(tool.parameters)
    shape, _, descriptions = (outline or "<args-json-object>").partition("\n")
    head = compact_json(tool.name)
    call = f'{{"name": {head}, "arguments": {shape}}}'
    if call_format == "hermes":
        call = f"{CALL_OPEN}\n{call}\n{CALL_CLOSE}"
    lines.append("Write the call like this:\n" + call)
    if outline is None:
        lines.append("The arguments must match this JSON schema:\n" + compact_json(tool.parameters))
    elif descriptions:
        lines.append(descriptions)
    return "\n".join(lines)


def response_format_section(schema: dict[str, Any] | None, *, outline: bool = False) -> str:
    """The reply format for ``response_format``. With ``outline`` (a grammar holds the
    reply to the schema) the schema is shown as an outline of the reply where it has
    one (:mod:`.schema_outline`: the same facts in a third of the tokens); and as the
    grammar admits nothing but the JSON, "only ..., with no other text" goes unsaid
    (7 tokens less)."""
    if schema is None or schema == {"type": "object"}:
        return "Reply with only a JSON object, with no other text."
    shape = schema_outline(schema) if outline else None
    if shape is not None:
        return "Reply with a JSON object of this form:\n" + shape
    return (
        "Reply with only a JSON object, with no other text, that matches this JSON "
        "schema:\n" + compact_json(schema)
    )


def prompt_messages(
    messages: list[dict[str, Any]],
    plan: OutputPlan | None,
    *,
    template_renders_tools: bool,
    call_format: CallFormat,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]] | None]:
    """Messages (Hugging Face conventions) and ``tools`` to render the prompt with.

    A template that renders tools gets the conversation as it is and the tool list; it
    describes the tools in its own words. Otherwise the tool section goes into the system
    message (a new one first when there is none), and earlier calls and tool results are
    written into assistant and user turns in the format the model is asked to use.

    A JSON reply's section goes before the system message's own text: it is the same in
    every request with that schema, so the engines' reuse of computed prompt prefixes
    covers it even when the client's system text changes from request to request.
    """
    json_reply = plan is not None and plan.mode == "json"
    if template_renders_tools:
        converted = [dict(message) for message in messages]
        tools = (
            [tool.openai_dict() for tool in plan.prompt_tools] if plan and not json_reply else None
        )
        if plan is not None and (plan.arguments_only or json_reply):
            _add_system(converted, tool_section(plan), ahead=json_reply)
        return converted, tools
    converted = _inline_tool_turns(messages, call_format)
    if plan is not None:
        _add_system(converted, tool_section(plan), ahead=json_reply)
    return converted, None


def _add_system(messages: list[dict[str, Any]], section: str, *, ahead: bool = False) -> None:
    """Add ``section`` to the system message, after its text (``ahead``: before it)."""
    if messages and messages[0].get("role") == "system":
        first = dict(messages[0])
        text = str(first.get("content") or "")
        if not text:
            first["content"] = section
        else:
            first["content"] = f"{section}\n\n{text}" if ahead else f"{text}\n\n{section}"
        messages[0] = first
    else:
        messages.insert(0, {"role": "system", "content": section})


def _inline_tool_turns(
    messages: list[dict[str, Any]], call_format: CallFormat
) -> list[dict[str, Any]]:
    """Calls and results as plain text turns, for templates that only know
    system/user/assistant. Consecutive results become one user turn."""
    names: dict[str, str] = {}
    converted: list[dict[str, Any]] = []
    previous_was_result = False
    for message in messages:
        role = message.get("role")
        if role == "assistant" and message.get("tool_calls"):
            parts = [str(message.get("content") or "")] if message.get("content") else []
            for call in message["tool_calls"]:
                function = call.get("function", {})
                names[str(call.get("id"))] = str(function.get("name"))
                parts.append(
                    format_call(function.get("name"), function.get("arguments"), call_format)
                )
            converted.append({"role": "assistant", "content": "\n".join(parts)})
            previous_was_result = False
        elif role == "tool":
            content = str(message.get("content") or "")
            name = message.get("name") or names.get(str(message.get("tool_call_id")), "")
            if call_format == "hermes":
                text = f"<tool_response>\n{content}\n</tool_response>"
            else:
                text = f"Result of {name}: {content}" if name else f"Tool result: {content}"
            if previous_was_result:
                converted[-1]["content"] += "\n" + text
            else:
                converted.append({"role": "user", "content": text})
            previous_was_result = True
        else:
            entry = dict(message)
            if role == "user" and previous_was_result:
                converted[-1]["content"] += "\n\n" + str(entry.get("content") or "")
            else:
                converted.append(entry)
            previous_was_result = False
    return converted

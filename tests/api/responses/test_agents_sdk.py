"""The OpenAI Agents SDK runs a one-tool agent on SmolLM2 through its default model,
which speaks the Responses API: the model calls the tool, the SDK runs it and sends the
result back, and the model answers."""

from __future__ import annotations

import pytest

from tests.api.responses.targets import TIMEOUT, Target


def test_one_tool_agent_end_to_end(llama_target: Target) -> None:
    agents = pytest.importorskip("agents")
    cities: list[str] = []

    @agents.function_tool
    def get_weather(city: str) -> str:
        """Get the current weather in a city."""
        cities.append(city)
        return f"It is sunny and 22 degrees in {city}."

    agents.set_tracing_disabled(True)
    client = llama_target.server.async_client(max_retries=0, timeout=TIMEOUT)
    agents.set_default_openai_client(client, use_for_tracing=False)
    agents.set_default_openai_api("responses")
    agent = agents.Agent(
        name="weather",
        instructions="You answer questions about the weather with the get_weather tool.",
        tools=[get_weather],
        model=llama_target.model,  # a name: the SDK's default (Responses) model for it
        # A tool call first; the SDK resets tool_choice after it, so the model can answer.
        model_settings=agents.ModelSettings(
            tool_choice="required", parallel_tool_calls=False, temperature=0, max_tokens=60
        ),
    )
    result = agents.Runner.run_sync(agent, "What is the weather in Paris?", max_turns=4)

    assert len(cities) == 1 and "paris" in cities[0].lower()
    kinds = [type(item).__name__ for item in result.new_items]
    assert kinds == ["ToolCallItem", "ToolCallOutputItem", "MessageOutputItem"]
    assert isinstance(result.final_output, str) and result.final_output.strip()
    # The answer after the tool result does not copy the result's wrapper.
    assert "<tool_response>" not in result.final_output
    assert all(isinstance(response.response_id, str) for response in result.raw_responses)
    assert "POST /v1/responses 200" in llama_target.server.log()

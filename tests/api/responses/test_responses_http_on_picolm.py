"""The Responses API end to end on a real server process driving the PicoLM stand-in:
created, retrieved, its input listed and deleted through the openai SDK and the store
file. Its wire format in every detail is test_responses_http.py, in-process."""

from __future__ import annotations

import httpx
import openai
import pytest

from tests.api.responses.shapes import check_response
from tests.api.responses.targets import Target
from tests.support.picolm_setup import MODEL_ID as PICOLM_MODEL


def test_create_retrieve_list_delete(picolm_target: Target) -> None:
    client = picolm_target.client()
    raw = client.responses.with_raw_response.create(
        model=PICOLM_MODEL,
        instructions="Answer in one short sentence.",
        input="What is the capital of France?" + picolm_target.scripted("Paris is the capital."),
        max_output_tokens=12,
        temperature=0,
    )
    body = raw.http_response.json()
    check_response(body)
    response = raw.parse()
    assert response.output_text == "Paris is the capital."
    assert response.status == "completed"
    usage = response.usage
    assert usage is not None
    assert usage.input_tokens > 0 and usage.output_tokens > 0
    assert usage.total_tokens == usage.input_tokens + usage.output_tokens
    assert usage.output_tokens_details.reasoning_tokens == 0
    assert picolm_target.picolm is not None
    (run,) = picolm_target.picolm.runs_with("[[reply:Paris is the capital.]]")
    assert run.prompt is not None and "Answer in one short sentence." in run.prompt

    retrieved = client.responses.with_raw_response.retrieve(response.id).http_response.json()
    assert retrieved == body
    items = client.responses.input_items.list(response.id)
    assert [item.type for item in items.data] == ["message"]
    assert items.data[0].content[0].text.startswith("What is the capital of France?")  # type: ignore[union-attr]

    deleted = httpx.delete(f"{picolm_target.server.openai_base_url}/responses/{response.id}")
    assert deleted.json() == {"id": response.id, "object": "response", "deleted": True}
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(response.id)

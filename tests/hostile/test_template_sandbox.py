"""Hostile chat templates, class "resource exhaustion": a template (a GGUF's, or a
configured file) that builds a huge string or list, loops over a huge range or renders
a huge prompt is stopped by the sandbox: the server refuses to start with it when an
ordinary conversation already trips a bound, and otherwise the request that trips one
gets a 500 saying so while the server goes on serving."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from picolm_server.prompting.sandbox import (
    MAX_TEMPLATE_OUTPUT,
    MAX_TEMPLATE_RANGE,
    MAX_TEMPLATE_VALUE,
)
from tests.support.picolm_setup import MODEL_ID, PicoLMFiles

ZEPHYR_TURNS = "{% for m in messages %}<|{{ m.role }}|>\n{{ m.content }}</s>\n{% endfor %}"
# Goes over a bound only when a message asks for it.
ON_DEMAND = (
    (
        "{% for m in messages %}"
        "{% if m.content == 'repeat' %}{{ 'a' * (max_value + 1) }}{% endif %}"
        "{% if m.content == 'range' %}{% for i in range(max_range + 1) %}{% endfor %}{% endif %}"
        "{% if m.content == 'output' %}{% for i in range(max_range) %}{{ 'b' * per_loop }}"
        "{% endfor %}{% endif %}"
        "{% endfor %}" + ZEPHYR_TURNS + "<|assistant|>\n"
    )
    .replace("max_value", str(MAX_TEMPLATE_VALUE))
    .replace("max_range", str(MAX_TEMPLATE_RANGE))
)
ON_DEMAND = ON_DEMAND.replace("per_loop", str(MAX_TEMPLATE_OUTPUT // MAX_TEMPLATE_RANGE + 1))


def test_a_template_that_always_goes_over_is_refused_at_start(
    picolm_files: PicoLMFiles, tmp_path: Path
) -> None:
    template = tmp_path / "greedy.jinja"
    template.write_text("{{ 'a' * 10**9 }}" + ZEPHYR_TURNS)
    config = picolm_files.config(picolm={"chat_template": str(template)})
    from tests.support.server import run_server

    with pytest.raises(RuntimeError) as caught, run_server(config, tmp_path / "work"):
        pass
    message = str(caught.value)
    assert "server exited with 2" in message
    assert "chat template" in message and f"at most {MAX_TEMPLATE_VALUE}" in message
    assert "Traceback" not in message


@pytest.mark.parametrize(
    ("trigger", "what"),
    [
        ("repeat", "repeated sequence"),
        ("range", "range of"),
        ("output", "rendered more than"),
    ],
)
def test_a_template_that_goes_over_for_one_request_fails_that_request(
    picolm_files: PicoLMFiles, tmp_path: Path, trigger: str, what: str
) -> None:
    template = tmp_path / "on-demand.jinja"
    template.write_text(ON_DEMAND)
    with picolm_files.serve(tmp_path, picolm={"chat_template": str(template)}) as server:
        with httpx.Client(base_url=server.base_url, timeout=60) as client:
            for stream in (False, True):
                response = client.post(
                    "/v1/chat/completions",
                    json={
                        "model": MODEL_ID,
                        "messages": [{"role": "user", "content": trigger}],
                        "stream": stream,
                    },
                )
                assert response.status_code == 500, response.text[:500]
                error = response.json()["error"]
                assert error["type"] == "server_error"
                assert error["code"] == "template_limit_exceeded"
                assert what in error["message"]
            assert server.runs_with(trigger) == []
            fine = client.post(
                "/v1/chat/completions",
                json={"model": MODEL_ID, "messages": [{"role": "user", "content": "[[reply:ok]]"}]},
            )
            assert fine.status_code == 200, fine.text
            assert fine.json()["choices"][0]["message"]["content"] == "ok"
        assert "Traceback" not in server.log()

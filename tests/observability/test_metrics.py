"""GET /metrics over HTTP, on the app in-process over a scripted engine: the key, and
counters that move by exactly what was served. A real PicoLM process failing and timing
out is counted in test_metrics_on_picolm.py."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncGenerator
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from picolm_server.engines.base import Finished, GenerationEvent, GenerationRequest, ModelInfo
from tests.conftest import TEST_API_KEY
from tests.http.test_requests import sse_payloads, user
from tests.support.inprocess import CONTEXT_LENGTH, InProcessServer, serve_in_process
from tests.support.picolm_setup import MODEL_ID
from tests.support.scripted_engine import HeldEngine, ScriptedEngine

CHAT_ROUTE = "/v1/chat/completions"
AUTH = {"Authorization": f"Bearer {TEST_API_KEY}"}
# With a key (the default), one generation at a time and none waiting.
NO_QUEUE = {"max_queue": 0}

pytestmark = pytest.mark.anyio

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse(text: str) -> Samples:
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset({"engine": "picolm", **labels}.items())), 0.0)


async def scrape(server: InProcessServer, headers: dict[str, str] | None = None) -> Samples:
    response = await server.http().get("/metrics", headers=AUTH if headers is None else headers)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain; version=")
    return parse(response.text)


async def chat(server: InProcessServer, body: dict[str, Any]) -> httpx.Response:
    return await server.http().post(CHAT_ROUTE, json={"model": MODEL_ID, **body}, headers=AUTH)


async def test_metrics_need_the_key(app_server: InProcessServer) -> None:
    http = app_server.http()
    response = await http.get("/metrics")
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "invalid_api_key"
    wrong = await http.get("/metrics", headers={"Authorization": "Bearer wrong"})
    assert wrong.status_code == 401
    await scrape(app_server)


async def test_counters_move_by_what_was_served() -> None:
    async with serve_in_process(server=NO_QUEUE) as server:
        http = server.http()
        before = await scrape(server)
        usages = []
        for words in ("one two", "three four five"):
            response = await chat(server, {"messages": user(f"[[reply:{words}]]")})
            assert response.status_code == 200
            usages.append(response.json()["usage"])
        streamed = await chat(
            server,
            {
                "messages": user("[[reply:six seven]]"),
                "stream": True,
                "stream_options": {"include_usage": True},
            },
        )
        usages.append(json.loads(sse_payloads(streamed.text)[-2])["usage"])
        assert (await chat(server, {"model": "nope", "messages": user("hi")})).status_code == 404
        # Refused before routing, counted under the route it asked for.
        assert (await http.get("/v1/models")).status_code == 401
        assert (await http.get("/no/such/path", headers=AUTH)).status_code == 404
        after = await scrape(server)

    def moved(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    requests = "picolm_http_requests_total"
    assert moved(requests, route=CHAT_ROUTE, status="200") == 3
    assert moved(requests, route=CHAT_ROUTE, status="404") == 1
    assert moved(requests, route="/v1/models", status="401") == 1
    assert moved(requests, route="unmatched", status="404") == 1
    # The scrape before this one, counted once its response was complete.
    assert moved(requests, route="/metrics", status="200") == 1
    assert moved("picolm_tokens_total", kind="prompt") == sum(u["prompt_tokens"] for u in usages)
    assert moved("picolm_tokens_total", kind="completion") == sum(
        u["completion_tokens"] for u in usages
    )
    assert moved("picolm_tokens_total", kind="cached") == 0
    assert moved("picolm_time_to_first_token_seconds_count") == 3
    assert moved("picolm_time_to_first_token_seconds_sum") > 0
    assert moved("picolm_request_duration_seconds_count", route=CHAT_ROUTE) == 4
    assert value(after, "picolm_http_requests_in_flight") == 1  # the scrape itself
    assert value(after, "picolm_generations_running") == 0
    assert value(after, "picolm_requests_queued") == 0


async def test_engine_errors_and_timeouts_are_counted() -> None:
    # A short time limit: the hanging reply ends at it.
    async with serve_in_process(server=NO_QUEUE, picolm={"timeout_seconds": 1}) as server:
        before = await scrape(server)
        assert (await chat(server, {"messages": user("[[crash]]")})).status_code == 500
        assert (await chat(server, {"messages": user("[[hang]]")})).status_code == 504
        streamed = await chat(server, {"messages": user("[[crash]]"), "stream": True})
        assert json.loads(sse_payloads(streamed.text)[-1])["error"]["code"] == "engine_error"
        after = await scrape(server)
    failures = "picolm_engine_failures_total"
    assert value(after, failures, reason="error") - value(before, failures, reason="error") == 2
    assert value(after, failures, reason="timeout") - value(before, failures, reason="timeout") == 1


async def test_rejections_are_counted_and_the_running_one_shows() -> None:
    engine = HeldEngine()
    engine.model = replace(engine.model, id=MODEL_ID, context_length=CONTEXT_LENGTH)
    async with serve_in_process(engine, server=NO_QUEUE) as server:
        before = await scrape(server)
        body = {"messages": user("[[reply:held then done]]"), "max_tokens": 500}
        running = asyncio.create_task(chat(server, {**body, "stream": True}))
        try:
            await engine.started.wait()
            during = await scrape(server)
            assert value(during, "picolm_generations_running") == 1
            assert (await chat(server, body)).status_code == 429
            assert (await chat(server, body)).status_code == 429
        finally:
            engine.release.set()
        response = await running
        assert response.status_code == 200
        assert "held then done" in "".join(
            json.loads(payload)["choices"][0]["delta"].get("content") or ""
            for payload in sse_payloads(response.text)[:-1]
        )
        after = await scrape(server)
    assert (
        value(after, "picolm_requests_rejected_total")
        - value(before, "picolm_requests_rejected_total")
        == 2
    )
    requests = "picolm_http_requests_total"
    assert (
        value(after, requests, route=CHAT_ROUTE, status="429")
        - value(before, requests, route=CHAT_ROUTE, status="429")
        == 2
    )


async def test_public_metrics_need_no_key_but_the_api_still_does() -> None:
    async with serve_in_process(server={"metrics_public": True}) as server:
        samples = await scrape(server, headers={})
        assert value(samples, "picolm_generations_running") == 0
        assert (await server.http().get("/v1/models")).status_code == 401


async def test_apps_in_one_process_keep_their_own_counts() -> None:
    """Each app has its own registry: a second app neither collides with the first nor
    sees its requests."""
    async with serve_in_process() as first, serve_in_process() as second:
        for _ in range(3):
            assert (await first.http().get("/v1/models", headers=AUTH)).status_code == 200
        models = {"route": "/v1/models", "status": "200"}
        requests = "picolm_http_requests_total"
        assert value(await scrape(first), requests, **models) == 3
        assert value(await scrape(second), requests, **models) == 0


class WritingEngine(ScriptedEngine):
    """Replies as scripted and reports some of the reply's tokens as written by a
    grammar (as llama.cpp's jump-forward does)."""

    async def generate(self, request: GenerationRequest) -> AsyncGenerator[GenerationEvent, None]:
        async for event in super().generate(request):
            yield replace(event, written_tokens=2) if isinstance(event, Finished) else event


async def test_tokens_a_grammar_wrote_are_counted_apart() -> None:
    engine = WritingEngine(
        pieces=("{", '"a"', ": ", "1", "}"), model=ModelInfo(MODEL_ID, Path("m.gguf"), 4096, 0)
    )
    async with serve_in_process(engine, server=NO_QUEUE) as server:
        before = await scrape(server)
        response = await chat(server, {"messages": user("hi")})
        assert response.status_code == 200, response.text
        after = await scrape(server)
    completion = value(after, "picolm_tokens_total", kind="completion") - value(
        before, "picolm_tokens_total", kind="completion"
    )
    written = value(after, "picolm_tokens_total", kind="written") - value(
        before, "picolm_tokens_total", kind="written"
    )
    assert (completion, written) == (5, 2)

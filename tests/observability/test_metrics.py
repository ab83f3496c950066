"""GET /metrics over HTTP: the key, and counters that move by exactly what was served."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from starlette.testclient import TestClient

from picolm_server.config.settings import load_settings
from picolm_server.server.app import create_app
from picolm_server.server.bootstrap import build_core
from tests.conftest import TEST_API_KEY
from tests.http.test_requests import AUTH, sse_payloads, user
from tests.support.picolm_setup import MODEL_ID, PicoLMFiles, PicoLMServer

CHAT_ROUTE = "/v1/chat/completions"


@pytest.fixture(scope="module")
def metrics_server(
    picolm_files: PicoLMFiles, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[PicoLMServer]:
    """With a key, one generation at a time, none waiting, and a short time limit."""
    workdir = tmp_path_factory.mktemp("metrics-server")
    with picolm_files.serve(
        workdir,
        server={"api_key": TEST_API_KEY, "max_queue": 0},
        picolm={"timeout_seconds": 1.5},
    ) as server:
        yield server


Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse(text: str) -> Samples:
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


def scrape(server: PicoLMServer, headers: dict[str, str] | None = None) -> Samples:
    response = httpx.get(f"{server.base_url}/metrics", headers=AUTH if headers is None else headers)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain; version=")
    return parse(response.text)


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset({"engine": "picolm", **labels}.items())), 0.0)


def chat(server: PicoLMServer, body: dict[str, Any]) -> httpx.Response:
    return httpx.post(
        f"{server.base_url}{CHAT_ROUTE}",
        json={"model": MODEL_ID, **body},
        headers=AUTH,
        timeout=30,
    )


def test_metrics_need_the_key(metrics_server: PicoLMServer) -> None:
    response = httpx.get(f"{metrics_server.base_url}/metrics")
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "invalid_api_key"
    wrong = httpx.get(
        f"{metrics_server.base_url}/metrics", headers={"Authorization": "Bearer wrong"}
    )
    assert wrong.status_code == 401
    scrape(metrics_server)


def test_counters_move_by_what_was_served(metrics_server: PicoLMServer) -> None:
    before = scrape(metrics_server)
    usages = []
    for words in ("one two", "three four five"):
        response = chat(metrics_server, {"messages": user(f"[[reply:{words}]]")})
        assert response.status_code == 200
        usages.append(response.json()["usage"])
    streamed = chat(
        metrics_server,
        {
            "messages": user("[[reply:six seven]]"),
            "stream": True,
            "stream_options": {"include_usage": True},
        },
    )
    usages.append(json.loads(sse_payloads(streamed.text)[-2])["usage"])
    assert chat(metrics_server, {"model": "nope", "messages": user("hi")}).status_code == 404
    # Refused before routing, counted under the route it asked for.
    assert httpx.get(f"{metrics_server.base_url}/v1/models").status_code == 401
    assert httpx.get(f"{metrics_server.base_url}/no/such/path", headers=AUTH).status_code == 404
    after = scrape(metrics_server)

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


def test_engine_errors_and_timeouts_are_counted(metrics_server: PicoLMServer) -> None:
    before = scrape(metrics_server)
    assert chat(metrics_server, {"messages": user("[[crash]]")}).status_code == 500
    assert chat(metrics_server, {"messages": user("[[hang]]")}).status_code == 504
    streamed = chat(metrics_server, {"messages": user("[[crash]]"), "stream": True})
    assert json.loads(sse_payloads(streamed.text)[-1])["error"]["code"] == "engine_error"
    after = scrape(metrics_server)
    failures = "picolm_engine_failures_total"
    assert value(after, failures, reason="error") - value(before, failures, reason="error") == 2
    assert value(after, failures, reason="timeout") - value(before, failures, reason="timeout") == 1


def test_rejections_are_counted_and_the_running_one_shows(metrics_server: PicoLMServer) -> None:
    before = scrape(metrics_server)
    body = {"model": MODEL_ID, "messages": user("[[slow:0.2]]"), "max_tokens": 500}
    with (
        httpx.Client(base_url=metrics_server.base_url, headers=AUTH, timeout=30) as http,
        http.stream("POST", CHAT_ROUTE, json={**body, "stream": True}) as running,
    ):
        assert running.status_code == 200
        during = scrape(metrics_server)
        assert value(during, "picolm_generations_running") == 1
        assert http.post(CHAT_ROUTE, json=body).status_code == 429
        assert http.post(CHAT_ROUTE, json=body).status_code == 429
    after = scrape(metrics_server)
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


def test_public_metrics_need_no_key_but_the_api_still_does(
    picolm_files: PicoLMFiles, tmp_path: Path
) -> None:
    server_section = {"api_key": TEST_API_KEY, "metrics_public": True}
    with picolm_files.serve(tmp_path, server=server_section) as server:
        samples = scrape(server, headers={})
        assert value(samples, "picolm_generations_running") == 0
        assert httpx.get(f"{server.base_url}/v1/models").status_code == 401


def test_apps_in_one_process_keep_their_own_counts(
    picolm_files: PicoLMFiles, tmp_path: Path
) -> None:
    """Each app has its own registry: a second app neither collides with the first nor
    sees its requests."""
    settings = load_settings(None, picolm_files.config(picolm={"cache_dir": str(tmp_path)}))
    apps = [create_app(build_core(settings), engine_name="picolm") for _ in range(2)]

    def samples_of(app: Any) -> Samples:
        response = TestClient(app).get("/metrics")
        assert response.status_code == 200
        return parse(response.text)

    first = TestClient(apps[0])
    for _ in range(3):
        assert first.get("/v1/models").status_code == 200
    models = {"route": "/v1/models", "status": "200"}
    assert value(samples_of(apps[0]), "picolm_http_requests_total", **models) == 3
    assert value(samples_of(apps[1]), "picolm_http_requests_total", **models) == 0

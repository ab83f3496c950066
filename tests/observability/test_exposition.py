"""The metrics' text is what prometheus_client's own Counter, Gauge and Histogram write
for the same counts: the same families, types, help, series, labels and values, in the
same order. The reference below is the server's metrics as they were declared with
those classes; only creation times and the process's own figures may differ."""

from __future__ import annotations

import re

import pytest
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.utils import floatToGoString

from picolm_server.generation.scheduler import Scheduler
from picolm_server.observability.metrics import LATENCY_BUCKETS, UNMATCHED_ROUTE, ServerMetrics
from picolm_server.observability.observation import RequestRecord
from picolm_server.observability.series import go_float


class ReferenceMetrics:
    """The server's metrics declared with prometheus_client's classes."""

    def __init__(self, engine: str, scheduler: Scheduler) -> None:
        self.registry = registry = CollectorRegistry(auto_describe=True)
        self.engine = engine
        ProcessCollector(registry=registry)
        self.requests = Counter(
            "picolm_http_requests",
            "HTTP requests answered, by route template and status.",
            ["engine", "route", "status"],
            registry=registry,
        )
        self.in_flight = Gauge(
            "picolm_http_requests_in_flight",
            "HTTP requests being handled now.",
            ["engine"],
            registry=registry,
        ).labels(engine)
        running = Gauge(
            "picolm_generations_running",
            "Generations holding a slot now.",
            ["engine"],
            registry=registry,
        )
        running.labels(engine).set_function(lambda: scheduler.running)
        queued = Gauge(
            "picolm_requests_queued",
            "Requests waiting for a generation slot now.",
            ["engine"],
            registry=registry,
        )
        queued.labels(engine).set_function(lambda: scheduler.queued)
        Gauge(
            "picolm_response_store_available",
            "1 while the Responses API's store works (its last use succeeded), else 0.",
            ["engine"],
            registry=registry,
        ).labels(engine).set_function(lambda: 1)
        self.rejected = Counter(
            "picolm_requests_rejected",
            "Requests refused with 429 because the queue was full.",
            ["engine"],
            registry=registry,
        ).labels(engine)
        self.duration = Histogram(
            "picolm_request_duration_seconds",
            "Time from a request's arrival to the end of its response, by route template.",
            ["engine", "route"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.ttft = Histogram(
            "picolm_time_to_first_token_seconds",
            "Time from a chat request's arrival to the reply's first token.",
            ["engine"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        ).labels(engine)
        tokens = Counter(
            "picolm_tokens",
            "Tokens processed: prompt, completion, the prompt tokens reused from saved "
            "state (cached, also counted in prompt), and the completion tokens a grammar "
            "fixed, written without sampling (written, also counted in completion).",
            ["engine", "kind"],
            registry=registry,
        )
        self.tokens = {kind: tokens.labels(engine, kind) for kind in ("prompt", "completion")}
        self.tokens["cached"] = tokens.labels(engine, "cached")
        self.tokens["written"] = tokens.labels(engine, "written")
        failures = Counter(
            "picolm_engine_failures",
            "Generations the engine failed (error) or that ran past their time limit (timeout).",
            ["engine", "reason"],
            registry=registry,
        )
        self.failures = {reason: failures.labels(engine, reason) for reason in ("error", "timeout")}

    def request_finished(self, record: RequestRecord) -> None:
        self.in_flight.dec()
        route = record.route or UNMATCHED_ROUTE
        self.requests.labels(self.engine, route, str(record.status)).inc()
        if record.duration_seconds is not None:
            self.duration.labels(self.engine, route).observe(record.duration_seconds)
        if record.status == 429:
            self.rejected.inc()
        if record.ttft_seconds is not None:
            self.ttft.observe(record.ttft_seconds)
        if record.prompt_tokens is not None:
            self.tokens["prompt"].inc(record.prompt_tokens)
            self.tokens["cached"].inc(record.cached_tokens or 0)
            self.tokens["completion"].inc(record.completion_tokens or 0)
            self.tokens["written"].inc(record.written_tokens)
        if record.engine_error is not None:
            self.failures[record.engine_error].inc()


def records() -> list[RequestRecord]:
    def record(**fields: object) -> RequestRecord:
        made = RequestRecord(request_id="r", method="POST", path="/x")
        for name, value in fields.items():
            setattr(made, name, value)
        return made

    return [
        record(
            route="/v1/chat/completions",
            status=200,
            duration_seconds=0.3,
            ttft_seconds=0.05,
            prompt_tokens=12,
            cached_tokens=4,
            completion_tokens=7,
            written_tokens=3,
        ),
        record(route="/v1/models", status=401, duration_seconds=0.001),
        record(route="", status=404, duration_seconds=0.002),
        record(route="/v1/chat/completions", status=429, duration_seconds=0.0),
        record(
            route="/v1/chat/completions",
            status=500,
            duration_seconds=301.0,
            prompt_tokens=3,
            engine_error="error",
        ),
        record(
            route="/v1/chat/completions",
            status=504,
            duration_seconds=1.0,
            ttft_seconds=2.5,
            prompt_tokens=5,
            cached_tokens=None,
            completion_tokens=None,
            engine_error="timeout",
        ),
        record(route='/odd "route"\\\n', status=200, duration_seconds=0.1),
        record(route="/metrics", status=200),
    ]


_CREATED = re.compile(r"^(\w+_created(?:\{[^\n]*\})?) \S+$", re.MULTILINE)
_PROCESS = re.compile(r"^(process_\w+) \S+$", re.MULTILINE)


def comparable(text: bytes) -> str:
    """The text with creation times and the process's figures blanked."""
    return _PROCESS.sub(r"\1 X", _CREATED.sub(r"\1 X", text.decode()))


@pytest.mark.parametrize("served", [0, 1, 4, 8])
def test_the_text_is_prometheus_clients(served: int) -> None:
    scheduler = Scheduler(2, 4)
    ours, reference = ServerMetrics("picolm", scheduler), ReferenceMetrics("picolm", scheduler)
    for record in records()[:served]:
        ours.request_started()
        reference.in_flight.inc()
        ours.request_finished(record)
        reference.request_finished(record)
    ours.request_started()
    reference.in_flight.inc()
    scheduler.running = 1
    expected = comparable(generate_latest(reference.registry))
    assert comparable(ours.exposition()) == expected
    assert comparable(ours.exposition()) == expected  # and again, from the same registry
    assert "picolm_http_requests_created" in expected or served == 0


@pytest.mark.parametrize(
    "value",
    [*LATENCY_BUCKETS, 0.0, -1.0, 1e6, 1234567.0, 1e7, 12345678.5, 1e-7, 0.1 + 0.2, -float("inf")],
)
def test_bucket_labels_are_written_as_prometheus_client_writes_them(value: float) -> None:
    assert go_float(value) == floatToGoString(value)


def test_counters_refuse_to_go_down() -> None:
    metrics = ServerMetrics("picolm", Scheduler(1, 0))
    record = RequestRecord(request_id="r", method="POST", path="/x", prompt_tokens=-1)
    metrics.request_started()
    with pytest.raises(ValueError):
        metrics.request_finished(record)


def test_created_series_follow_prometheus_clients_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    metrics = ServerMetrics("picolm", Scheduler(1, 0))
    metrics.request_started()
    metrics.request_finished(
        RequestRecord(request_id="r", method="GET", path="/x", route="/x", status=200)
    )
    assert b"picolm_http_requests_created{" in metrics.exposition()
    monkeypatch.setenv("PROMETHEUS_DISABLE_CREATED_SERIES", "True")
    text = ServerMetrics("picolm", Scheduler(1, 0)).exposition()
    assert b"_created" not in text
    assert b"picolm_http_requests_in_flight{" in text

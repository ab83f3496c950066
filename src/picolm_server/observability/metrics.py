"""Prometheus metrics: what the server counts, and ``GET /metrics`` to read them.

Each app owns its registry (never prometheus-client's global default one), so several
apps in one process keep separate counts. Requests are counted when their response is
complete, from the :class:`~.observation.RequestRecord` the request log fills in; the
scheduler's running and queued counts are read at scrape time. Every series carries an
``engine`` label (``picolm`` or ``llama_cpp``) so that several servers' metrics can be
put side by side.

The model shelf's series (:class:`ShelfMetrics`: loads, unloads, load seconds and the
memory loaded, by model) are recorded from the shelf's residency events; they carry a
``model`` label instead of ``engine``, since one shelf mixes engines and the model names
its engine.

The series are held by :mod:`.series`; prometheus_client is imported with the first
scrape (:mod:`.exposition` writes its exposition from them), so a server nobody scrapes
never loads it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

from starlette.requests import Request
from starlette.responses import Response

from ..http.route_table import Routes
from .observation import RequestRecord
from .series import Registry

if TYPE_CHECKING:
    from .exposition import Exposition

# prometheus_client's CONTENT_TYPE_LATEST (the text format, version 0.0.4).
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

# Seconds. A tiny model answers in well under a second; PicoLM on a small board can
# take minutes, up to the default 300 s time limit.
LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300, float("inf"))

# Seconds. SmolLM2 loads from the page cache in a fraction of a second; a model of a few
# GB read from an SD card takes minutes.
LOAD_BUCKETS = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300, float("inf"))

UNMATCHED_ROUTE = "unmatched"


class Occupancy(Protocol):
    """Generations running and waiting now (the shelf's, over its loaded models)."""

    @property
    def running(self) -> int: ...

    @property
    def queued(self) -> int: ...


class ShelfMetrics:
    """The model shelf's series, recorded from its residency's events: pass it as
    ``Residency(observer=...)`` (it is a :class:`~..shelf.residency.ResidencyObserver`)
    and to :class:`ServerMetrics` (``shelf=``) to have them scraped.

    Its families are its own until a :class:`ServerMetrics` takes them, so that the
    shelf can be built (and count its preloads) before the app exists.
    """

    def __init__(self) -> None:
        registry = Registry()
        self._loads = registry.counter(
            "picolm_model_loads",
            "Models loaded into memory, by model.",
            ["model"],
        )
        self._unloads = registry.counter(
            "picolm_model_unloads",
            "Models unloaded from memory (keep_alive, room for another model, shutdown), by model.",
            ["model"],
        )
        self._load_seconds = registry.histogram(
            "picolm_model_load_seconds",
            "Time a model took to load, by model.",
            ["model"],
            LOAD_BUCKETS,
        )
        self._memory = registry.gauge(
            "picolm_model_memory_bytes",
            "Memory a loaded model takes (measured after its load), by model; 0 once unloaded.",
            ["model"],
        )
        self._loaded_memory = registry.gauge(
            "picolm_models_loaded_memory_bytes",
            "Memory the shelf's models take now, counted against max_loaded_memory "
            "(loading and closing models included).",
            [],
        ).labels()
        self.families = registry.families

    def model_loaded(self, model_id: str, seconds: float, memory_bytes: int) -> None:
        self._loads.labels(model_id).inc()
        self._load_seconds.labels(model_id).observe(seconds)
        self._memory.labels(model_id).set(memory_bytes)

    def model_unloaded(self, model_id: str) -> None:
        self._unloads.labels(model_id).inc()
        self._memory.labels(model_id).set(0)

    def loaded_memory(self, total_bytes: int) -> None:
        self._loaded_memory.set(total_bytes)


class ServerMetrics:
    def __init__(
        self,
        engine: str,
        scheduler: Occupancy,
        store_available: Callable[[], bool] = lambda: True,
        shelf: ShelfMetrics | None = None,
    ) -> None:
        self.engine = engine
        self.registry = registry = Registry()
        self._exposition: Exposition | None = None
        self._requests = registry.counter(
            "picolm_http_requests",
            "HTTP requests answered, by route template and status.",
            ["engine", "route", "status"],
        )
        self._in_flight = registry.gauge(
            "picolm_http_requests_in_flight",
            "HTTP requests being handled now.",
            ["engine"],
        ).labels(engine)
        running = registry.gauge(
            "picolm_generations_running",
            "Generations holding a slot now.",
            ["engine"],
        )
        running.labels(engine).set_function(lambda: scheduler.running)
        queued = registry.gauge(
            "picolm_requests_queued",
            "Requests waiting for a generation slot now.",
            ["engine"],
        )
        queued.labels(engine).set_function(lambda: scheduler.queued)
        registry.gauge(
            "picolm_response_store_available",
            "1 while the Responses API's store works (its last use succeeded), else 0.",
            ["engine"],
        ).labels(engine).set_function(lambda: 1 if store_available() else 0)
        self._rejected = registry.counter(
            "picolm_requests_rejected",
            "Requests refused with 429 because the queue was full.",
            ["engine"],
        ).labels(engine)
        self._duration = registry.histogram(
            "picolm_request_duration_seconds",
            "Time from a request's arrival to the end of its response, by route template.",
            ["engine", "route"],
            LATENCY_BUCKETS,
        )
        self._ttft = registry.histogram(
            "picolm_time_to_first_token_seconds",
            "Time from a chat request's arrival to the reply's first token.",
            ["engine"],
            LATENCY_BUCKETS,
        ).labels(engine)
        tokens = registry.counter(
            "picolm_tokens",
            "Tokens processed: prompt, completion, the prompt tokens reused from saved "
            "state (cached, also counted in prompt), and the completion tokens a grammar "
            "fixed, written without sampling (written, also counted in completion).",
            ["engine", "kind"],
        )
        self._prompt_tokens = tokens.labels(engine, "prompt")
        self._completion_tokens = tokens.labels(engine, "completion")
        self._cached_tokens = tokens.labels(engine, "cached")
        self._written_tokens = tokens.labels(engine, "written")
        failures = registry.counter(
            "picolm_engine_failures",
            "Generations the engine failed (error) or that ran past their time limit (timeout).",
            ["engine", "reason"],
        )
        self._engine_errors = failures.labels(engine, "error")
        self._engine_timeouts = failures.labels(engine, "timeout")
        if shelf is not None:
            registry.families.extend(shelf.families)

    def request_started(self) -> None:
        self._in_flight.inc()

    def request_finished(self, record: RequestRecord) -> None:
        """Count a request whose response is complete (or abandoned); called once."""
        self._in_flight.dec()
        route = record.route or UNMATCHED_ROUTE
        self._requests.labels(self.engine, route, str(record.status)).inc()
        if record.duration_seconds is not None:
            self._duration.labels(self.engine, route).observe(record.duration_seconds)
        if record.status == 429:
            self._rejected.inc()
        if record.ttft_seconds is not None:
            self._ttft.observe(record.ttft_seconds)
        if record.prompt_tokens is not None:
            self._prompt_tokens.inc(record.prompt_tokens)
            self._cached_tokens.inc(record.cached_tokens or 0)
            self._completion_tokens.inc(record.completion_tokens or 0)
            self._written_tokens.inc(record.written_tokens)
        if record.engine_error == "error":
            self._engine_errors.inc()
        elif record.engine_error == "timeout":
            self._engine_timeouts.inc()

    def exposition(self) -> bytes:
        """The text a scrape returns (prometheus_client's, imported with the first one)."""
        if self._exposition is None:
            from .exposition import Exposition

            self._exposition = Exposition(self.registry.families)
        return self._exposition.text()


router = Routes()


@router.get("/metrics")
async def metrics(request: Request) -> Response:
    server_metrics: ServerMetrics = request.app.state.metrics
    return Response(server_metrics.exposition(), media_type=CONTENT_TYPE)

"""Ollama's API on ``/api/*``: the model listings (``version``, ``tags``, ``show``,
``ps``), generation (``chat``, ``generate``) and embeddings (``embed``,
``embeddings``), over the same core and shelf as the other APIs.

A request's ``keep_alive`` becomes its leases' (:meth:`ModelCore.keeping`): the model
stays loaded that long after the request. A chat without messages or a generate
without a prompt only loads the model, and with ``keep_alive: 0`` unloads it, as
Ollama does.
"""

from __future__ import annotations

import time
from datetime import datetime, timedelta, timezone

from starlette.requests import Request
from starlette.responses import Response

from ...engines.base import Engine
from ...errors import InvalidRequestError
from ...generation import EventStream, GenerationSpec, ModelCore, RawPrompt
from ...generation.models import LoadedModel, ModelSource
from ...http.requests import core_of, parse_request, until_disconnected
from ...http.responses import JSONResponse, JSONText, NDJSONResponse
from ...http.route_table import Routes
from ...observability.observation import GenerationObserver
from ...observability.request_log import observer_of
from ...shelf.catalog import ShelfModel
from ...shelf.shelf import Shelf
from ..completions.convert import FimMarkers, fill_in_the_middle
from ..embeddings.routes import embed_in_time
from .convert import (
    chat_spec,
    embed_inputs,
    generate_prompt,
    generate_spec,
    keep_alive_seconds,
    refuse_generate_unsupported,
    refuse_think,
)
from .facts import DIGESTS, context_length, details, model_info
from .names import find_model, ollama_name
from .respond import (
    Timer,
    chat_lines,
    chat_reply,
    generate_lines,
    generate_reply,
    loaded_part,
)
from .types import (
    ChatPart,
    ChatRequest,
    Embedded,
    EmbeddingsRequest,
    EmbedRequest,
    GeneratePart,
    GenerateRequest,
    LegacyEmbedding,
    ListedModel,
    ModelList,
    ModelShown,
    Options,
    RunningModel,
    RunningModels,
    ShowRequest,
    Version,
)

router = Routes()

# The Ollama API version this server answers as: clients gate features on it (VS Code
# Copilot wants at least 0.6.4); what it implements is this module.
OLLAMA_VERSION = "0.12.0"
# Ollama's expires_at for a model kept loaded for good: as far as its clock goes.
FOREVER = datetime(9999, 12, 31, 23, 59, 59, tzinfo=timezone.utc)


def _rfc3339(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")


def _shelf_of(models: ModelSource) -> Shelf:
    assert isinstance(models, Shelf), "Ollama's API lists the model shelf"
    return models


def _shelf(request: Request) -> Shelf:
    return _shelf_of(core_of(request).models)


def _catalog_entry(core: ModelCore) -> ShelfModel:
    """The shelf's entry of the model ``core`` is bound to (its file, its metadata)."""
    model = _shelf_of(core.core.models).catalog.find(core.model_id)
    assert model is not None, "a found model is on the shelf"
    return model


def _modified_at(model: ShelfModel) -> str:
    try:
        mtime = model.path.stat().st_mtime
    except OSError:
        mtime = 0.0
    return _rfc3339(datetime.fromtimestamp(mtime, timezone.utc))


# ---- listings ------------------------------------------------------------------------


@router.get("/api/version")
async def version(request: Request) -> Response:
    return JSONResponse(Version(version=OLLAMA_VERSION))


@router.get("/api/tags")
async def list_models(request: Request) -> Response:
    """Every model of the shelf, each under its id and each alias (Ollama lists a
    copied model under both names)."""
    listed = []
    for model in _shelf(request).catalog:
        digest = await DIGESTS.digest(model.path)
        for name in model.names:
            listed.append(
                ListedModel(
                    name=ollama_name(name),
                    model=ollama_name(name),
                    modified_at=_modified_at(model),
                    size=model.size_bytes,
                    digest=digest,
                    details=details(model),
                )
            )
    return JSONResponse(ModelList(models=listed))


def capabilities(engine: Engine) -> list[str]:
    """What the engine declares: completion and tools always (calls are held to their
    schema on both engines), embedding and insert (fill-in-the-middle) where it can."""
    found = ["completion", "tools"]
    if engine.abilities.embeddings:
        found.append("embedding")
    if engine.abilities.fim_tokens is not None:
        found.append("insert")
    return found


def parameters(model: ShelfModel, loaded: LoadedModel) -> str:
    """The generation defaults, as a Modelfile's ``PARAMETER`` lines."""
    options = model.options
    lines = [
        f"num_ctx {loaded.engine.model.context_length}",
        f"num_predict {options.max_tokens}",
        f"temperature {options.temperature:g}",
        f"top_p {options.top_p:g}",
    ]
    eos = loaded.template.eos_token
    if eos:
        lines.append(f'stop "{eos}"')
    return "\n".join(lines)


@router.post("/api/show")
async def show_model(request: Request) -> Response:
    """The model's details, GGUF metadata, capabilities (from its engine: the model
    is loaded to answer, unless it is already) and generation parameters."""
    parsed = await parse_request(request, ShowRequest)
    name = parsed.model or parsed.name or ""
    core = find_model(core_of(request), name)
    model = _catalog_entry(core)
    async with core.loaded() as loaded:
        shown_parameters = parameters(model, loaded)
        found = capabilities(loaded.engine)
        template = loaded.template.source
    info = model_info(model)
    return JSONResponse(
        ModelShown(
            modelfile=f"# Served by picolm-server\nFROM {ollama_name(model.id)}\n",
            parameters=shown_parameters,
            template=template,
            details=details(model),
            model_info=info,
            capabilities=found,
            modified_at=_modified_at(model),
        )
    )


@router.get("/api/ps")
async def running_models(request: Request) -> Response:
    """The loaded models, their memory, and when their ``keep_alive`` unloads them."""
    shelf = _shelf(request)
    now = time.monotonic()
    wall = datetime.now(timezone.utc)
    running = []
    for model in shelf.catalog:
        status = shelf.residency.status(model.id)
        engine = shelf.loaded_engine(model.id)
        if not status.loaded or engine is None:
            continue
        if status.expires_at is not None:
            expires = wall + timedelta(seconds=status.expires_at - now)
        elif status.keep_alive < 0:
            expires = FOREVER
        else:  # in use: its keep_alive runs from the end of its last request
            expires = wall + timedelta(seconds=status.keep_alive)
        running.append(
            RunningModel(
                name=ollama_name(model.id),
                model=ollama_name(model.id),
                size=status.memory_bytes,
                digest=await DIGESTS.digest(model.path),
                details=details(model),
                expires_at=_rfc3339(expires),
                context_length=engine.model.context_length,
            )
        )
    return JSONResponse(RunningModels(models=running))


# ---- generation ----------------------------------------------------------------------


def check_options(options: Options | None, model: ShelfModel, engine: Engine) -> None:
    """``num_ctx`` beyond the model's context (its GGUF's ``<arch>.context_length``, as
    ``/api/show`` gives it; else the context it is served with) is refused. Up to it,
    it is accepted (Home Assistant sends 8192 unless told otherwise); the context the
    engine allocated (``context_length`` in the settings) still bounds the prompt and
    reply, and a prompt beyond it is refused naming it."""
    if options is None or options.num_ctx is None:
        return
    limit = context_length(model) or engine.model.context_length
    if options.num_ctx > limit:
        raise InvalidRequestError(
            f"options.num_ctx {options.num_ctx} is more than this model's context of "
            f"{limit} tokens.",
            param="options.num_ctx",
        )


async def _start(
    core: ModelCore,
    spec: GenerationSpec,
    options: Options | None,
    observer: GenerationObserver,
    timer: Timer,
) -> EventStream:
    model = _catalog_entry(core)
    """The model leased (its wait is the load duration), options checked against its
    engine, the generation started (the stream holds its own lease)."""
    async with core.loaded() as loaded:
        timer.mark_loaded()
        check_options(options, model, loaded.engine)
        return await core.open(spec, observer)


def _part(part: ChatPart | GeneratePart) -> Response:
    """A whole reply: what a stream's lines leave out (null counts) is left out too."""
    return JSONResponse(JSONText(part.model_dump_json(exclude_none=True)))


async def _load_only(core: ModelCore, name: str, chat: bool) -> Response:
    """Nothing to generate: load the model, or with ``keep_alive: 0`` unload it."""
    if core.keep_alive == 0:
        await core.unload()
        return JSONResponse(
            JSONText(loaded_part(name, chat, "unload").model_dump_json(exclude_none=True))
        )
    async with core.loaded():
        pass
    return JSONResponse(
        JSONText(loaded_part(name, chat, "load").model_dump_json(exclude_none=True))
    )


def _accept(request: Request, name: str, keep_alive: float | str | None) -> ModelCore:
    observer = observer_of(request.scope)
    return find_model(core_of(request), name, observer).keeping(keep_alive_seconds(keep_alive))


@router.post("/api/chat")
async def chat(request: Request) -> Response:
    timer = Timer()
    parsed = await parse_request(request, ChatRequest)
    core = _accept(request, parsed.model, parsed.keep_alive)
    if not parsed.messages:
        refuse_think(parsed.think, parsed.model)
        return await _load_only(core, parsed.model, chat=True)
    spec = chat_spec(parsed, parsed.model)
    observer = observer_of(request.scope)
    stream = await until_disconnected(request, _start(core, spec, parsed.options, observer, timer))
    if parsed.stream:
        return NDJSONResponse(chat_lines(stream, parsed.model, timer))
    reply = await until_disconnected(request, chat_reply(stream, parsed.model, timer))
    return _part(reply)


@router.post("/api/generate")
async def generate(request: Request) -> Response:
    timer = Timer()
    parsed = await parse_request(request, GenerateRequest)
    core = _accept(request, parsed.model, parsed.keep_alive)
    refuse_generate_unsupported(parsed, parsed.model)
    if not parsed.prompt and parsed.suffix is None:
        return await _load_only(core, parsed.model, chat=False)
    if parsed.suffix is not None:
        fim = await core.inspect(FimMarkers.of)
        text = fill_in_the_middle(fim, parsed.prompt or "", parsed.suffix)
        spec = generate_spec(parsed, RawPrompt(text, parse_special=True, param="prompt"))
    else:
        spec = generate_spec(parsed, generate_prompt(parsed))
    observer = observer_of(request.scope)
    stream = await until_disconnected(request, _start(core, spec, parsed.options, observer, timer))
    if parsed.stream:
        return NDJSONResponse(generate_lines(stream, parsed.model, timer))
    reply = await until_disconnected(request, generate_reply(stream, parsed.model, timer))
    return _part(reply)


# ---- embeddings ----------------------------------------------------------------------


@router.post("/api/embed")
async def embed(request: Request) -> Response:
    timer = Timer()
    parsed = await parse_request(request, EmbedRequest)
    core = _accept(request, parsed.model, parsed.keep_alive)
    inputs = embed_inputs(parsed.input)
    async with core.loaded():
        timer.mark_loaded()
        if not inputs:  # nothing to embed: the model is loaded, as Ollama does
            vectors: list[list[float]] = []
            tokens = 0
        else:
            result = await until_disconnected(
                request, embed_in_time(core, list(inputs), truncate=parsed.truncate)
            )
            vectors = [list(vector) for vector in result.vectors]
            tokens = result.prompt_tokens
    if parsed.dimensions is not None and vectors and parsed.dimensions != len(vectors[0]):
        raise InvalidRequestError(
            f"dimensions {parsed.dimensions} is not supported: this model's embeddings "
            f"have {len(vectors[0])} dimensions.",
            param="dimensions",
        )
    return JSONResponse(
        Embedded(
            model=parsed.model,
            embeddings=vectors,
            total_duration=time.perf_counter_ns() - timer.started,
            load_duration=timer.load_duration,
            prompt_eval_count=tokens,
        )
    )


@router.post("/api/embeddings")
async def embeddings(request: Request) -> Response:
    """The older embeddings endpoint: one ``prompt``, one ``embedding``."""
    parsed = await parse_request(request, EmbeddingsRequest)
    core = _accept(request, parsed.model, parsed.keep_alive)
    if not parsed.prompt:
        async with core.loaded():
            pass
        return JSONResponse(LegacyEmbedding(embedding=[]))
    result = await until_disconnected(request, embed_in_time(core, [parsed.prompt]))
    return JSONResponse(LegacyEmbedding(embedding=list(result.vectors[0])))

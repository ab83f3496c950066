"""What Ollama's model listings say of a model, read from its GGUF file: ``details``
(format, family, parameter size, quantization), ``model_info`` (the GGUF's metadata
keys) and ``digest`` (the file's SHA-256).

A digest reads the whole file (hundreds of megabytes), so it is computed once per file
version, in a worker thread, and kept in memory by (path, size, modification time): a
file replaced under the same name gets a new one. Concurrent requests for the same
file wait for the one computation.
"""

from __future__ import annotations

import asyncio
import hashlib
import math
from pathlib import Path
from typing import Any

from ...gguf import GGUFMetadata
from ...shelf.catalog import ShelfModel
from .types import ModelDetails

# llama.cpp's LLAMA_FTYPE numbers (general.file_type): the quantization of the file as
# a whole, in the names Ollama shows.
FILE_TYPES = {
    0: "F32",
    1: "F16",
    2: "Q4_0",
    3: "Q4_1",
    7: "Q8_0",
    8: "Q5_0",
    9: "Q5_1",
    10: "Q2_K",
    11: "Q3_K_S",
    12: "Q3_K_M",
    13: "Q3_K_L",
    14: "Q4_K_S",
    15: "Q4_K_M",
    16: "Q5_K_S",
    17: "Q5_K_M",
    18: "Q6_K",
    19: "IQ2_XXS",
    20: "IQ2_XS",
    21: "Q2_K_S",
    22: "IQ3_XS",
    23: "IQ3_XXS",
    24: "IQ1_S",
    25: "IQ4_NL",
    26: "IQ3_S",
    27: "IQ3_M",
    28: "IQ2_S",
    29: "IQ2_M",
    30: "IQ4_XS",
    31: "IQ1_M",
    32: "BF16",
    36: "TQ1_0",
    37: "TQ2_0",
    38: "MXFP4",
}

_HASH_CHUNK = 1 << 20


def parameter_count(metadata: GGUFMetadata) -> int:
    """The parameters of the model: every tensor's element count."""
    table = metadata.tensor_table
    if table is None:
        return 0
    return sum(math.prod(tensor.dims) for tensor in table.tensors)


def parameter_size(count: int) -> str:
    """A count as Ollama writes it: ``135M``, ``1.2B``."""
    for unit, scale in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if count >= scale:
            value = count / scale
            text = f"{value:.1f}".removesuffix(".0") if value < 10 else f"{value:.0f}"
            return text + unit
    return str(count)


def quantization_level(metadata: GGUFMetadata) -> str:
    """``general.file_type``'s name; without it, the type most of the tensor bytes have."""
    file_type = metadata.values.get("general.file_type")
    if isinstance(file_type, int) and file_type in FILE_TYPES:
        return FILE_TYPES[file_type]
    table = metadata.tensor_table
    if table is not None and table.tensors:
        return next(iter(table.bytes_by_type())).name
    return "unknown"


def details(model: ShelfModel) -> ModelDetails:
    metadata = model.metadata
    if metadata is None:  # the file could not be read (its problem says why)
        return ModelDetails(family="", families=None, parameter_size="", quantization_level="")
    family = metadata.architecture
    label = metadata.values.get("general.size_label")
    return ModelDetails(
        family=family,
        families=[family] if family else None,
        parameter_size=str(label) if label else parameter_size(parameter_count(metadata)),
        quantization_level=quantization_level(metadata),
    )


def _json_value(value: Any) -> Any:
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if isinstance(value, (list, tuple)):
        return [_json_value(item) for item in value]
    return str(value)


def model_info(model: ShelfModel) -> dict[str, Any]:
    """The GGUF's metadata keys and values, as Ollama's ``/api/show`` gives them: the
    arrays it leaves out (the vocabulary) as null, and ``general.parameter_count``."""
    metadata = model.metadata
    if metadata is None:
        return {}
    info: dict[str, Any] = {key: _json_value(v) for key, v in metadata.values.items()}
    info.update(dict.fromkeys(metadata.array_lengths))
    info["general.parameter_count"] = parameter_count(metadata)
    return dict(sorted(info.items()))


def context_length(model: ShelfModel) -> int:
    """The context the model was trained for (its GGUF's ``<arch>.context_length``)."""
    metadata = model.metadata
    return (metadata.context_length or 0) if metadata is not None else 0


def _version(path: Path) -> tuple[str, int, int] | None:
    """What tells one version of a file from another: path, size, modification time."""
    try:
        stat = path.stat()
    except OSError:
        return None
    return (str(path), stat.st_size, stat.st_mtime_ns)


class Digests:
    """Files' SHA-256 digests, each computed once per (path, size, modification time)."""

    def __init__(self) -> None:
        self._known: dict[tuple[str, int, int], str] = {}
        self._running: dict[tuple[str, int, int], asyncio.Future[str]] = {}
        self.computed = 0  # files hashed (a known digest is never hashed again)

    async def digest(self, path: Path) -> str:
        """The file's SHA-256 in hex, as Ollama lists it; "" when it cannot be read."""
        key = _version(path)
        if key is None:
            return ""
        if key in self._known:
            return self._known[key]
        running = self._running.get(key)
        if running is None:
            running = asyncio.ensure_future(asyncio.to_thread(self._hash, path))
            self._running[key] = running
            running.add_done_callback(lambda _: self._running.pop(key, None))
        digest = await asyncio.shield(running)
        if digest:  # a file that could not be read is tried again next time
            self._known[key] = digest
        return digest

    def _hash(self, path: Path) -> str:
        self.computed += 1
        sha = hashlib.sha256()
        try:
            with path.open("rb") as file:
                while chunk := file.read(_HASH_CHUNK):
                    sha.update(chunk)
        except OSError:
            return ""
        return sha.hexdigest()


# One per process: a file's digest does not depend on the app that asks for it.
DIGESTS = Digests()

"""A model file checked before anything loads it: it exists, is a regular file, and is
a whole GGUF (header, tensor count, every tensor's data inside the file; see
:func:`picolm_server.gguf.read_gguf_metadata`). A truncated file, a text file named
``.gguf`` or a hostile one is a :class:`ModelFileError` with one line saying why,
never a crash."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..gguf import GGUFError, GGUFMetadata, read_gguf_metadata


class ModelFileError(Exception):
    """The file cannot be served; the message is one line naming the file."""


@dataclass(frozen=True)
class ModelFile:
    """A checked model file: its metadata (every tensor's header in
    ``metadata.tensor_table``, no vocabulary) and its size on disk."""

    path: Path
    metadata: GGUFMetadata
    size_bytes: int

    @property
    def tensor_bytes(self) -> int:
        table = self.metadata.tensor_table
        return table.total_bytes if table is not None else 0


def _layer_arrays(metadata: GGUFMetadata) -> frozenset[str]:
    """The attention-shape keys this file gives per layer (an array rather than one
    number): read again so that the memory estimate can count each layer."""
    arch = metadata.architecture
    keys = (f"{arch}.attention.head_count", f"{arch}.attention.head_count_kv")
    return frozenset(key for key in keys if key in metadata.array_lengths)


def check_model_file(path: Path) -> ModelFile:
    """``path`` checked as a GGUF model (symbolic links followed); raises
    :class:`ModelFileError`."""
    try:
        stat = path.stat()
    except FileNotFoundError:
        raise ModelFileError(f"{path}: no such file") from None
    except OSError as exc:
        raise ModelFileError(f"{path}: cannot be read ({exc.strerror or exc})") from None
    if not path.is_file():
        raise ModelFileError(f"{path}: not a file")
    try:
        metadata = read_gguf_metadata(path, check_tensors=True)
        per_layer = _layer_arrays(metadata)
        if per_layer:
            metadata = read_gguf_metadata(path, arrays=per_layer, check_tensors=True)
    except GGUFError as exc:
        raise ModelFileError(str(exc)) from None
    return ModelFile(path, metadata, stat.st_size)

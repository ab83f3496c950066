"""The prompt-state store: token-keyed states, private run copies, cut-down states,
commits only of whole files, foreign/corrupt files ignored, and the disk budget."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest

from picolm_server.engines.picolm_tokenizer import PicoLMTokenizer
from picolm_server.engines.prompt_cache import (
    KV_MAGIC,
    KVShape,
    PromptCache,
    copy_kv_prefix,
    craft_prompt,
    kv_file_positions,
)
from tests.support.picolm_setup import PicoLMFiles

SHAPE = KVShape(layers=2, kv_dim=4)


def write_kv(path: Path, fed: list[int], shape: KVShape = SHAPE) -> Path:
    """A KV file whose rows carry the token fed at their position (as the stand-in's)."""
    row = shape.row_bytes
    rows = b"".join(struct.pack("<I", t).ljust(row, b"\0") for t in fed)
    path.write_bytes(
        struct.pack("<4I", KV_MAGIC, len(fed), shape.layers, shape.kv_dim)
        + rows * (2 * shape.layers)
    )
    return path


def rows_of(path: Path, shape: KVShape = SHAPE) -> list[list[int]]:
    """Token ids of every block (K per layer, then V per layer) of a KV file."""
    data = path.read_bytes()
    n = struct.unpack_from("<4I", data)[1]
    row = shape.row_bytes
    return [
        [struct.unpack_from("<I", data, 16 + (b * n + p) * row)[0] for p in range(n)]
        for b in range(2 * shape.layers)
    ]


def make_cache(tmp_path: Path, max_bytes: int = 10**9, identity: str = "model-a") -> PromptCache:
    return PromptCache(
        tmp_path / "cache", max_bytes=max_bytes, model_identity=identity, shape=SHAPE
    )


def commit(cache: PromptCache, tokens: list[int]) -> bool:
    lease = cache.lease(tokens)
    write_kv(lease.path, tokens)
    return cache.commit(lease, tokens)


def always(positions: int) -> bytes:
    return b"crafted"


def test_kv_file_positions_checks_magic_shape_and_exact_size(tmp_path: Path) -> None:
    good = write_kv(tmp_path / "a.kv", [1, 2, 3])
    assert kv_file_positions(good, SHAPE) == 3
    assert kv_file_positions(good, KVShape(2, 8)) is None
    assert kv_file_positions(good, KVShape(3, 4)) is None
    (tmp_path / "short.kv").write_bytes(good.read_bytes()[:-1])
    assert kv_file_positions(tmp_path / "short.kv", SHAPE) is None
    (tmp_path / "long.kv").write_bytes(good.read_bytes() + b"\0")
    assert kv_file_positions(tmp_path / "long.kv", SHAPE) is None
    (tmp_path / "magic.kv").write_bytes(b"XXXX" + good.read_bytes()[4:])
    assert kv_file_positions(tmp_path / "magic.kv", SHAPE) is None
    assert kv_file_positions(tmp_path / "missing.kv", SHAPE) is None


def test_copy_kv_prefix_keeps_the_first_rows_of_every_block(tmp_path: Path) -> None:
    source = write_kv(tmp_path / "a.kv", [10, 11, 12, 13, 14])
    copy_kv_prefix(source, tmp_path / "b.kv", SHAPE, 3)
    assert kv_file_positions(tmp_path / "b.kv", SHAPE) == 3
    assert rows_of(tmp_path / "b.kv") == [[10, 11, 12]] * 4
    with pytest.raises(ValueError):
        copy_kv_prefix(source, tmp_path / "c.kv", SHAPE, 6)


def test_lease_reuses_only_a_common_token_prefix(tmp_path: Path) -> None:
    cache = make_cache(tmp_path)
    assert commit(cache, [1, 5, 6, 7, 8])
    lease = cache.lease([1, 5, 6, 9, 9, 9], always)
    assert lease.reused_tokens == 3 and lease.prompt == b"crafted"
    assert rows_of(lease.path) == [[1, 5, 6]] * 4
    # Never the whole prompt: the last position must be computed to sample from it.
    same = cache.lease([1, 5, 6, 7, 8], always)
    assert same.reused_tokens == 4
    other = cache.lease([2, 5, 6, 7, 8, 9], always)
    assert other.reused_tokens == 0 and not other.path.exists()
    # Without a crafted prompt for a cut point, no reuse.
    assert cache.lease([1, 5, 6, 7, 8, 9], lambda p: None).reused_tokens == 0
    for each in (lease, same, other):
        cache.discard(each)


def test_runs_get_private_copies_and_commit_needs_exact_positions(tmp_path: Path) -> None:
    cache = make_cache(tmp_path)
    assert commit(cache, [1, 2, 3, 4])
    a = cache.lease([1, 2, 3, 4, 5, 6], always)
    b = cache.lease([1, 2, 3, 4, 7, 8], always)
    assert a.path != b.path and a.reused_tokens == b.reused_tokens == 4
    # A failed run: the file still holds the seed's positions, not the prompt's.
    assert not cache.commit(a, [1, 2, 3, 4, 5, 6])
    assert not a.path.exists()
    # A run killed while writing: a truncated file.
    write_kv(b.path, [1, 2, 3, 4, 7, 8])
    b.path.write_bytes(b.path.read_bytes()[:-3])
    assert not cache.commit(b, [1, 2, 3, 4, 7, 8])
    assert cache.saved_tokens() == [(1, 2, 3, 4)]
    assert cache.lease([1, 2, 3, 4, 5], always).reused_tokens == 4


def test_states_survive_a_restart_and_foreign_files_do_not(tmp_path: Path) -> None:
    cache = make_cache(tmp_path)
    assert commit(cache, [1, 2, 3])
    assert commit(cache, [1, 4, 5, 6])
    folder = cache.directory
    # Debris: a run file of a dead process, a state without an index, a corrupt index,
    # a state whose size changed, an index of another model.
    (folder / ".run-999999999-abc.kv").write_bytes(b"x")
    write_kv(folder / "0123.kv", [1, 2])
    index = next(p for p in folder.glob("*.json") if json.loads(p.read_text())["tokens"][1] == 4)
    (folder / "bad.json").write_text("{not json")
    write_kv(index.with_suffix(".kv"), [1, 4, 5, 6, 7])
    reloaded = make_cache(tmp_path)
    assert reloaded.saved_tokens() == [(1, 2, 3)]
    assert sorted(p.name for p in folder.iterdir() if p.suffix == ".kv")[0] != "0123.kv"
    assert not (folder / ".run-999999999-abc.kv").exists()
    assert not (folder / "bad.json").exists()
    # Another model has a folder of its own and sees nothing of this one.
    assert len(make_cache(tmp_path, identity="model-b")) == 0
    # A changed model shape: nothing checks out.
    other_shape = PromptCache(
        tmp_path / "cache", max_bytes=10**9, model_identity="model-a", shape=KVShape(2, 8)
    )
    assert len(other_shape) == 0


def test_disk_budget_evicts_least_recently_used(tmp_path: Path) -> None:
    one = SHAPE.file_size(4)
    cache = make_cache(tmp_path, max_bytes=2 * one)
    for first in (1, 2, 3):
        assert commit(cache, [first, 9, 9, 9])
        assert cache.total_bytes <= 2 * one
    assert sorted(cache.saved_tokens()) == [(2, 9, 9, 9), (3, 9, 9, 9)]
    cache.discard(cache.lease([2, 9, 9, 9, 9], always))  # 2 is now the most recent
    assert commit(cache, [4, 9, 9, 9])
    assert sorted(cache.saved_tokens()) == [(2, 9, 9, 9), (4, 9, 9, 9)]
    on_disk = sum(p.stat().st_size for p in cache.directory.glob("*.kv"))
    assert on_disk <= 2 * one


def test_save_prefix_cuts_a_longer_state(tmp_path: Path) -> None:
    cache = make_cache(tmp_path)
    assert not cache.save_prefix([1, 2, 3])
    assert commit(cache, [1, 2, 3, 4, 5])
    assert cache.save_prefix([1, 2, 3])
    assert cache.has([1, 2, 3])
    entry = next(
        p for p in cache.directory.glob("*.json") if len(json.loads(p.read_text())["tokens"]) == 3
    )
    assert rows_of(entry.with_suffix(".kv")) == [[1, 2, 3]] * 4


# ---- the crafted prompt, with the exact tokenizer ------------------------------------------


@pytest.fixture(scope="module")
def tokenizer(picolm_files: PicoLMFiles) -> PicoLMTokenizer:
    return PicoLMTokenizer.from_gguf(picolm_files.model)


@pytest.mark.parametrize(
    "text",
    [
        "<|user|>\nhello there, how is the world today?</s>\n<|assistant|>\n the robot said",
        "the robot said hello to the world and it was morning light on the sea",
        "héllo wörld 中 \t tabs\nand\n\nnewlines  double  spaces 🙂 emoji at the end",
    ],
)
def test_crafted_prompt_feeds_the_right_tokens(tokenizer: PicoLMTokenizer, text: str) -> None:
    tokens = tokenizer.encode(text)
    found = 0
    for positions in range(2, len(tokens)):
        crafted = craft_prompt(tokenizer, tokens, positions)
        if crafted is None:
            continue
        found += 1
        c = tokenizer.encode(crafted)
        assert len(c) == len(tokens)
        assert c[positions - 1] == tokens[positions]
        assert c[positions + 1 :] == tokens[positions + 1 :]
    assert found >= len(tokens) // 2
    assert craft_prompt(tokenizer, tokens, len(tokens)) is None

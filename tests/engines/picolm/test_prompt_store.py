"""The prompt-state store: token-keyed states, private run copies, cut-down states,
commits only of whole files, foreign/corrupt files ignored, and the disk budget."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import stat
from collections.abc import Callable
from pathlib import Path

import pytest

from picolm_server.engines.picolm.kv_file import KVShape
from picolm_server.engines.picolm.prompt_store import CacheLease, PromptCache
from picolm_server.engines.state_dir import StateDir, StateDirRefused, default_state_dir
from tests.engines.picolm.test_kv_file import SHAPE, rows_of, write_kv


def make_cache(tmp_path: Path, max_bytes: int = 10**9, identity: str = "model-a") -> PromptCache:
    return PromptCache(
        tmp_path / "cache", max_bytes=max_bytes, model_identity=identity, shape=SHAPE
    )


def take(
    cache: PromptCache, tokens: list[int], craft: Callable[[int], bytes | None] | None = None
) -> CacheLease:
    lease = cache.lease(tokens, craft)
    assert lease is not None, cache.fault
    return lease


def commit(cache: PromptCache, tokens: list[int]) -> bool:
    lease = cache.lease(tokens)
    assert lease is not None, cache.fault
    write_kv(lease.path, tokens)
    return cache.commit(lease, tokens)


def always(positions: int) -> bytes:
    return b"crafted"


def test_lease_reuses_only_a_common_token_prefix(tmp_path: Path) -> None:
    cache = make_cache(tmp_path)
    assert commit(cache, [1, 5, 6, 7, 8])
    lease = take(cache, [1, 5, 6, 9, 9, 9], always)
    assert lease.reused_tokens == 3 and lease.prompt == b"crafted"
    assert rows_of(lease.path) == [[1, 5, 6]] * 4
    # Never the whole prompt: the last position must be computed to sample from it.
    same = take(cache, [1, 5, 6, 7, 8], always)
    assert same.reused_tokens == 4
    other = take(cache, [2, 5, 6, 7, 8, 9], always)
    assert other.reused_tokens == 0 and other.path.stat().st_size == 0
    # Without a crafted prompt for a cut point, no reuse.
    assert take(cache, [1, 5, 6, 7, 8, 9], lambda p: None).reused_tokens == 0
    for each in (lease, same, other):
        cache.discard(each)


def test_runs_get_private_copies_and_commit_needs_exact_positions(tmp_path: Path) -> None:
    cache = make_cache(tmp_path)
    assert commit(cache, [1, 2, 3, 4])
    a = take(cache, [1, 2, 3, 4, 5, 6], always)
    b = take(cache, [1, 2, 3, 4, 7, 8], always)
    assert a.path != b.path and a.reused_tokens == b.reused_tokens == 4
    # A failed run: the file still holds the seed's positions, not the prompt's.
    assert not cache.commit(a, [1, 2, 3, 4, 5, 6])
    assert not a.path.exists()
    # A run killed while writing: a truncated file.
    write_kv(b.path, [1, 2, 3, 4, 7, 8])
    b.path.write_bytes(b.path.read_bytes()[:-3])
    assert not cache.commit(b, [1, 2, 3, 4, 7, 8])
    assert cache.saved_tokens() == [(1, 2, 3, 4)]
    assert take(cache, [1, 2, 3, 4, 5], always).reused_tokens == 4


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
    cache.discard(take(cache, [2, 9, 9, 9, 9], always))  # 2 is now the most recent
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


# ---- integrity: a digest written with each state, checked before use -----------------------


def corrupt(path: Path, offset: int = 16) -> None:
    """Overwrite bytes of a state with its size and modification time kept."""
    stat = path.stat()
    data = bytearray(path.read_bytes())
    data[offset : offset + 4] = (999).to_bytes(4, "little")
    path.write_bytes(bytes(data))
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))


def state_file(cache: PromptCache, tokens: list[int]) -> Path:
    for index in cache.directory.glob("*.json"):
        if json.loads(index.read_text())["tokens"] == tokens:
            return index.with_suffix(".kv")
    raise AssertionError(f"no state of {tokens}")


def test_each_state_is_recorded_with_the_sha256_of_its_file(tmp_path: Path) -> None:
    cache = make_cache(tmp_path)
    assert commit(cache, [1, 2, 3])
    state = state_file(cache, [1, 2, 3])
    record = json.loads(state.with_suffix(".json").read_text())
    assert record["sha256"] == hashlib.sha256(state.read_bytes()).hexdigest()


def test_a_corrupted_state_is_deleted_and_the_next_best_used(tmp_path: Path) -> None:
    cache = make_cache(tmp_path)
    assert commit(cache, [1, 2, 3])
    assert commit(cache, [1, 2, 3, 4, 5])
    bad = state_file(cache, [1, 2, 3, 4, 5])
    corrupt(bad, offset=16 + 4 * SHAPE.row_bytes)  # a V row, deep in the file
    lease = take(cache, [1, 2, 3, 4, 5, 6], always)
    assert lease.reused_tokens == 3
    assert rows_of(lease.path) == [[1, 2, 3]] * 4
    assert not bad.exists() and not bad.with_suffix(".json").exists()
    assert cache.saved_tokens() == [(1, 2, 3)]
    # All corrupted: nothing is reused, and the run file is a clean, empty one.
    corrupt(state_file(cache, [1, 2, 3]))
    lease = take(cache, [1, 2, 3, 4], always)
    assert lease.reused_tokens == 0 and lease.path.stat().st_size == 0
    assert len(cache) == 0 and not list(cache.directory.glob("[!.]*"))


def test_a_corrupted_state_is_not_cut_into_a_prefix(tmp_path: Path) -> None:
    cache = make_cache(tmp_path)
    assert commit(cache, [1, 2, 3, 4, 5])
    corrupt(state_file(cache, [1, 2, 3, 4, 5]))
    assert not cache.save_prefix([1, 2, 3])
    assert len(cache) == 0


def test_a_corrupted_state_is_caught_after_a_restart(tmp_path: Path) -> None:
    cache = make_cache(tmp_path)
    assert commit(cache, [1, 2, 3, 4])
    corrupt(state_file(cache, [1, 2, 3, 4]))
    reloaded = make_cache(tmp_path)
    assert take(reloaded, [1, 2, 3, 4, 5], always).reused_tokens == 0
    assert len(reloaded) == 0


def test_records_without_a_digest_are_dropped(tmp_path: Path) -> None:
    cache = make_cache(tmp_path)
    assert commit(cache, [1, 2, 3])
    index = state_file(cache, [1, 2, 3]).with_suffix(".json")
    record = json.loads(index.read_text())
    del record["sha256"]
    index.write_text(json.dumps(record))
    assert len(make_cache(tmp_path)) == 0
    assert not index.exists()


# ---- privacy: 0700 directories, 0600 files, whatever the umask --------------------------------


@pytest.mark.parametrize("umask", [0o000, 0o022, 0o277])
def test_directories_and_files_are_private_whatever_the_umask(tmp_path: Path, umask: int) -> None:
    old = os.umask(umask)
    try:
        cache = make_cache(tmp_path)
        assert commit(cache, [1, 2, 3, 4])
        lease = take(cache, [1, 2, 3, 4, 5], always)
        assert cache.save_prefix([1, 2])
    finally:
        os.umask(old)
    for folder in (tmp_path / "cache", cache.directory):
        assert stat.S_IMODE(folder.stat().st_mode) == 0o700, folder
    files = list(cache.directory.iterdir())
    assert len(files) == 5  # two states, two records, one run file
    for path in files:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    assert lease.path in files


def test_files_of_an_older_version_are_made_private(tmp_path: Path) -> None:
    cache = make_cache(tmp_path)
    assert commit(cache, [1, 2, 3])
    for path in cache.directory.iterdir():
        path.chmod(0o644)
    cache.directory.chmod(0o755)
    reloaded = make_cache(tmp_path)
    assert len(reloaded) == 1
    assert stat.S_IMODE(reloaded.directory.stat().st_mode) == 0o700
    assert {stat.S_IMODE(p.stat().st_mode) for p in reloaded.directory.iterdir()} == {0o600}


def test_default_directory_is_under_the_user_cache_directory() -> None:
    home = Path.home()
    assert default_state_dir({"XDG_CACHE_HOME": "/srv/c"}) == Path(
        "/srv/c/picolm-server/prompt-states"
    )
    fallback = home / ".cache" / "picolm-server" / "prompt-states"
    assert default_state_dir({}) == fallback
    assert default_state_dir({"XDG_CACHE_HOME": "relative/dir"}) == fallback
    assert default_state_dir({"XDG_CACHE_HOME": ""}) == fallback


needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to give a file away")


@pytest.mark.parametrize(
    ("setup", "words"),
    [
        (lambda p: os.chown(p, 65534, 65534), "owned by another user (uid 65534"),
        (lambda p: p.chmod(0o770), "writable by group or others (mode 0770)"),
        (lambda p: p.chmod(0o703), "writable by group or others (mode 0703)"),
        (lambda p: (p.rmdir(), p.write_text("")), "is not a directory"),
    ],
    ids=["foreign-owner", "group-writable", "world-writable", "a-file"],
)
def test_unsafe_directories_are_refused(
    tmp_path: Path, setup: Callable[[Path], object], words: str
) -> None:
    if "owned" in words and os.geteuid() != 0:
        pytest.skip("needs root to give a directory away")
    folder = tmp_path / "cache"
    folder.mkdir(mode=0o700)
    setup(folder)
    with pytest.raises(StateDirRefused, match=re.escape(words)):
        make_cache(tmp_path)


@needs_root
def test_a_model_folder_of_another_user_is_not_used(tmp_path: Path) -> None:
    cache = make_cache(tmp_path)
    os.chown(cache.directory, 65534, 65534)
    again = make_cache(tmp_path)
    assert again.fault is not None and "another user" in again.fault
    assert again.lease([1, 2, 3], always) is None


# ---- faults at run time: reuse off with one warning, and back -----------------------------


def test_a_vanished_directory_turns_reuse_off_once_and_it_comes_back(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cache = PromptCache(
        tmp_path / "cache", max_bytes=10**9, model_identity="m", shape=SHAPE, recheck_seconds=0
    )
    assert commit(cache, [1, 2, 3])
    shutil.rmtree(tmp_path / "cache")
    with caplog.at_level(logging.INFO, logger="picolm_server.prompt_cache"):
        for _ in range(3):
            assert cache.lease([1, 2, 3, 4], always) is None
        assert not cache.save_prefix([1, 2])
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and "prompt reuse is off" in warnings[0].getMessage()
    assert cache.fault is not None and str(tmp_path / "cache") in cache.fault
    (tmp_path / "cache").mkdir(mode=0o700)
    lease = take(cache, [1, 2, 3, 4], always)  # back, and the old entries are forgotten
    assert cache.fault is None and lease.reused_tokens == 0 and len(cache) == 0
    write_kv(lease.path, [1, 2, 3, 4])
    assert cache.commit(lease, [1, 2, 3, 4])
    assert take(cache, [1, 2, 3, 4, 5], always).reused_tokens == 4


def test_a_directory_replaced_by_a_symlink_is_not_followed(tmp_path: Path) -> None:
    cache = PromptCache(
        tmp_path / "cache", max_bytes=10**9, model_identity="m", shape=SHAPE, recheck_seconds=0
    )
    assert commit(cache, [1, 2, 3])
    (tmp_path / "cache").rename(tmp_path / "moved")
    (tmp_path / "elsewhere").mkdir(mode=0o700)
    (tmp_path / "cache").symlink_to(tmp_path / "elsewhere")
    assert cache.lease([1, 2, 3, 4], always) is None
    assert cache.fault is not None and "symbolic link" in cache.fault
    assert not list((tmp_path / "elsewhere").iterdir())
    (tmp_path / "cache").unlink()
    (tmp_path / "moved").rename(tmp_path / "cache")
    assert take(cache, [1, 2, 3, 4], always).reused_tokens == 3  # the same folder: kept


def test_a_failed_write_of_a_run_checks_the_directory_at_once(tmp_path: Path) -> None:
    cache = make_cache(tmp_path)
    lease = take(cache, [1, 2, 3])
    write_kv(lease.path, [1, 2])  # what a full disk leaves: PicoLM exits 0 regardless
    assert not cache.commit(lease, [1, 2, 3])
    assert cache.fault is None  # the directory itself is fine: reuse stays on
    assert take(cache, [1, 2, 3]).reused_tokens == 0


def test_the_directory_is_probed_at_most_every_recheck_interval(tmp_path: Path) -> None:
    now = [100.0]
    folder = StateDir(tmp_path / "base", "model", recheck_seconds=5.0, clock=lambda: now[0])
    folder.open()
    assert folder.usable() and folder.fault is None
    (tmp_path / "base" / "model").rmdir()
    (tmp_path / "base").rmdir()
    assert not folder.usable()
    (tmp_path / "base").mkdir(mode=0o700)
    now[0] += 4.9
    assert not folder.usable()  # not probed yet
    now[0] += 0.2
    generation = folder.generation
    assert folder.usable() and folder.generation == generation + 1
    assert (tmp_path / "base" / "model").is_dir()

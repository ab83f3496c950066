"""Saved prompt states whose bytes were overwritten (size and modification time kept),
over HTTP: such a state is caught by its digest, deleted and never used, the reply is the
one a run without reuse gives, and the wrong state does not come back after a restart.
On the stand-in (whose reply is a function of the state it loads) and, with
``PICOLM_BINARY``, on a real PicoLM build."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.picolm_setup import MODEL_ID, PicoLMFiles, PicoLMServer

SYSTEM = "You are a robot that answers questions about the sea and the hill."
QUESTIONS = ["hello robot, how is the sea?", "and the hill?", "and the little house?", "bye!"]
REAL_BINARY = os.environ.get("PICOLM_BINARY")


class Conversation:
    """One conversation asked of a server with reuse and of one without, in step."""

    def __init__(self, off: PicoLMServer) -> None:
        self.off = off
        self.messages = [{"role": "system", "content": SYSTEM}]

    def turn(self, server: PicoLMServer, question: str) -> int:
        """Ask the next question; assert the reply is the one without reuse; return how
        many prompt tokens were reused."""
        self.messages.append({"role": "user", "content": question})
        replies = []
        cached = 0
        for each in (server, self.off):
            response = each.client().chat.completions.create(
                model=MODEL_ID, messages=self.messages, temperature=0, max_tokens=6
            )
            replies.append(response.choices[0].message.content or "")
            assert response.usage is not None
            details = response.usage.prompt_tokens_details
            cached = cached or (details.cached_tokens or 0 if details else 0)
        assert replies[0] == replies[1]
        self.messages.append({"role": "assistant", "content": replies[0]})
        return cached


def states(folder: Path) -> list[Path]:
    return sorted(folder.rglob("*.kv"))


def corrupt_all(folder: Path) -> dict[Path, bytes]:
    """Overwrite the rows of every saved state with fp16 infinities, keeping its header,
    size and modification time (what made every reply "<unk><unk>..." on PicoLM; the
    stand-in reads other token ids from them)."""
    corrupted = {}
    for path in states(folder):
        stat = path.stat()
        data = path.read_bytes()
        data = data[:16] + b"\x00\x7c" * ((len(data) - 16) // 2)
        path.write_bytes(data)
        os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
        assert path.stat().st_size == stat.st_size
        corrupted[path] = data
    assert corrupted
    return corrupted


def still_there(corrupted: dict[Path, bytes]) -> list[Path]:
    return [p for p, data in corrupted.items() if p.exists() and p.read_bytes() == data]


def check_corruption_at_run_time(files: PicoLMFiles, off: PicoLMServer, workdir: Path) -> None:
    talk = Conversation(off)
    with files.serve(
        workdir, picolm={"prompt_cache": True, "cache_dir": str(workdir / "states")}
    ) as server:
        assert talk.turn(server, QUESTIONS[0]) == 0
        corrupted = corrupt_all(workdir / "states")
        # The only saved state is the best match, fails its digest, and is deleted.
        assert talk.turn(server, QUESTIONS[1]) == 0
        assert still_there(corrupted) == []
        # What this run saved is sound and used.
        assert talk.turn(server, QUESTIONS[2]) > 0
        assert "failed its check" in server.log()


def check_corruption_across_a_restart(files: PicoLMFiles, off: PicoLMServer, workdir: Path) -> None:
    talk = Conversation(off)
    config = {"prompt_cache": True, "cache_dir": str(workdir / "states")}
    with files.serve(workdir / "first", picolm=config) as server:
        assert talk.turn(server, QUESTIONS[0]) == 0
        assert talk.turn(server, QUESTIONS[1]) > 0
    corrupted = corrupt_all(workdir / "states")
    with files.serve(workdir / "second", picolm=config) as server:
        assert talk.turn(server, QUESTIONS[2]) == 0
        assert still_there(corrupted) == []
        assert talk.turn(server, QUESTIONS[3]) > 0


@pytest.fixture(scope="module")
def off_server(
    picolm_files: PicoLMFiles, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[PicoLMServer]:
    with picolm_files.serve(tmp_path_factory.mktemp("integrity-off")) as server:
        yield server


def test_a_state_corrupted_at_run_time_is_caught(
    picolm_files: PicoLMFiles, off_server: PicoLMServer, tmp_path: Path
) -> None:
    check_corruption_at_run_time(picolm_files, off_server, tmp_path)


def test_a_corrupted_state_does_not_survive_a_restart(
    picolm_files: PicoLMFiles, off_server: PicoLMServer, tmp_path: Path
) -> None:
    check_corruption_across_a_restart(picolm_files, off_server, tmp_path)


# ---- the real PicoLM ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def real_files(picolm_files: PicoLMFiles) -> PicoLMFiles:
    if not REAL_BINARY:
        pytest.skip("set PICOLM_BINARY to a PicoLM build")
    return PicoLMFiles(
        Path(REAL_BINARY), picolm_files.model, picolm_files.stop_model, picolm_files.root
    )


@pytest.fixture(scope="module")
def real_off_server(
    real_files: PicoLMFiles, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[PicoLMServer]:
    with real_files.serve(tmp_path_factory.mktemp("integrity-real-off")) as server:
        yield server


def test_real_picolm_a_state_corrupted_at_run_time_is_caught(
    real_files: PicoLMFiles, real_off_server: PicoLMServer, tmp_path: Path
) -> None:
    check_corruption_at_run_time(real_files, real_off_server, tmp_path)


def test_real_picolm_a_corrupted_state_does_not_survive_a_restart(
    real_files: PicoLMFiles, real_off_server: PicoLMServer, tmp_path: Path
) -> None:
    check_corruption_across_a_restart(real_files, real_off_server, tmp_path)

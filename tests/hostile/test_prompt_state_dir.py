"""The prompt-state directory under attack or failing at run time, over HTTP on the PicoLM
stand-in: made read-only, filled up, deleted, replaced by a file or by a symbolic link.
Every request is still served with the reply it would get without reuse, reuse turns off
with one warning and comes back by itself; a directory that is not private is refused at
startup with one line."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.support.fake_picolm import LOG_ENV
from tests.support.picolm_setup import MODEL_ID, PicoLMFiles, PicoLMServer
from tests.support.server import free_port, run_server

SYSTEM = "You are a robot that answers questions about the sea and the hill."
QUESTIONS = ["hello robot, how is the sea?", "and the hill?", "and the little house?"]
# Generous: how long the server may take to notice the directory is back (it looks every
# two seconds).
RECOVERY_DEADLINE = 60.0


def chat(server: PicoLMServer, messages: list[dict[str, str]]) -> tuple[str, int]:
    response = server.client().chat.completions.create(
        model=MODEL_ID, messages=messages, temperature=0, max_tokens=5
    )
    assert response.usage is not None and response.usage.prompt_tokens_details is not None
    cached = response.usage.prompt_tokens_details.cached_tokens or 0
    return response.choices[0].message.content or "", cached


def warnings_in(server: PicoLMServer) -> list[str]:
    return [line for line in server.log().splitlines() if " WARNING " in line]


@pytest.fixture(scope="module")
def off_server(
    picolm_files: PicoLMFiles, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[PicoLMServer]:
    with picolm_files.serve(tmp_path_factory.mktemp("state-dir-off")) as server:
        yield server


def mount_tmpfs(path: Path, options: str) -> None:
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)],
        check=True,
        capture_output=True,
    )


@contextlib.contextmanager
def tmpfs(path: Path, size: str = "1m") -> Iterator[Path]:
    """A small tmpfs of our own at ``path`` (root and CAP_SYS_ADMIN, else the test skips)."""
    path.mkdir(mode=0o700)
    try:
        mount_tmpfs(path, f"size={size},mode=0700")
    except (OSError, subprocess.CalledProcessError) as exc:
        pytest.skip(f"cannot mount a tmpfs here: {exc}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False, capture_output=True)


def fill(folder: Path) -> Path:
    """Fill the file system ``folder`` is on, to the last byte."""
    filler = folder / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        for size in (65536, 4096, 1):
            with contextlib.suppress(OSError):
                while True:
                    os.write(fd, b"\0" * size)
    finally:
        os.close(fd)
    with pytest.raises(OSError, match="No space left"):
        (folder / "one-more").write_bytes(b"\0")
    return filler


def remount(path: Path, mode: str) -> None:
    subprocess.run(["mount", "-o", f"remount,{mode}", str(path)], check=True)


# Each fault: (break the directory, mend it). ``base`` is the configured cache_dir.
Fault = tuple[Callable[[Path], None], Callable[[Path], None]]


def _replace_by_file(base: Path) -> None:
    shutil.rmtree(base)
    base.write_text("not a directory")


def _mend_file(base: Path) -> None:
    base.unlink()
    base.mkdir(mode=0o700)


def _replace_by_symlink(base: Path) -> None:
    base.rename(base.with_name("moved"))
    elsewhere = base.with_name("elsewhere")
    elsewhere.mkdir(mode=0o700)
    base.symlink_to(elsewhere)


def _mend_symlink(base: Path) -> None:
    base.unlink()
    base.with_name("moved").rename(base)


def _full(base: Path) -> None:
    fill(base)


def _mend_full(base: Path) -> None:
    (base / "filler").unlink()


FAULTS: dict[str, Fault] = {
    "read-only": (lambda base: remount(base, "ro"), lambda base: remount(base, "rw")),
    "full": (_full, _mend_full),
    "deleted": (shutil.rmtree, lambda base: base.mkdir(mode=0o700)),
    "replaced-by-a-file": (_replace_by_file, _mend_file),
    "replaced-by-a-symlink": (_replace_by_symlink, _mend_symlink),
}
ON_TMPFS = {"read-only", "full"}


@pytest.mark.parametrize("fault", list(FAULTS))
def test_directory_faults_at_run_time(
    fault: str, picolm_files: PicoLMFiles, off_server: PicoLMServer, tmp_path: Path
) -> None:
    base = tmp_path / "states"
    with contextlib.ExitStack() as stack:
        if fault in ON_TMPFS:
            stack.enter_context(tmpfs(base))
        server = stack.enter_context(
            picolm_files.serve(
                tmp_path / "run", picolm={"prompt_cache": True, "cache_dir": str(base)}
            )
        )
        messages = [{"role": "system", "content": SYSTEM}]

        def turn(question: str, *, keep: bool = True) -> int:
            """Ask on both servers: the same reply; how many tokens were reused."""
            asked = [*messages, {"role": "user", "content": question}]
            reply, cached = chat(server, asked)
            assert reply == chat(off_server, asked)[0]
            if keep:
                messages.extend([{"role": "user", "content": question},
                                 {"role": "assistant", "content": reply}])  # fmt: skip
            return cached

        assert turn(QUESTIONS[0]) == 0
        assert turn(QUESTIONS[1]) > 0
        assert warnings_in(server) == []

        breaking, mending = FAULTS[fault]
        breaking(base)
        for question in QUESTIONS[2:] * 3:
            assert turn(question, keep=False) == 0
            health = httpx.get(f"{server.base_url}/health", timeout=10)
            assert health.status_code == 200
            assert "prompt reuse off" in health.json()["engine"], health.json()
        assert len(warnings_in(server)) == 1, server.log()
        assert "prompt reuse is off" in warnings_in(server)[0]

        mending(base)
        deadline = time.monotonic() + RECOVERY_DEADLINE
        while turn(QUESTIONS[2], keep=False) == 0:  # the first turn back saves a state again
            assert time.monotonic() < deadline, server.log()
            time.sleep(0.5)
        assert "prompt reuse off" not in httpx.get(f"{server.base_url}/health").json()["engine"]
        assert len(warnings_in(server)) == 1, server.log()
        assert "Traceback" not in server.log()
        if fault == "replaced-by-a-symlink":
            assert not list(base.with_name("elsewhere").iterdir())  # nothing went there


# ---- refused at startup ----------------------------------------------------------------------


def start(
    files: PicoLMFiles, tmp_path: Path, picolm: dict[str, Any], env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    config = tmp_path / "config.yaml"
    server = {"host": "127.0.0.1", "port": free_port()}
    config.write_text(
        yaml.safe_dump(files.config(picolm={"prompt_cache": True, **picolm}, server=server))
    )
    return subprocess.run(
        [sys.executable, "-m", "picolm_server", "-config", str(config)],
        capture_output=True,
        text=True,
        timeout=30,
        env={**os.environ, **(env or {})},
    )


@pytest.mark.parametrize(
    ("setup", "words"),
    [
        (lambda p: os.chown(p, 65534, 65534), "owned by another user"),
        (lambda p: p.chmod(0o775), "writable by group or others"),
        (lambda p: p.chmod(0o777), "writable by group or others"),
    ],
    ids=["foreign-owner", "group-writable", "world-writable"],
)
def test_an_unsafe_directory_is_refused_at_startup_with_one_line(
    picolm_files: PicoLMFiles, tmp_path: Path, setup: Callable[[Path], object], words: str
) -> None:
    if "owned" in words and os.geteuid() != 0:
        pytest.skip("needs root to give a directory away")
    folder = tmp_path / "states"
    folder.mkdir(mode=0o700)
    setup(folder)
    result = start(picolm_files, tmp_path, {"cache_dir": str(folder)})
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    assert "picolm.cache_dir" in lines[0] and str(folder) in lines[0] and words in lines[0]
    assert list(folder.iterdir()) == []  # nothing was written there


def test_the_default_directory_is_private_and_under_xdg_cache_home(
    picolm_files: PicoLMFiles, tmp_path: Path
) -> None:
    cache_home = tmp_path / "xdg"
    config = picolm_files.config(picolm={"prompt_cache": True})
    env = {"XDG_CACHE_HOME": str(cache_home), LOG_ENV: str(tmp_path / "fake.jsonl")}
    with run_server(config, tmp_path / "run", env=env) as running:
        server = PicoLMServer(running, tmp_path / "fake.jsonl")
        messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "hi"}]
        chat(server, messages)
        assert chat(server, messages)[1] > 0
    base = cache_home / "picolm-server" / "prompt-states"
    folders = [base, *base.iterdir()]
    assert len(folders) == 2
    for folder in folders:
        assert folder.stat().st_mode & 0o777 == 0o700, folder
    files = list(folders[1].iterdir())
    assert files and {path.stat().st_mode & 0o777 for path in files} == {0o600}


VANISHING_WRAPPER = """#!/bin/sh
# While {flag} exists, the file given with --cache is gone before PicoLM starts.
if [ -e "{flag}" ]; then
    previous=""
    for arg in "$@"; do
        [ "$previous" = "--cache" ] && rm -f -- "$arg"
        previous="$arg"
    done
fi
exec "{binary}" "$@"
"""


def test_a_state_file_gone_before_picolm_reads_it_does_not_turn_reuse_off_for_good(
    picolm_files: PicoLMFiles, off_server: PicoLMServer, tmp_path: Path
) -> None:
    flag = tmp_path / "vanish"
    wrapper = tmp_path / "picolm"
    wrapper.write_text(VANISHING_WRAPPER.format(flag=flag, binary=picolm_files.binary))
    wrapper.chmod(0o755)
    files = PicoLMFiles(wrapper, picolm_files.model, picolm_files.stop_model, tmp_path)
    config = {"prompt_cache": True, "cache_dir": str(tmp_path / "states")}
    messages = [{"role": "system", "content": SYSTEM}]
    with files.serve(tmp_path / "run", picolm=config) as server:
        for question, vanish in zip(QUESTIONS, (False, True, False), strict=True):
            if vanish:
                flag.touch()
            else:
                flag.unlink(missing_ok=True)
            messages.append({"role": "user", "content": question})
            reply, cached = chat(server, messages)
            assert reply == chat(off_server, messages)[0]
            assert (cached > 0) == (question != QUESTIONS[0] and not vanish)
            messages.append({"role": "assistant", "content": reply})
        assert "prompt cache turned off" not in server.log()

"""``picolm-server pull`` and the download code under it, against a real nginx serving a
real GGUF file (byte ranges as nginx answers them): a whole download, a resume after a
cut connection (in a later command, and within one command), a file changed on the
server between two attempts, a checksum mismatch, a 404, a file that is not a GGUF, a
disk too small; and the names and addresses it accepts."""

from __future__ import annotations

import contextlib
import hashlib
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from picolm_server.models.download import (
    DiskSpaceError,
    DownloadError,
    checksum,
    download,
    file_name,
    resolve_url,
)
from picolm_server.models.pulled import was_pulled
from tests.support.nginx import RunningNginx, nginx_binary, run_file_server
from tests.support.server import free_port
from tests.support.tiny_llama_gguf import build_tiny_llama_gguf

needs_nginx = pytest.mark.skipif(
    nginx_binary() is None, reason="nginx is not installed (Debian: apt-get install nginx)"
)


def pull(*args: str) -> subprocess.CompletedProcess[str]:
    """The command as users run it."""
    return subprocess.run(
        [sys.executable, "-m", "picolm_server.cli", "pull", *args],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[RunningNginx, Path]]:
    root = tmp_path_factory.mktemp("served")
    build_tiny_llama_gguf(root / "tiny.gguf")
    (root / "notes.gguf").write_text("these are notes, not a model\n" * 100)
    if nginx_binary() is None:
        pytest.skip("nginx is not installed")
    with run_file_server(root, tmp_path_factory.mktemp("nginx")) as nginx:
        yield nginx, root


def access_statuses(nginx: RunningNginx, path: str, at_least: int = 0) -> list[int]:
    """The status of each request for ``path``, in order (nginx's combined log). nginx
    writes a request's line when it notices the end of its connection: wait for
    ``at_least`` lines."""
    deadline = time.monotonic() + 10
    while True:
        lines = (nginx.workdir / "access.log").read_text().splitlines()
        found = [int(line.split('"')[2].split()[0]) for line in lines if f"GET {path} " in line]
        if len(found) >= at_least or time.monotonic() > deadline:
            return found
        time.sleep(0.05)


class CuttingProxy:
    """A TCP proxy to ``upstream`` that closes each of the first ``cuts`` connections
    after ``after`` bytes of the answer: a connection cut in the middle of the file."""

    def __init__(self, upstream: int, after: int, cuts: int) -> None:
        self.upstream, self.after, self.cuts = upstream, after, cuts
        self.port = free_port()
        self._listener = socket.create_server(("127.0.0.1", self.port))
        self._connections = 0
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        with contextlib.suppress(OSError):
            while True:
                client, _ = self._listener.accept()
                self._connections += 1
                cut = self._connections <= self.cuts
                threading.Thread(target=self._serve, args=(client, cut), daemon=True).start()

    def _serve(self, client: socket.socket, cut: bool) -> None:
        upstream = socket.create_connection(("127.0.0.1", self.upstream))

        def forward_requests() -> None:
            with contextlib.suppress(OSError):
                while data := client.recv(65536):
                    upstream.sendall(data)

        threading.Thread(target=forward_requests, daemon=True).start()
        sent = 0
        with contextlib.suppress(OSError):
            while data := upstream.recv(65536):
                if cut and sent + len(data) >= self.after:
                    client.sendall(data[: self.after - sent])
                    break
                client.sendall(data)
                sent += len(data)
        for sock in (client, upstream):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()

    def close(self) -> None:
        self._listener.close()


@contextlib.contextmanager
def cutting_proxy(nginx: RunningNginx, after: int, cuts: int) -> Iterator[CuttingProxy]:
    proxy = CuttingProxy(nginx.port, after, cuts)
    try:
        yield proxy
    finally:
        proxy.close()


# ---- names and addresses -----------------------------------------------------------------


def test_hf_addresses_map_to_the_hugging_face_download_url() -> None:
    assert resolve_url("hf://TheBloke/TinyLlama-1.1B-Chat-v1.0-GGUF/tinyllama.Q4_K_M.gguf") == (
        "https://huggingface.co/TheBloke/TinyLlama-1.1B-Chat-v1.0-GGUF/resolve/main/"
        "tinyllama.Q4_K_M.gguf"
    )
    assert resolve_url("hf://owner/repo/sub/dir/m.gguf") == (
        "https://huggingface.co/owner/repo/resolve/main/sub/dir/m.gguf"
    )
    for bad in ("hf://owner/repo", "hf://owner//m.gguf", "ftp://host/m.gguf", "/tmp/m.gguf"):
        with pytest.raises(DownloadError):
            resolve_url(bad)


def test_file_names_come_from_the_id_or_the_url_and_stay_in_the_directory() -> None:
    assert file_name("http://h/a/TinyLlama.Q4_0.gguf") == "TinyLlama.Q4_0.gguf"
    assert file_name("http://h/a/my%20model.gguf") == "my model.gguf"
    assert file_name("http://h/download?id=3", "tinyllama") == "tinyllama.gguf"
    assert file_name("http://h/x.gguf", "model.gguf") == "model.gguf"
    for bad in ("../etc/passwd", ".hidden", "a/b", ""):
        with pytest.raises(DownloadError):
            file_name("http://h/x.gguf", bad)
    with pytest.raises(DownloadError, match="--name"):
        file_name("http://h/")


def test_checksums_are_64_hex_digits() -> None:
    assert checksum("AB" * 32) == "ab" * 32
    assert checksum(None) is None and checksum("") is None
    with pytest.raises(DownloadError):
        checksum("abc")


# ---- against nginx -----------------------------------------------------------------------


@needs_nginx
def test_pull_downloads_verifies_and_names_the_file(
    served: tuple[RunningNginx, Path], tmp_path: Path
) -> None:
    nginx, root = served
    expected = sha256(root / "tiny.gguf")
    done = pull(
        f"{nginx.base_url}/tiny.gguf",
        "--models-dir",
        str(tmp_path / "models"),
        "--name",
        "tiny-model",
        "--sha256",
        expected.upper(),
    )
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    path = tmp_path / "models" / "tiny-model.gguf"
    assert sha256(path) == expected
    assert f"sha256 {expected}" in done.stdout
    # The file, and the mark that it was pulled (what /api/delete may remove).
    assert sorted(p.name for p in path.parent.iterdir()) == [
        ".tiny-model.gguf.pulled",
        "tiny-model.gguf",
    ]
    assert was_pulled(path)
    # Again: there already, nothing downloaded.
    requests = len(access_statuses(nginx, "/tiny.gguf"))
    again = pull(
        f"{nginx.base_url}/tiny.gguf",
        "--models-dir",
        str(path.parent),
        "--name",
        "tiny-model",
        "--sha256",
        expected,
    )
    assert again.returncode == 0 and "there already" in again.stdout
    assert len(access_statuses(nginx, "/tiny.gguf")) == requests


@needs_nginx
def test_a_cut_download_is_resumed_by_the_next_pull(
    served: tuple[RunningNginx, Path], tmp_path: Path
) -> None:
    nginx, root = served
    size = (root / "tiny.gguf").stat().st_size
    models = tmp_path / "models"
    before = len(access_statuses(nginx, "/tiny.gguf"))
    with cutting_proxy(nginx, after=size // 3, cuts=1) as proxy:
        url = f"http://127.0.0.1:{proxy.port}/tiny.gguf"
        with pytest.raises(DownloadError, match=r"interrupted.*run the same command again"):
            download(url, models, retries=0)
        partial = models / ".tiny.gguf.part"
        assert 0 < partial.stat().st_size < size
        assert not (models / "tiny.gguf").exists()
        # The next command (its connection is not cut) carries on where it stopped.
        done = pull(url, "--models-dir", str(models), "--sha256", sha256(root / "tiny.gguf"))
    assert done.returncode == 0, done.stderr
    assert "resumed at" in done.stdout
    assert access_statuses(nginx, "/tiny.gguf", before + 2)[before:] == [200, 206]
    assert sha256(models / "tiny.gguf") == sha256(root / "tiny.gguf")
    assert sorted(p.name for p in models.iterdir()) == [".tiny.gguf.pulled", "tiny.gguf"]


@needs_nginx
def test_one_pull_resumes_after_its_connection_is_cut(
    served: tuple[RunningNginx, Path], tmp_path: Path
) -> None:
    nginx, root = served
    size = (root / "tiny.gguf").stat().st_size
    before = len(access_statuses(nginx, "/tiny.gguf"))
    with cutting_proxy(nginx, after=size // 2, cuts=2) as proxy:
        result = download(
            f"http://127.0.0.1:{proxy.port}/tiny.gguf",
            tmp_path,
            retries=3,
            retry_wait=lambda attempt: 0.0,
        )
    assert result.resumed_from == 0 and result.sha256 == sha256(root / "tiny.gguf")
    # The whole file, then two answers from where the cut connections stopped.
    assert access_statuses(nginx, "/tiny.gguf", before + 3)[before:] == [200, 206, 206]
    assert sorted(p.name for p in tmp_path.iterdir()) == [".tiny.gguf.pulled", "tiny.gguf"]


@needs_nginx
def test_a_file_changed_on_the_server_is_downloaded_again_whole(
    served: tuple[RunningNginx, Path], tmp_path: Path
) -> None:
    nginx, root = served
    build_tiny_llama_gguf(root / "changing.gguf")
    size = (root / "changing.gguf").stat().st_size
    with cutting_proxy(nginx, after=size // 2, cuts=1) as proxy:
        url = f"http://127.0.0.1:{proxy.port}/changing.gguf"
        with pytest.raises(DownloadError, match="interrupted"):
            download(url, tmp_path, retries=0)
        # A new version, of another size and date: its bytes must not be joined to the
        # old version's.
        build_tiny_llama_gguf(root / "changing.gguf", context_length=256, stop_at_once=True)
        os.utime(root / "changing.gguf", (1e9, 1e9))
        download(url, tmp_path, retries=0)
    assert sha256(tmp_path / "changing.gguf") == sha256(root / "changing.gguf")
    # If-Range did not match: nginx answered with the whole file.
    assert access_statuses(nginx, "/changing.gguf")[-1] == 200


@needs_nginx
def test_a_checksum_mismatch_leaves_no_file(
    served: tuple[RunningNginx, Path], tmp_path: Path
) -> None:
    nginx, _ = served
    done = pull(f"{nginx.base_url}/tiny.gguf", "--models-dir", str(tmp_path), "--sha256", "0" * 64)
    assert done.returncode == 1
    assert done.stderr.count("\n") == 1 and "checksum mismatch" in done.stderr
    assert list(tmp_path.iterdir()) == []


@needs_nginx
def test_a_missing_file_is_a_clear_404(served: tuple[RunningNginx, Path], tmp_path: Path) -> None:
    nginx, _ = served
    done = pull(f"{nginx.base_url}/nothing-here.gguf", "--models-dir", str(tmp_path))
    assert done.returncode == 1
    assert done.stderr == (
        f"picolm-server pull: HTTP 404 Not Found for {nginx.base_url}/nothing-here.gguf\n"
    )
    assert list(tmp_path.iterdir()) == []


@needs_nginx
def test_a_file_that_is_not_a_gguf_is_refused(
    served: tuple[RunningNginx, Path], tmp_path: Path
) -> None:
    nginx, _ = served
    done = pull(f"{nginx.base_url}/notes.gguf", "--models-dir", str(tmp_path))
    assert done.returncode == 1
    assert done.stderr.count("\n") == 1 and "is not a GGUF file" in done.stderr
    assert list(tmp_path.iterdir()) == []


@needs_nginx
def test_a_disk_too_small_is_refused_before_downloading(
    served: tuple[RunningNginx, Path], tmp_path: Path
) -> None:
    small = tmp_path / "small"
    small.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(small)],
        capture_output=True,
        check=False,
    )
    if mounted.returncode != 0:
        pytest.skip("cannot mount a small tmpfs here (needs root)")
    try:
        nginx, _ = served
        done = pull(f"{nginx.base_url}/tiny.gguf", "--models-dir", str(small))
        assert done.returncode == 1
        assert "not enough disk space" in done.stderr and done.stderr.count("\n") == 1
        assert list(small.iterdir()) == []
    finally:
        subprocess.run(["umount", str(small)], check=False)


def test_an_unreachable_server_is_one_clear_line(tmp_path: Path) -> None:
    done = pull(f"http://127.0.0.1:{free_port()}/m.gguf", "--models-dir", str(tmp_path))
    assert done.returncode == 1
    assert done.stderr.startswith("picolm-server pull: cannot connect to 127.0.0.1:")
    assert done.stderr.count("\n") == 1


# ---- the disk space a download leaves free -----------------------------------------------


@needs_nginx
def test_a_download_that_would_not_leave_the_reserve_free_does_not_start(
    served: tuple[RunningNginx, Path], tmp_path: Path
) -> None:
    nginx, root = served
    size = (root / "tiny.gguf").stat().st_size
    free = size + 1000  # room for the file, not for the file and the reserve
    with pytest.raises(DiskSpaceError, match="must stay free"):
        download(
            f"{nginx.base_url}/tiny.gguf",
            tmp_path,
            reserve_bytes=2000,
            free_space=lambda directory: free,
        )
    assert list(tmp_path.iterdir()) == []
    # With the reserve left: downloaded.
    done = download(
        f"{nginx.base_url}/tiny.gguf", tmp_path, reserve_bytes=500, free_space=lambda d: free
    )
    assert done.sha256 == sha256(root / "tiny.gguf")


@needs_nginx
def test_a_download_stops_when_the_free_space_falls_to_the_reserve(
    served: tuple[RunningNginx, Path], tmp_path: Path
) -> None:
    """Another writer fills the disk while the file arrives: the download stops at the
    reserve and keeps what it has for a resume."""
    nginx, root = served
    measures = iter([10**12, 10**6])  # before the transfer; at its first chunk

    with pytest.raises(DiskSpaceError, match=r"stopped.*pull again to resume"):
        download(
            f"{nginx.base_url}/tiny.gguf",
            tmp_path,
            reserve_bytes=2 * 10**6,
            free_space=lambda directory: next(measures),
        )
    assert not (tmp_path / "tiny.gguf").exists()
    assert (tmp_path / ".tiny.gguf.part").exists()
    # Space freed: the same download resumes and completes.
    done = download(f"{nginx.base_url}/tiny.gguf", tmp_path, reserve_bytes=2 * 10**6)
    assert done.sha256 == sha256(root / "tiny.gguf")

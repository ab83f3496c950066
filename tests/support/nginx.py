"""Run nginx, as deploy/nginx/nginx.conf configures it in front of local servers, or as
a plain file server (model downloads): a non-daemon child on a loopback port, with its
pid, logs and temporary files in a directory of its own.

The shipped configuration is used as it is, with only what must differ here replaced:
the upstream addresses, the listen address, the module and script paths; and two
response headers added so that tests can see which server answered and which key nginx
hashed.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx

from tests.support.server import free_port

REPO = Path(__file__).resolve().parents[2]
NGINX_DIR = REPO / "deploy" / "nginx"
SHIPPED_CONFIG = NGINX_DIR / "nginx.conf"
SESSION_SCRIPT = NGINX_DIR / "picolm-session.js"

# Response headers the test configuration adds.
UPSTREAM_HEADER = "X-Test-Upstream"
BALANCER_KEY_HEADER = "X-Test-Balancer-Key"

_SERVER_LINE = "        server picolm-server:8080 max_fails=1 fail_timeout=10s;\n"
_LISTEN_LINE = "        listen 8080;\n"


def nginx_binary() -> str | None:
    return shutil.which("nginx") or next(
        (path for path in ("/usr/sbin/nginx", "/usr/local/sbin/nginx") if Path(path).exists()),
        None,
    )


def modules_path(binary: str) -> Path:
    """Where this nginx build keeps its dynamic modules (``nginx -V`` says)."""
    built = subprocess.run([binary, "-V"], capture_output=True, text=True, check=True).stderr
    match = re.search(r"--modules-path=(\S+)", built)
    return (
        Path(match.group(1)) if match else Path(binary).resolve().parents[1] / "lib/nginx/modules"
    )


def unavailable_reason() -> str | None:
    """Why nginx tests cannot run here, or None when they can."""
    binary = nginx_binary()
    if binary is None:
        return "nginx is not installed (Debian: apt-get install nginx libnginx-mod-http-js)"
    if not (modules_path(binary) / "ngx_http_js_module.so").exists():
        return "nginx's njs module is not installed (Debian: apt-get install libnginx-mod-http-js)"
    return None


def _replace(text: str, old: str, new: str, count: int) -> str:
    found = text.count(old)
    if found != count:
        raise AssertionError(f"{SHIPPED_CONFIG}: expected {count} x {old!r}, found {found}")
    return text.replace(old, new)


def balancer_config(
    shipped: str, upstreams: list[str], port: int, workdir: Path, modules: Path
) -> str:
    """The shipped configuration, for servers at ``upstreams`` and nginx on ``port``."""
    text = _replace(shipped, "load_module modules/", f"load_module {modules}/", 1)
    text = _replace(text, "/etc/nginx/picolm-session.js", str(SESSION_SCRIPT), 1)
    servers = "".join(_SERVER_LINE.replace("picolm-server:8080", a) for a in upstreams)
    text = _replace(text, _SERVER_LINE, servers, 2)
    text = _replace(
        text,
        _LISTEN_LINE,
        f"        listen 127.0.0.1:{port};\n"
        f"        add_header {UPSTREAM_HEADER} $upstream_addr always;\n"
        f"        add_header {BALANCER_KEY_HEADER} $picolm_session always;\n",
        1,
    )
    own_paths = "".join(
        f"    {directive} {workdir / name};\n"
        for directive, name in (
            ("access_log", "access.log"),
            ("client_body_temp_path", "body"),
            ("proxy_temp_path", "proxy"),
            ("fastcgi_temp_path", "fastcgi"),
            ("uwsgi_temp_path", "uwsgi"),
            ("scgi_temp_path", "scgi"),
        )
    )
    return _replace(text, "http {\n", "http {\n" + own_paths, 1)


@dataclass
class RunningNginx:
    process: subprocess.Popen[bytes]
    port: int
    workdir: Path

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def error_log(self) -> str:
        path = self.workdir / "error.log"
        return path.read_text(errors="replace") if path.exists() else ""


@contextlib.contextmanager
def run_nginx(upstreams: list[str], workdir: Path) -> Iterator[RunningNginx]:
    binary = nginx_binary()
    assert binary is not None, unavailable_reason()
    workdir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    config = balancer_config(
        SHIPPED_CONFIG.read_text(), upstreams, port, workdir, modules_path(binary)
    )
    with _running(binary, config, port, workdir) as running:
        yield running


def file_server_config(root: Path, port: int, workdir: Path) -> str:
    """nginx serving the files under ``root`` as they are (byte ranges included, as
    nginx answers them for static files), with its access log in ``workdir``."""
    # Workers run as an unprivileged user when nginx starts as root; pytest's temporary
    # directories are private to root, so the workers stay root here.
    user = "user root root;\n" if os.geteuid() == 0 else ""
    temp = "".join(
        f"    {kind}_temp_path {workdir / kind};\n"
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    return (
        f"{user}worker_processes 1;\nevents {{ worker_connections 64; }}\nhttp {{\n"
        f"    access_log {workdir / 'access.log'};\n{temp}"
        "    default_type application/octet-stream;\n"
        f"    server {{\n        listen 127.0.0.1:{port};\n        root {root};\n    }}\n}}\n"
    )


@contextlib.contextmanager
def run_file_server(root: Path, workdir: Path) -> Iterator[RunningNginx]:
    """nginx serving ``root`` on a loopback port (see :func:`file_server_config`)."""
    binary = nginx_binary()
    assert binary is not None, "nginx is not installed (Debian: apt-get install nginx)"
    workdir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    with _running(binary, file_server_config(root, port, workdir), port, workdir) as running:
        yield running


@contextlib.contextmanager
def _running(binary: str, config_text: str, port: int, workdir: Path) -> Iterator[RunningNginx]:
    config = workdir / "nginx.conf"
    config.write_text(config_text)
    directives = f"daemon off; pid {workdir / 'nginx.pid'}; error_log {workdir / 'error.log'};"
    process = subprocess.Popen(
        [binary, "-p", str(workdir), "-c", str(config), "-g", directives],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    running = RunningNginx(process, port, workdir)
    try:
        _wait_until_listening(running)
        yield running
    finally:
        process.terminate()  # SIGTERM: nginx's fast shutdown, workers included
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _wait_until_listening(nginx: RunningNginx, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if nginx.process.poll() is not None:
            raise RuntimeError(
                f"nginx exited with {nginx.process.returncode}:\n{nginx.error_log()}"
            )
        try:
            httpx.get(f"{nginx.base_url}/health", timeout=2.0)
            return
        except httpx.TransportError:
            time.sleep(0.05)
    raise RuntimeError(f"nginx did not start within {timeout} s:\n{nginx.error_log()}")

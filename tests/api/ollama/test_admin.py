"""Ollama's model administration in this process: who may call it (each mode of
``server.model_admin``), what a pull may fetch (``pull_allow``, private addresses
behind a redirect, the disk reserve), pulls from a real nginx with their progress
lines, copy (then a chat by the new name) and delete (a pulled file goes, any other
stays; in use: 409; the default model: 400)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import openai
import pytest

from picolm_server.models.pulled import marker_of, was_pulled
from tests.api.ollama.admin_setup import MAIN, SECOND, AdminApp, admin_app, redirecting_to
from tests.shelf.conftest import write_model
from tests.support.nginx import RunningNginx, nginx_binary, run_file_server
from tests.support.tiny_llama_gguf import build_tiny_llama_gguf

pytestmark = pytest.mark.anyio

needs_nginx = pytest.mark.skipif(nginx_binary() is None, reason="nginx is not installed")
ELSEWHERE = "203.0.113.7"  # a client on another machine (TEST-NET-3)
KEY = "sk-admin-test"
BEFORE = [MAIN, SECOND]  # the shelf before any change


@pytest.fixture(scope="module")
def nginx(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningNginx]:
    """nginx serving a real GGUF, ``/tiny.gguf``."""
    root = tmp_path_factory.mktemp("served")
    build_tiny_llama_gguf(root / "tiny.gguf")
    if nginx_binary() is None:
        pytest.skip("nginx is not installed")
    with run_file_server(root, tmp_path_factory.mktemp("nginx")) as running:
        running.workdir.joinpath("root").symlink_to(root)
        yield running


def served_file(nginx: RunningNginx) -> Path:
    return nginx.workdir / "root" / "tiny.gguf"


def requests_for(nginx: RunningNginx, path: str) -> int:
    log = nginx.workdir / "access.log"
    return sum(f"GET {path} " in line for line in log.read_text().splitlines())


@pytest.fixture
async def admin(tmp_path: Path) -> AsyncIterator[AdminApp]:
    async with admin_app(tmp_path / "models") as app:
        yield app


async def pull_lines(app: AdminApp, body: dict[str, Any]) -> tuple[int, list[dict[str, Any]]]:
    answer = await app.http().post("/api/pull", json=body)
    return answer.status_code, [json.loads(line) for line in answer.text.splitlines()]


# ---- who may ------------------------------------------------------------------------------

# (model_admin, api_key, client address, key presented, status of a copy)
ACCESS = [
    ("loopback", "", "127.0.0.1", None, 200),
    ("loopback", "", "::1", None, 200),
    ("loopback", "", "127.8.9.10", None, 200),
    ("loopback", "", "::ffff:127.0.0.1", None, 200),
    ("loopback", "", ELSEWHERE, None, 403),
    ("loopback", "", "192.168.1.20", None, 403),  # the local network is not this machine
    ("loopback", KEY, ELSEWHERE, KEY, 200),  # the key opens it from anywhere
    ("loopback", KEY, ELSEWHERE, "wrong", 401),  # the key check of every path
    ("key", KEY, "127.0.0.1", KEY, 200),
    ("key", KEY, ELSEWHERE, KEY, 200),
    ("key", KEY, "127.0.0.1", None, 401),
    ("any", "", ELSEWHERE, None, 200),
    ("off", "", "127.0.0.1", None, 403),
    ("off", KEY, "127.0.0.1", KEY, 403),
]


@pytest.mark.parametrize(("mode", "api_key", "client", "presented", "status"), ACCESS)
async def test_model_admin_decides_who_may_change_the_shelf(
    tmp_path: Path, mode: str, api_key: str, client: str, presented: str | None, status: int
) -> None:
    async with admin_app(tmp_path / "models", model_admin=mode, api_key=api_key) as app:
        http = app.http(client, key=presented or "")
        copied = await http.post("/api/copy", json={"source": MAIN, "destination": "copy"})
        assert copied.status_code == status, copied.text
        assert (app.shelf.catalog.find("copy") is not None) == (status == 200)
        if status == 403:
            assert "server.model_admin" in copied.text
            # Every administration endpoint, before its body is even read.
            for method, path in (("POST", "/api/pull"), ("DELETE", "/api/delete")):
                refused = await http.request(method, path, content=b"not json")
                assert refused.status_code == 403
            assert app.ids() == BEFORE


async def test_model_admin_key_without_a_key_stops_the_server_at_start(tmp_path: Path) -> None:
    from picolm_server.config.settings import ConfigError, load_settings

    config = tmp_path / "config.yaml"
    config.write_text("server:\n  model_admin: key\n")
    with pytest.raises(ConfigError, match=r"server.model_admin: 'key' needs server.api_key"):
        load_settings(config)


# ---- what a pull may fetch -------------------------------------------------------------


async def test_a_url_under_no_allowed_prefix_is_refused(admin: AdminApp) -> None:
    # The default allows Hugging Face only; nothing is fetched for a refusal.
    for url in (
        "https://example.org/tiny.gguf",
        "http://huggingface.co/o/r/resolve/main/m.gguf",  # not https
        "https://huggingface.co.example.org/m.gguf",
        "https://huggingface.co@127.0.0.1/m.gguf",
        "https://huggingface.co/o/../../m.gguf",
    ):
        answer = await admin.http().post("/api/pull", json={"model": url})
        assert answer.status_code == 403, (url, answer.text)
    assert list(admin.models_dir.iterdir()) == []


async def test_names_that_are_no_url_are_a_clear_400(admin: AdminApp) -> None:
    for body in ({"model": "llama3.2"}, {"model": "hf://owner/repo"}, {}, {"model": ""}):
        answer = await admin.http().post("/api/pull", json=body)
        assert answer.status_code == 400, (body, answer.text)


async def test_a_pull_whose_name_is_taken_is_refused_before_downloading(
    tmp_path: Path,
) -> None:
    # The URL's file would be the model "main", which is another file.
    async with admin_app(tmp_path / "models", pull_allow=["http://127.0.0.1:9/"]) as app:
        answer = await app.http().post("/api/pull", json={"model": "http://127.0.0.1:9/main.gguf"})
        assert answer.status_code == 400
        assert "already the name of the model 'main'" in answer.text


@needs_nginx
async def test_a_redirect_to_a_private_address_is_refused_unless_listed(
    tmp_path: Path, nginx: RunningNginx
) -> None:
    """The first URL is allowed; it redirects to a loopback host no prefix lists."""
    target = f"http://localhost:{nginx.port}/tiny.gguf"
    before = requests_for(nginx, "/tiny.gguf")
    with redirecting_to(target) as redirector:
        url = f"{redirector}/models/tiny.gguf"
        async with admin_app(tmp_path / "a", pull_allow=[f"{redirector}/models/"]) as app:
            status, lines = await pull_lines(app, {"model": url})
            assert status == 200 and lines[0] == {"status": "pulling manifest"}
            assert "private or loopback address" in lines[-1]["error"]
            answer = await app.http().post("/api/pull", json={"model": url, "stream": False})
            assert answer.status_code == 403 and "localhost" in answer.text
            assert app.ids() == BEFORE
        assert requests_for(nginx, "/tiny.gguf") == before  # never asked
        # Listed, the redirect is followed.
        allow = [f"{redirector}/models/", f"http://localhost:{nginx.port}/"]
        async with admin_app(tmp_path / "b", pull_allow=allow) as app:
            status, lines = await pull_lines(app, {"model": url})
            assert lines[-1] == {"status": "success"}, lines
            assert app.ids() == [*BEFORE, "tiny"]


@needs_nginx
async def test_a_pull_that_would_not_leave_the_reserve_free_is_refused(
    tmp_path: Path, nginx: RunningNginx
) -> None:
    url = f"{nginx.base_url}/tiny.gguf"
    allow = [f"{nginx.base_url}/"]
    async with admin_app(tmp_path / "models", pull_allow=allow, pull_reserve=10**18) as app:
        answer = await app.http().post("/api/pull", json={"model": url, "stream": False})
        assert answer.status_code == 507
        assert "must stay free" in answer.text
        status, lines = await pull_lines(app, {"model": url})
        assert status == 200 and "must stay free" in lines[-1]["error"]
        assert list(app.models_dir.iterdir()) == [] and app.ids() == BEFORE


# ---- pulls --------------------------------------------------------------------------------


@needs_nginx
async def test_a_pull_streams_progress_and_puts_the_model_on_the_shelf(
    tmp_path: Path, nginx: RunningNginx
) -> None:
    file = served_file(nginx)
    size = file.stat().st_size
    digest = hashlib.sha256(file.read_bytes()).hexdigest()
    async with admin_app(tmp_path / "models", pull_allow=[f"{nginx.base_url}/"]) as app:
        status, lines = await pull_lines(app, {"model": f"{nginx.base_url}/tiny.gguf"})
        assert status == 200
        assert lines[0] == {"status": "pulling manifest"}
        transfer = [line for line in lines if line["status"] == "pulling tiny.gguf"]
        assert transfer and all(line["total"] == size for line in transfer)
        completed = [line["completed"] for line in transfer]
        assert completed == sorted(completed) and completed[-1] == size
        assert lines[-2:] == [
            {"status": "verifying sha256 digest", "digest": f"sha256:{digest}"},
            {"status": "success"},
        ]
        assert app.ids() == [*BEFORE, "tiny"]
        pulled = app.models_dir / "tiny.gguf"
        assert was_pulled(pulled)
        listed = (await app.http().get("/v1/models")).json()["data"]
        assert [model["id"] for model in listed] == [*BEFORE, "tiny"]
        # Again, and as tiny:latest would be asked: there already, one answer.
        again = await app.http().post(
            "/api/pull", json={"model": f"{nginx.base_url}/tiny.gguf", "stream": False}
        )
        assert again.status_code == 200 and again.json() == {"status": "success"}
        assert app.ids() == [*BEFORE, "tiny"]


@needs_nginx
async def test_a_missing_file_is_an_error_line_and_a_502(
    tmp_path: Path, nginx: RunningNginx
) -> None:
    url = f"{nginx.base_url}/absent.gguf"
    async with admin_app(tmp_path / "models", pull_allow=[f"{nginx.base_url}/"]) as app:
        status, lines = await pull_lines(app, {"model": url})
        assert status == 200 and "HTTP 404" in lines[-1]["error"]
        answer = await app.http().post("/api/pull", json={"model": url, "stream": False})
        assert answer.status_code == 502 and "HTTP 404" in answer.text
        assert list(app.models_dir.iterdir()) == []


# ---- copy and delete ----------------------------------------------------------------------


async def test_copy_gives_a_new_name_that_chats(admin: AdminApp) -> None:
    http = admin.http()
    copied = await http.post("/api/copy", json={"source": MAIN, "destination": "helper:latest"})
    assert copied.status_code == 200 and copied.content == b""
    reply = await admin.openai().chat.completions.create(
        model="helper", messages=[{"role": "user", "content": "[[reply:by the new name]]"}]
    )
    assert reply.choices[0].message.content == "by the new name"
    # Both forms of a name, as source; a name taken, an unknown source.
    again = await http.post("/api/copy", json={"source": "helper:latest", "destination": "h2"})
    assert again.status_code == 200
    taken = await http.post("/api/copy", json={"source": MAIN, "destination": "helper"})
    assert taken.status_code == 400 and "already the name" in taken.text
    unknown = await http.post("/api/copy", json={"source": "nope", "destination": "x"})
    assert unknown.status_code == 404
    for bad in ("", " padded", "new\nline", "x" * 300):
        refused = await http.post("/api/copy", json={"source": MAIN, "destination": bad})
        assert refused.status_code == 400, bad
    assert admin.shelf.catalog.find(MAIN) is not None
    assert admin.shelf.catalog.default.aliases == ("helper", "h2")


async def test_delete_of_an_alias_keeps_the_model(admin: AdminApp) -> None:
    http = admin.http()
    await http.post("/api/copy", json={"source": MAIN, "destination": "helper"})
    deleted = await http.request("DELETE", "/api/delete", json={"model": "helper:latest"})
    assert deleted.status_code == 200
    assert admin.shelf.catalog.find("helper") is None and admin.ids() == BEFORE
    gone = await http.request("DELETE", "/api/delete", json={"model": "helper"})
    assert gone.status_code == 404


async def test_the_default_model_is_not_deleted(admin: AdminApp) -> None:
    answer = await admin.http().request("DELETE", "/api/delete", json={"model": MAIN})
    assert answer.status_code == 400 and "default model" in answer.text
    assert admin.ids() == BEFORE


async def test_delete_keeps_a_file_the_shelf_did_not_pull(admin: AdminApp) -> None:
    mine = write_model(admin.models_dir / "mine.gguf")
    await admin.shelf.add_file(mine)  # as a start finds it in the directory
    deleted = await admin.http().request("DELETE", "/api/delete", json={"model": "mine"})
    assert deleted.status_code == 200
    assert admin.ids() == BEFORE
    assert mine.exists()  # only the shelf entry went


async def test_delete_removes_a_pulled_file_and_then_the_name_is_unknown(
    admin: AdminApp,
) -> None:
    from picolm_server.models.pulled import mark_pulled

    pulled = write_model(admin.models_dir / "pulled.gguf")
    mark_pulled(pulled, "https://huggingface.co/o/r/resolve/main/pulled.gguf")
    await admin.shelf.add_file(pulled)
    http = admin.http()
    await http.post("/api/copy", json={"source": "pulled", "destination": "p"})
    deleted = await http.request("DELETE", "/api/delete", json={"model": "pulled"})
    assert deleted.status_code == 200
    assert list(admin.models_dir.iterdir()) == []  # the file and its mark
    assert not marker_of(pulled).exists()
    for name in ("pulled", "p"):
        again = await http.request("DELETE", "/api/delete", json={"model": name})
        assert again.status_code == 404
        with pytest.raises(openai.NotFoundError):
            await admin.openai().chat.completions.create(
                model=name, messages=[{"role": "user", "content": "hello"}]
            )


async def test_a_model_in_use_is_not_deleted_until_its_requests_end(admin: AdminApp) -> None:
    http = admin.http()
    async with admin.shelf.lease(SECOND):  # as a generation holds it
        busy = await http.request("DELETE", "/api/delete", json={"model": SECOND})
        assert busy.status_code == 409 and "in use by 1 request" in busy.text
        assert admin.ids() == BEFORE and admin.engines[SECOND].unloaded == 0
    deleted = await http.request("DELETE", "/api/delete", json={"model": SECOND})
    assert deleted.status_code == 200
    assert admin.ids() == [MAIN]
    assert admin.engines[SECOND].unloaded == 1  # unloaded on the way out

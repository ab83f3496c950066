"""What ``/api/pull`` may fetch: URL prefixes compared by scheme, host, port and path,
and the addresses a host resolves to (a resolver given here: no network)."""

from __future__ import annotations

import pytest

from picolm_server.api.ollama.pull_source import check_hop, check_source, under_prefix
from picolm_server.errors import ForbiddenError

HF = "https://huggingface.co/"


def test_a_prefix_covers_its_host_whole_and_its_path() -> None:
    assert under_prefix("https://huggingface.co/o/r/resolve/main/m.gguf", HF)
    assert under_prefix("https://HuggingFace.co:443/o/m.gguf", HF)  # the same host and port
    prefix = "http://models.lan:8080/gguf/"
    assert under_prefix("http://models.lan:8080/gguf/tiny.gguf", prefix)
    for url in (
        "http://models.lan:8080/other/tiny.gguf",  # another path
        "http://models.lan/gguf/tiny.gguf",  # another port
        "https://models.lan:8080/gguf/tiny.gguf",  # another scheme
        "http://models.lan.example:8080/gguf/tiny.gguf",  # a host that starts the same
        "http://user@models.lan:8080/gguf/tiny.gguf",  # a user name
        "http://models.lan:99999/gguf/tiny.gguf",  # no port at all
    ):
        assert not under_prefix(url, prefix), url


def test_a_source_must_be_under_a_prefix_without_dot_segments() -> None:
    check_source("https://huggingface.co/o/r/resolve/main/m.gguf", [HF])
    for url in (
        "https://example.org/m.gguf",
        "https://huggingface.co/o/%2e%2e/m.gguf",
        "https://huggingface.co/o/./m.gguf",
    ):
        with pytest.raises(ForbiddenError):
            check_source(url, [HF])
    with pytest.raises(ForbiddenError, match=r"server\.pull_allow is empty"):
        check_source("https://huggingface.co/m.gguf", [])


def resolver(answers: dict[str, list[str]]):  # type: ignore[no-untyped-def]
    def resolve(host: str, port: int) -> list[str]:
        return answers[host]

    return resolve


@pytest.mark.parametrize(
    "address",
    [
        "127.0.0.1",
        "10.1.2.3",
        "172.16.0.9",
        "192.168.1.1",
        "169.254.169.254",  # a cloud's metadata service
        "100.64.0.1",  # shared address space
        "0.0.0.0",
        "::1",
        "fd00::1",
        "fe80::1",
        "::ffff:127.0.0.1",
        "224.0.0.1",
    ],
)
def test_a_host_with_a_private_address_is_refused(address: str) -> None:
    resolve = resolver({"cdn.example": ["93.184.215.14", address]})
    with pytest.raises(ForbiddenError, match="private or loopback"):
        check_hop("https://cdn.example/file.gguf", [HF], resolve)


def test_public_hosts_and_listed_prefixes_pass() -> None:
    resolve = resolver({"cdn.example": ["93.184.215.14", "2606:2800:21f:cb07::1"]})
    check_hop("https://cdn.example/file.gguf", [HF], resolve)
    # A listed prefix may be private: the operator named it.
    lan = resolver({"models.lan": ["192.168.1.5"]})
    check_hop("http://models.lan/gguf/m.gguf", ["http://models.lan/gguf/"], lan)
    with pytest.raises(ForbiddenError):
        check_hop("http://models.lan/other/m.gguf", ["http://models.lan/gguf/"], lan)
    with pytest.raises(ForbiddenError):
        check_hop("https://nowhere.example/m.gguf", [HF], resolver({"nowhere.example": []}))

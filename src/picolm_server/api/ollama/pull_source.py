"""Where ``/api/pull`` may fetch from: ``server.pull_allow`` and the addresses behind a
name.

- The model's URL (``hf://owner/repo/file.gguf`` read as Hugging Face's download URL)
  must start with one of the ``pull_allow`` prefixes, compared by scheme, host, port
  and path (the host whole, in any case; a URL with a user name, or a ``..`` segment,
  is refused). The default allows Hugging Face's URLs, ``https://huggingface.co/``.
- Every request of the pull (the first, and each redirect it follows: Hugging Face
  sends its files from other hosts) goes to a host whose addresses are all public,
  unless its URL is under a listed prefix: a name that resolves to a private,
  loopback, link-local or otherwise non-global address is refused. An operator who
  wants a pull from the local network lists that prefix.

The check is made before each request is sent (httpx's request hook); the connection
then resolves the name again, so a name whose answers change between the two (DNS
rebinding) is not caught here. A refusal is a 403.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable, Sequence
from urllib.parse import unquote, urlsplit

import httpx

from ...errors import ForbiddenError

# The addresses a host name resolves to (for a port).
Resolver = Callable[[str, int], list[str]]

_DEFAULT_PORTS = {"http": 80, "https": 443}


def system_resolver(host: str, port: int) -> list[str]:
    try:
        answers = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError as exc:
        raise ForbiddenError(f"Cannot resolve {host!r} to check its address: {exc}") from None
    return [str(answer[4][0]) for answer in answers]


def _port(scheme: str, port: int | None) -> int:
    return port if port is not None else _DEFAULT_PORTS[scheme]


def under_prefix(url: str, prefix: str) -> bool:
    """Whether ``url`` is under ``prefix``: the same scheme, host and port, and a path
    that starts with the prefix's."""
    try:
        u, p = urlsplit(url), urlsplit(prefix)
        u_port, p_port = _port(u.scheme, u.port), _port(p.scheme, p.port)
    except (ValueError, KeyError):
        return False
    return (
        u.scheme == p.scheme
        and u.hostname is not None
        and u.hostname == p.hostname
        and u_port == p_port
        and "@" not in u.netloc
        and u.path.startswith(p.path)
    )


def check_source(url: str, prefixes: Sequence[str]) -> None:
    """Refuse (403) a URL that no ``pull_allow`` prefix covers."""
    segments = unquote(urlsplit(url).path).split("/")
    if ".." in segments or "." in segments:
        raise ForbiddenError(f"{url!r}: a URL with '.' or '..' segments is not pulled.")
    if not any(under_prefix(url, prefix) for prefix in prefixes):
        allowed = ", ".join(prefixes) if prefixes else "nothing (server.pull_allow is empty)"
        raise ForbiddenError(
            f"{url!r} is not under a URL prefix this server pulls from: {allowed} "
            "(server.pull_allow)."
        )


def _public(address: str) -> bool:
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_global and not ip.is_multicast


def check_hop(url: str, prefixes: Sequence[str], resolve: Resolver = system_resolver) -> None:
    """Refuse (403) a request to a host with a non-public address, unless ``url`` is
    under a listed prefix."""
    if any(under_prefix(url, prefix) for prefix in prefixes):
        return
    parts = urlsplit(url)
    host = parts.hostname or ""
    try:
        port = _port(parts.scheme, parts.port)
    except (ValueError, KeyError):
        raise ForbiddenError(f"{url!r} is not a URL a pull can follow.") from None
    addresses = resolve(host, port)
    private = [address for address in addresses if not _public(address)]
    if private or not addresses:
        raise ForbiddenError(
            f"{host!r} resolves to a private or loopback address ({', '.join(private)}); "
            "a pull goes there only when its URL prefix is listed in server.pull_allow."
        )


def guarded_client(prefixes: Sequence[str], resolve: Resolver = system_resolver) -> httpx.Client:
    """An HTTP client for a pull: redirects followed, each request checked by
    :func:`check_hop` before it is sent."""

    def check(request: httpx.Request) -> None:
        check_hop(str(request.url), prefixes, resolve)

    return httpx.Client(
        follow_redirects=True,
        event_hooks={"request": [check]},
        timeout=httpx.Timeout(30.0),
    )

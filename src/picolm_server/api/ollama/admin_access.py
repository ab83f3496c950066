"""Who may change the shelf (``/api/pull``, ``/api/delete``, ``/api/copy``):
``server.model_admin``.

Ollama leaves these endpoints open to anyone who can reach it; here they are closed to
everyone but:

- ``loopback`` (the default): clients on this machine (127.0.0.0/8, ::1), or anyone
  presenting the API key when one is set. Behind a reverse proxy on the same machine
  every client comes from loopback: there, use ``key`` or ``off``.
- ``key``: anyone presenting the API key (``server.api_key`` must be set).
- ``any``: anyone who can reach the server (and passes the key check, if a key is set).
- ``off``: nobody.

Everyone else gets a 403. The key is compared in constant time, as the key check of
every path compares it.
"""

from __future__ import annotations

import hmac
import ipaddress

from starlette.types import Scope

from ...config.settings import ServerSection
from ...errors import ForbiddenError
from ...http.manners import api_key_header, bearer_token


def is_loopback(host: str | None) -> bool:
    """Whether a client address is this machine's loopback (IPv4-mapped too)."""
    if host is None:
        return False
    try:
        address = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.is_loopback


def presents_key(scope: Scope, api_key: str) -> bool:
    """Whether the request carries ``api_key`` (a Bearer token or ``x-api-key``)."""
    if not api_key:
        return False
    expected = api_key.encode()
    supplied = (bearer_token(scope["headers"]), api_key_header(scope["headers"]))
    return any(key is not None and hmac.compare_digest(key, expected) for key in supplied)


def check_admin(scope: Scope, server: ServerSection) -> None:
    """Raise :class:`ForbiddenError` unless the request may administer models."""
    mode = server.model_admin
    if mode == "any":
        return
    if mode == "off":
        raise ForbiddenError(
            "Model administration (pull, copy, delete) is turned off on this server "
            "(server.model_admin: off)."
        )
    if presents_key(scope, server.api_key):
        return
    if mode == "key":
        raise ForbiddenError(
            "Model administration (pull, copy, delete) needs the server's API key "
            "(server.model_admin: key)."
        )
    client = scope.get("client")
    if is_loopback(client[0] if client else None):
        return
    raise ForbiddenError(
        "Model administration (pull, copy, delete) is open only to clients on the "
        "server's own machine (server.model_admin: loopback)"
        + (", or to those presenting the API key." if server.api_key else ".")
    )

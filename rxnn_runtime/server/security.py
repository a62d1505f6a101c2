"""Access control for the server: an optional shared API key, an Origin check, and session ownership.

- **API key** (``api_key``; `rxnn serve --api-key` or the ``RXNN_API_KEY`` environment variable). When set, every
  request to ``/v1/*`` needs ``Authorization: Bearer <key>`` (else 401), and a websocket must present the key in
  the ``Authorization`` header, the ``api_key`` query parameter, or its first frame ``{"type": "auth",
  "api_key": ...}`` (else an ``unauthorized`` error frame and close 1008). ``/`` and ``/healthz`` stay open.
- **Origin.** A browser sends ``Origin`` with every websocket upgrade and every POST. A request that carries one
  is accepted only from the server's own origin (same scheme, host and port as the ``Host`` header, and only for
  a loopback or IP-literal host: a named host could be a DNS-rebinding alias) or from an origin in
  ``allowed_origins``; otherwise 403. Requests without ``Origin`` (curl, SDKs) are not browsers and pass.
- **Ownership.** A session is owned by one client at a time: a websocket connection from its first frame naming
  the session until it closes, or HTTP requests while any is running on it. A frame or request for a session
  another client owns is refused (error frame ``forbidden``; HTTP 409), so nobody can cancel, reset or watch
  another client's live session.
"""

from __future__ import annotations

import hmac
import ipaddress
import os
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from aiohttp import web

API_KEY_ENV = "RXNN_API_KEY"
AUTH_FRAME = "auth"
CLOSE_POLICY_VIOLATION = 1008
AUTH_TIMEOUT = 10.0  # seconds an unauthenticated websocket may stay open waiting for its auth frame


def normalize_origin(origin: str) -> str | None:
    """``scheme://host[:port]`` in lower case with the default port dropped, or None if it is not an origin."""
    try:
        parts = urlsplit(origin.strip())
        port = parts.port
    except ValueError:
        return None
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https") or not parts.hostname or parts.path not in ("", "/") or parts.query:
        return None
    host = parts.hostname.lower()
    if ":" in host:
        host = f"[{host}]"
    if port is None or (scheme, port) in (("http", 80), ("https", 443)):
        return f"{scheme}://{host}"
    return f"{scheme}://{host}:{port}"


def _is_local_or_ip(host: str) -> bool:
    name = host.strip("[]").lower()
    if name == "localhost" or name.endswith(".localhost"):
        return True
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


@dataclass(frozen=True)
class AccessPolicy:
    api_key: str | None = None
    allowed_origins: frozenset[str] = field(default_factory=frozenset)

    def __post_init__(self) -> None:
        if self.api_key is not None and not self.api_key.strip():
            raise ValueError("api_key must be a non-empty string or None")
        normalized = set()
        for origin in self.allowed_origins:
            if origin == "*":
                normalized.add("*")
                continue
            norm = normalize_origin(origin)
            if norm is None:
                raise ValueError(f"allowed origin {origin!r} is not an origin: write scheme://host[:port], "
                                 "e.g. https://chat.example.com")
            normalized.add(norm)
        object.__setattr__(self, "allowed_origins", frozenset(normalized))

    @classmethod
    def from_env(cls, api_key: str | None = None, allowed_origins: tuple[str, ...] | list[str] = ()) -> AccessPolicy:
        """``api_key`` or else ``$RXNN_API_KEY`` (empty = none)."""
        key = api_key if api_key is not None else (os.environ.get(API_KEY_ENV) or None)
        return cls(key, frozenset(allowed_origins))

    # -- API key --------------------------------------------------------------------------------------------
    def key_matches(self, candidate: str | None) -> bool:
        if self.api_key is None:
            return True
        if not isinstance(candidate, str):
            return False
        return hmac.compare_digest(candidate.encode("utf-8", "surrogatepass"), self.api_key.encode())

    def bearer_ok(self, request: web.BaseRequest) -> bool:
        if self.api_key is None:
            return True
        header = request.headers.get("Authorization", "")
        scheme, _, token = header.partition(" ")
        return scheme.lower() == "bearer" and self.key_matches(token.strip())

    # -- Origin ---------------------------------------------------------------------------------------------
    def origin_ok(self, request: web.BaseRequest) -> bool:
        origin = request.headers.get("Origin")
        if origin is None:
            return True
        norm = normalize_origin(origin)  # "null" (sandboxed pages, file://) is not an origin: refused
        if norm is None:
            return False
        if "*" in self.allowed_origins or norm in self.allowed_origins:
            return True
        own = normalize_origin(f"{request.scheme}://{request.host}")
        return own is not None and norm == own and _is_local_or_ip(urlsplit(own).hostname or "")


class SessionOwners:
    """Which client owns each live session. Touched on the event loop only (aiohttp handlers), so no lock."""

    HTTP = object()  # the shared owner of sessions used by running HTTP requests

    def __init__(self) -> None:
        self._owner: dict[str, object] = {}
        self._count: dict[str, int] = {}

    def claim(self, session_id: str, owner: object) -> bool:
        """Take ``session_id`` for ``owner`` (again: idempotent for connections, counted for HTTP)."""
        current = self._owner.get(session_id)
        if current is None:
            self._owner[session_id] = owner
            self._count[session_id] = 1
            return True
        if current is not owner:
            return False
        if owner is self.HTTP:
            self._count[session_id] += 1
        return True

    def release(self, session_id: str, owner: object) -> None:
        if self._owner.get(session_id) is not owner:
            return
        self._count[session_id] -= 1
        if self._count[session_id] <= 0:
            del self._owner[session_id], self._count[session_id]

    def owner(self, session_id: str) -> object | None:
        return self._owner.get(session_id)

    def __len__(self) -> int:
        return len(self._owner)


LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")


def exposure_warning(host: str, policy: AccessPolicy) -> str | None:
    """The warning to log when the server listens beyond loopback without an API key (None if it does not)."""
    if policy.api_key is not None or host in LOOPBACK_HOSTS:
        return None
    return (f"serving on {host} without an API key: anyone who can reach this address can use the model and "
            f"its sessions; set --api-key or ${API_KEY_ENV}")


def openai_error(status: int, message: str, kind: str, param: str | None = None,
                 headers: dict[str, str] | None = None) -> web.Response:
    """An error in the OpenAI shape ``{"error": {message, type, param, code}}``."""
    return web.json_response({"error": {"message": message, "type": kind, "param": param, "code": None}},
                             status=status, headers=headers)


JSON_TYPES = ("application/json",)


@web.middleware
async def access_middleware(request: web.Request, handler):
    """Origin and API-key checks for ``/v1/*`` and the Origin check for ``/ws`` (its key is checked in the
    handler, which also accepts the key in the first frame). A POST must be JSON: ``text/plain`` and form bodies
    are what a cross-site page can send without a CORS preflight."""
    from rxnn_runtime.server.app import CONFIG

    path = request.path
    if not (path.startswith("/v1/") or path == "/ws"):
        return await handler(request)
    policy: AccessPolicy = request.app[CONFIG].access
    if not policy.origin_ok(request):
        message = (f"Origin {request.headers.get('Origin', '')[:100]!r} is not allowed: same-origin (loopback or "
                   "IP host) or an origin given with --allowed-origin")
        if path == "/ws":
            return web.Response(status=403, text=f"403: {message}\n")
        return openai_error(403, message, "permission_error", "Origin")
    if path == "/ws":
        return await handler(request)
    if not policy.bearer_ok(request):
        return openai_error(401, "missing or wrong API key: send Authorization: Bearer <key>",
                            "authentication_error", "Authorization", headers={"WWW-Authenticate": "Bearer"})
    if request.method == "POST" and request.content_type not in JSON_TYPES:
        return openai_error(415, f"Content-Type must be application/json, got {request.content_type!r}",
                            "invalid_request_error", "Content-Type")
    return await handler(request)


def forbidden_message(session_id: str) -> str:
    return f"session {session_id!r} is in use by another client (a session has one owner at a time)"


__all__ = ["API_KEY_ENV", "AccessPolicy", "SessionOwners", "access_middleware", "normalize_origin", "openai_error"]

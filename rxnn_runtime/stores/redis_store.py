"""A Redis store: sessions shared by several server replicas.

Each session is one key, `<prefix><session_id>`, holding `SessionState.to_bytes()`. A `SET` replaces the value
atomically, so a replica reading a session sees the old record or the new one, never a mix. The runtime keeps
one turn of a session in flight at a time on its own lane; routing a session's turns to one replica (sticky
sessions) is the deployment's job, Redis only makes the state visible to all of them.

A slow or paused Redis must not stall the model lane: every call has a short socket timeout (2 s by default),
and after a failure the store is *degraded* for ``retry_after`` seconds, during which calls fail at once
(`StoreConnectionError`) instead of each waiting out its timeout; `health()` (``/healthz``) pings it and reports
the latency, or the failure. Retention: with ``Retention(idle_seconds=...)`` each save sets the key's expiry
(``SET ... EX``), so Redis drops sessions idle for that long; nothing expires by default.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

import redis

from rxnn_runtime.stores.base import Retention, SessionState, SessionStore
from rxnn_runtime.stores.directory import CorruptSessionRecord

T = TypeVar("T")

DEFAULT_PREFIX = "rxnn:session:"


class StoreConnectionError(ConnectionError):
    """The session store could not be reached; ``url`` names it (with any password hidden)."""

    def __init__(self, url: str, detail: str) -> None:
        super().__init__(f"cannot reach the session store at {url}: {detail}")
        self.url = url


def redact_url(url: str) -> str:
    """`url` with its password (if any) replaced by `***`, for error messages and logs."""
    try:
        parts = urlsplit(url)
        if parts.password is None:
            return url
        user = parts.username or ""
        host = parts.hostname or ""
        if ":" in host:  # IPv6
            host = f"[{host}]"
        netloc = f"{user}:***@{host}" + (f":{parts.port}" if parts.port is not None else "")
        return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))
    except ValueError:
        return "<unparseable redis url>"


def _escape_glob(text: str) -> str:
    """Escape Redis MATCH glob metacharacters so `text` matches literally."""
    return "".join("\\" + c if c in "\\*?[]" else c for c in text)


class RedisStore(SessionStore):
    def __init__(
        self,
        url: str,
        prefix: str = DEFAULT_PREFIX,
        *,
        connect_timeout: float = 2.0,
        socket_timeout: float = 2.0,
        retry_after: float = 5.0,
        retention: Retention | None = None,
        client: redis.Redis | None = None,
    ) -> None:
        self.url = redact_url(url)
        self.prefix = prefix
        self.retention = retention or Retention()
        if self.retention.max_sessions is not None:
            raise ValueError("the Redis store cannot bound its session count: use Retention(idle_seconds=...) "
                             "(key expiry), or Redis's own maxmemory-policy")
        self.retry_after = retry_after
        self._down_until = 0.0
        self._last_error = ""
        self._state_lock = threading.Lock()
        try:
            # Options given in the URL's query string (e.g. ?socket_timeout=1) take precedence over these.
            self._client = client or redis.Redis.from_url(
                url, socket_connect_timeout=connect_timeout, socket_timeout=socket_timeout
            )
        except ValueError as exc:
            raise ValueError(f"invalid redis url {self.url}: {exc}") from exc
        self._call(self._client.ping)  # fail at start-up, not on the first committed turn

    def __repr__(self) -> str:
        return f"RedisStore({self.url!r}, prefix={self.prefix!r})"

    def key_for(self, session_id: str) -> str:
        if not isinstance(session_id, str) or not session_id:
            raise ValueError(f"session id {session_id!r} must be a non-empty string")
        return self.prefix + session_id

    def _call(self, fn: Callable[..., T], *args: object, probe: bool = False, **kwargs: object) -> T:
        with self._state_lock:
            down_for = self._down_until - time.monotonic()
            last = self._last_error
        if down_for > 0 and not probe:  # fail fast: do not make every turn wait out the timeout
            raise StoreConnectionError(self.url, f"degraded after {last}; retrying in {down_for:.1f}s")
        try:
            result = fn(*args, **kwargs)
        except (redis.ConnectionError, redis.TimeoutError) as exc:  # AuthenticationError is a ConnectionError
            with self._state_lock:
                self._last_error = f"{type(exc).__name__}: {exc}"
                self._down_until = time.monotonic() + self.retry_after
            raise StoreConnectionError(self.url, f"{type(exc).__name__}: {exc}") from exc
        with self._state_lock:
            self._down_until = 0.0
        return result

    def health(self) -> dict[str, Any]:
        """Ping Redis now (even while degraded: this is the probe that ends it); status, latency or error."""
        start = time.perf_counter()
        try:
            self._call(self._client.ping, probe=True)
        except StoreConnectionError as exc:
            return {"status": "degraded", "store": "RedisStore", "url": self.url, "error": str(exc)}
        return {"status": "ok", "store": "RedisStore", "url": self.url,
                "latency_ms": round((time.perf_counter() - start) * 1000, 3)}

    def load(self, session_id: str) -> SessionState | None:
        key = self.key_for(session_id)
        data = self._call(self._client.get, key)
        if data is None:
            return None
        try:
            state = SessionState.from_bytes(data)
        except Exception as exc:  # msgpack, safetensors and KeyError all signal a bad record
            raise CorruptSessionRecord(f"{key!r} in {self.url}", f"{type(exc).__name__}: {exc}") from exc
        if state.session_id != session_id:
            raise CorruptSessionRecord(
                f"{key!r} in {self.url}", f"it holds session {state.session_id!r}, not {session_id!r}"
            )
        return state

    def save(self, state: SessionState) -> None:
        key = self.key_for(state.session_id)
        data = state.to_bytes()
        idle = self.retention.idle_seconds
        self._call(self._client.set, key, data, ex=max(1, math.ceil(idle)) if idle is not None else None)

    def delete(self, session_id: str) -> None:
        self._call(self._client.delete, self.key_for(session_id))

    def session_ids(self) -> list[str]:
        def scan() -> set[str]:
            ids = set()  # SCAN may return a key more than once
            n = len(self.prefix.encode())
            for key in self._client.scan_iter(match=_escape_glob(self.prefix) + "*", count=1000):
                raw = key if isinstance(key, bytes) else key.encode()
                ids.add(raw[n:].decode("utf-8", errors="surrogateescape"))
            return ids

        return sorted(self._call(scan))

    def close(self) -> None:
        self._client.close()

"""A Redis store: sessions shared by several server replicas.

Each session is one key, `<prefix><session_id>`, holding `SessionState.to_bytes()`. A `SET` replaces the value
atomically, so a replica reading a session sees the old record or the new one, never a mix. The runtime keeps
one turn of a session in flight at a time on its own lane; routing a session's turns to one replica (sticky
sessions) is the deployment's job, Redis only makes the state visible to all of them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar
from urllib.parse import urlsplit, urlunsplit

import redis

from rxnn_runtime.stores.base import SessionState, SessionStore
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
        connect_timeout: float = 5.0,
        socket_timeout: float = 10.0,
        client: redis.Redis | None = None,
    ) -> None:
        self.url = redact_url(url)
        self.prefix = prefix
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

    def _call(self, fn: Callable[..., T], *args: object) -> T:
        try:
            return fn(*args)
        except (redis.ConnectionError, redis.TimeoutError) as exc:  # AuthenticationError is a ConnectionError
            raise StoreConnectionError(self.url, f"{type(exc).__name__}: {exc}") from exc

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
        self._call(self._client.set, key, data)

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

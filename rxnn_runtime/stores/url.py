"""`open_store(url)`: pick a session store from a URL (the server's `--sessions` option, for instance).

- None, "" or "memory://": `InMemoryStore` (sessions lost on restart)
- "redis://host:port/db" or "rediss://..." (TLS): `RedisStore`, shared by several replicas
- "file:///absolute/path" or a plain path ("sessions", "./data/sessions", "~/rxnn"): `DirectoryStore`,
  created if missing

``retention`` (`Retention`) bounds how long idle sessions are kept: for the in-memory store it replaces the
default bound (`MEMORY_RETENTION`); the directory and Redis stores delete sessions only when it is given.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from urllib.parse import unquote, urlsplit

from rxnn_runtime.stores.base import Retention, SessionStore
from rxnn_runtime.stores.memory import InMemoryStore

ACCEPTED = "memory://, redis://, rediss://, file:///absolute/path, or a plain directory path"

_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*):")


def _shown(url: str) -> str:
    if url.lower().startswith(("redis://", "rediss://")):
        try:
            from rxnn_runtime.stores.redis_store import redact_url
        except ModuleNotFoundError:  # no redis package: hide a password without it
            return re.sub(r"^(\w+://[^:/@]*):[^@/]*@", r"\1:***@", url)
        return redact_url(url)
    return url


def open_store(url: str | os.PathLike[str] | None, retention: Retention | None = None) -> SessionStore:
    if url is None:
        return InMemoryStore(retention)
    if isinstance(url, os.PathLike):
        from rxnn_runtime.stores.directory import DirectoryStore

        return DirectoryStore(url, retention=retention)
    if not isinstance(url, str):
        raise TypeError(f"session store url must be a string or a path, not {type(url).__name__}")
    text = url.strip()
    if text == "" or text.lower() == "memory://":
        return InMemoryStore(retention)

    match = _SCHEME.match(text)
    # A one-letter "scheme" is a Windows drive ("C:\\sessions"), i.e. a plain path.
    scheme = match.group(1).lower() if match and len(match.group(1)) > 1 else None

    if scheme is None:
        from rxnn_runtime.stores.directory import DirectoryStore

        return DirectoryStore(Path(text), retention=retention)
    if scheme in ("redis", "rediss"):
        try:
            from rxnn_runtime.stores.redis_store import RedisStore
        except ModuleNotFoundError as exc:
            if exc.name != "redis":
                raise
            raise ModuleNotFoundError(
                f"session store url {_shown(text)!r} needs the redis package, in the 'redis' extra: "
                "pip install 'rxnn-runtime[redis]'",
                name="redis",
            ) from exc
        return RedisStore(text, retention=retention)
    if scheme == "file":
        parts = urlsplit(text)
        if parts.netloc not in ("", "localhost") or not parts.path.startswith("/"):
            raise ValueError(
                f"session store url {url!r} is not a local file URL: write file:///absolute/path "
                "(three slashes) or a plain path"
            )
        if parts.query or parts.fragment:
            raise ValueError(f"session store url {url!r}: a file URL takes no ?query or #fragment")
        from rxnn_runtime.stores.directory import DirectoryStore

        return DirectoryStore(Path(unquote(parts.path)), retention=retention)
    raise ValueError(f"unsupported session store url {_shown(text)!r}: use {ACCEPTED}")

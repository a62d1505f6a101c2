"""Session stores: where a session's STM, turn count and metadata live between turns (see `base.py`)."""

from rxnn_runtime.stores.base import MEMORY_RETENTION, CommittedState, Retention, SessionState, SessionStore
from rxnn_runtime.stores.memory import InMemoryStore

__all__ = ["MEMORY_RETENTION", "CommittedState", "InMemoryStore", "Retention", "SessionState", "SessionStore", "open_store"]


def open_store(url: str | None, retention: Retention | None = None) -> SessionStore:
    """A store from a URL: None or "memory://" (in-process), a directory path or "file:///path", "redis://...".

    Implemented in `rxnn_runtime.stores.url`; ``retention`` bounds idle sessions (see `Retention`).
    """
    from rxnn_runtime.stores.url import open_store as _open

    return _open(url, retention)

"""The default store: sessions live in this process only (lost on restart)."""

from __future__ import annotations

import threading

from rxnn_runtime.stores.base import SessionState, SessionStore


class InMemoryStore(SessionStore):
    def __init__(self) -> None:
        self._records: dict[str, bytes] = {}
        self._lock = threading.Lock()

    def load(self, session_id: str) -> SessionState | None:
        with self._lock:
            data = self._records.get(session_id)
        # Stored as bytes so a caller mutating its tensor cannot change the saved state.
        return SessionState.from_bytes(data) if data is not None else None

    def save(self, state: SessionState) -> None:
        data = state.to_bytes()
        with self._lock:
            self._records[state.session_id] = data

    def delete(self, session_id: str) -> None:
        with self._lock:
            self._records.pop(session_id, None)

    def session_ids(self) -> list[str]:
        with self._lock:
            return sorted(self._records)

"""The default store: sessions live in this process only (lost on restart), bounded.

Without a bound every session ever seen (one per session-less OpenAI request, for instance) would keep its STM
forever. The store keeps at most ``retention.max_sessions`` records, dropping the least recently used, and drops
records not loaded or saved for ``retention.idle_seconds`` (default `MEMORY_RETENTION`: 1024 sessions, 1 hour).
An evicted session starts again from the initial memory.

Records are private copies, not serialised bytes: the STM cloned on the host (bits kept, NaN included) and the
metadata passed through msgpack as the other stores' records are, so a caller mutating its objects cannot change
a saved state, and a save costs one memcpy. (Serialising, 64 nano sessions committing together spent about 50 ms
in msgpack and safetensors on the commit threads, all of it holding the GIL.)

The runtime's commits (`CommittedState`: an STM nothing writes into again) are kept as they are, not copied: on a
GPU the record is the STM on the device, the very tensor the runtime's session cache holds, so a commit costs no
device-to-host copy and no memcpy (64 nano sessions finishing together: 50 MB each way) and MemoryUpdated waits
for the update pass only. Such records take device memory for sessions the runtime's cache has let go, at most
``retention.max_sessions`` of them; `load` still returns a private copy on the host.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable

import msgpack

from rxnn_runtime.stores.base import MEMORY_RETENTION, CommittedState, Retention, SessionState, SessionStore


class InMemoryStore(SessionStore):
    keeps_device_stm = True  # a CommittedState is kept as it is (see the module's docstring)

    def __init__(self, retention: Retention | None = None, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.retention = retention or MEMORY_RETENTION
        if not self.retention.bounded:
            raise ValueError("the in-memory store needs a bound: give Retention.max_sessions or idle_seconds")
        self._clock = clock
        # session id -> (private copy of the state, last use); ordered by last use, oldest first
        self._records: OrderedDict[str, tuple[SessionState, float]] = OrderedDict()
        self._lock = threading.Lock()

    def _expire(self, now: float) -> None:
        idle = self.retention.idle_seconds
        if idle is not None:
            while self._records:
                oldest, (_, used) = next(iter(self._records.items()))
                if now - used <= idle:
                    break
                del self._records[oldest]
        limit = self.retention.max_sessions
        if limit is not None:
            while len(self._records) > limit:
                self._records.popitem(last=False)

    def load(self, session_id: str) -> SessionState | None:
        now = self._clock()
        with self._lock:
            self._expire(now)
            entry = self._records.get(session_id)
            if entry is not None:
                self._records[session_id] = (entry[0], now)
                self._records.move_to_end(session_id)
        return _private_copy(entry[0]) if entry is not None else None

    def save(self, state: SessionState) -> None:
        data = _private_copy(state, keep_stm=isinstance(state, CommittedState))
        now = self._clock()
        with self._lock:
            self._records[state.session_id] = (data, now)
            self._records.move_to_end(state.session_id)
            self._expire(now)

    @property
    def instant_saves(self) -> bool:
        """Saves are dict inserts, unless a subclass replaced `save` (its saves may wait: a test's slow store)."""
        return type(self).save is InMemoryStore.save

    def save_many(self, states: list[SessionState]) -> list[str | None]:
        """`save` of each state under one lock and one expiry pass (64 sessions finishing together: one lock, not
        64). A subclass that overrides `save` gets its `save` per state."""
        if type(self).save is not InMemoryStore.save:
            return super().save_many(states)
        records, errors = [], []
        for state in states:
            try:
                records.append(_private_copy(state, keep_stm=isinstance(state, CommittedState)))
            except Exception as exc:
                errors.append(repr(exc))
            else:
                errors.append(None)
        now = self._clock()
        with self._lock:
            for data in records:
                self._records[data.session_id] = (data, now)
                self._records.move_to_end(data.session_id)
            self._expire(now)
        return errors

    def delete(self, session_id: str) -> None:
        with self._lock:
            self._records.pop(session_id, None)

    def session_ids(self) -> list[str]:
        with self._lock:
            self._expire(self._clock())
            return sorted(self._records)

    def count(self) -> int:
        """Records held now. (Not ``__len__``: an empty store must stay truthy for ``store or default``.)"""
        with self._lock:
            return len(self._records)


def _private_copy(state: SessionState, *, keep_stm: bool = False) -> SessionState:
    """A copy of ``state`` that shares nothing with it: the STM on the host, cloned (``keep_stm``: the STM itself,
    where it is: a committed one nobody writes into); the metadata through msgpack, as a stored record's (the
    same types come back as from the other stores)."""
    stm = state.stm.detach() if keep_stm else state.stm.detach().to("cpu", copy=True).contiguous()
    # No metadata (a runtime session's usual case): a new empty dict is what the round trip would give. A pass's
    # commits are saved on the model lane, where every microsecond per session is paid by all of them.
    metadata = {} if state.metadata == {} else msgpack.unpackb(msgpack.packb(state.metadata, use_bin_type=True),
                                                            raw=False)
    return SessionState(session_id=state.session_id, stm=stm, turns=state.turns,
                        memory_version=state.memory_version, metadata=metadata, updated_at=float(state.updated_at))

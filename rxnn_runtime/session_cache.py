"""The sessions the model lane is serving: STM resident on the device, turn counters, a bounded LRU.

A session's state is loaded from the store on first use (validated: a record of the wrong type or shape, or an
STM with NaN/inf, raises ValueError naming the field, which the runtime reports as that turn's Error) and then
lives here, its STM on the model's device, so a turn never copies memory between host and device. The store
gets a copy at every commit, off the lane (`CommitWriter`). Idle sessions beyond ``capacity`` are dropped from
the cache, oldest first; their committed state is in the store. Lane-only: no locks.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable

import torch

from rxnn_runtime.stores import CommittedState, SessionState, SessionStore
from rxt.model import RxT


class SessionCache:
    def __init__(self, model: RxT, store: SessionStore, *, capacity: int = 1024,
                 keep: Callable[[str], bool] = lambda sid: False) -> None:
        if capacity < 1:
            raise ValueError(f"session_cache_size={capacity} must be >= 1")
        self.model = model
        self.store = store
        self.capacity = capacity
        self.keep = keep  # sessions with a turn in flight are never evicted
        self.device = model.embedding.weight.device
        self._states: OrderedDict[str, SessionState] = OrderedDict()
        self.on_evict: Callable[[str], None] = lambda sid: None

    def initial(self, session_id: str) -> SessionState:
        stm = self.model.initial_memory(1)[:, 0].detach().to(self.device)
        return SessionState(session_id=session_id, stm=stm)

    def get(self, session_id: str) -> SessionState:
        state = self._states.get(session_id)
        if state is None:
            loaded = self.store.load(session_id)
            state = self.initial(session_id) if loaded is None else self._validated(session_id, loaded)
            self._states[session_id] = state
            self._evict(session_id)
        self._states.move_to_end(session_id)
        return state

    def _validated(self, session_id: str, state: object) -> SessionState:
        where = f"stored session {session_id!r}"
        if not isinstance(state, SessionState):
            raise ValueError(f"{where}: record is a {type(state).__name__}, not a SessionState")
        for name in ("turns", "memory_version"):
            value = getattr(state, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"{where}: field {name}={value!r} must be an integer >= 0")
        if not isinstance(state.stm, torch.Tensor) or not state.stm.is_floating_point():
            raise ValueError(f"{where}: field stm must be a floating-point tensor, got {type(state.stm).__name__}")
        self.model.stm.validate(state.stm.unsqueeze(1))
        if not bool(torch.isfinite(state.stm).all()):
            raise ValueError(f"{where}: field stm holds NaN or infinite values; refusing to serve it")
        return SessionState(session_id=session_id, stm=state.stm.to(self.device), turns=state.turns,
                            memory_version=state.memory_version, metadata=dict(state.metadata or {}))

    def advance(self, session_id: str, stm: torch.Tensor, *, turns: int | None = None) -> SessionState:
        """One committed memory write: the new STM (device), the turn count (default: one more) and the memory
        version; returns the new state."""
        old = self.get(session_id)
        # Committed: nothing writes into this STM again, so the in-process store may keep it as it is (no copy).
        state = CommittedState(session_id=session_id, stm=stm, turns=old.turns + 1 if turns is None else turns,
                             memory_version=old.memory_version + 1, metadata=old.metadata)
        self._states[session_id] = state
        return state

    def reset(self, session_id: str) -> SessionState:
        state = self.initial(session_id)
        self._states[session_id] = state
        self._states.move_to_end(session_id)
        return state

    def _evict(self, newest: str) -> None:
        for sid in list(self._states):
            if len(self._states) <= self.capacity:
                return
            if sid != newest and not self.keep(sid):
                del self._states[sid]
                self.on_evict(sid)

    def __len__(self) -> int:
        return len(self._states)

    def __contains__(self, session_id: str) -> bool:
        return session_id in self._states

"""The session-store interface.

A `SessionState` is what survives a restart: the session's STM (L, S, D), how many turns it has committed, its
memory version and free-form metadata. The runtime saves a session after every committed memory update,
before it emits MemoryUpdated, so "committed" means "saved". Stores must make `save` atomic: a reader sees the
old state or the new one, never a mix.
"""

from __future__ import annotations

import abc
import math
import time
from dataclasses import dataclass, field
from typing import Any

import msgpack
import torch
from safetensors.torch import load, save


@dataclass
class SessionState:
    session_id: str
    stm: torch.Tensor  # (L, S, D), on the CPU (a `CommittedState` in the in-process store: where it was computed)
    turns: int = 0
    memory_version: int = 0
    metadata: dict[str, Any] = field(default_factory=dict)
    updated_at: float = field(default_factory=time.time)

    def to_bytes(self) -> bytes:
        """msgpack envelope with the STM as safetensors bytes (exact, dtype-preserving)."""
        return msgpack.packb(
            {
                "format": 1,
                "session_id": self.session_id,
                "turns": self.turns,
                "memory_version": self.memory_version,
                "metadata": self.metadata,
                "updated_at": self.updated_at,
                "stm": save({"stm": self.stm.detach().contiguous().cpu()}),
            },
            use_bin_type=True,
        )

    @classmethod
    def from_bytes(cls, data: bytes) -> SessionState:
        """Decode and validate a record field by field: a missing or wrongly typed field is a `ValueError` naming
        the field (the stores wrap it in `CorruptSessionRecord`), never a session that fails later on the lane.
        The STM's values are kept bit for bit (NaN included): refusing a non-finite memory is the runtime's
        decision when it loads a session into the model, not the container's."""
        raw = msgpack.unpackb(data, raw=False)
        if not isinstance(raw, dict) or raw.get("format") != 1:
            raise ValueError("session record is not a format-1 rxnn session")
        missing = sorted({"session_id", "stm", "turns", "memory_version", "metadata", "updated_at"} - set(raw))
        if missing:
            raise ValueError(f"session record lacks field(s) {missing}")

        def check(name: str, ok: bool, want: str) -> None:
            if not ok:
                raise ValueError(f"session record field {name!r} must be {want}, got {raw[name]!r:.60}")

        check("session_id", isinstance(raw["session_id"], str) and bool(raw["session_id"]), "a non-empty string")
        for name in ("turns", "memory_version"):
            value = raw[name]
            check(name, isinstance(value, int) and not isinstance(value, bool) and value >= 0, "an integer >= 0")
        check("metadata", isinstance(raw["metadata"], dict), "a map")
        updated = raw["updated_at"]
        check("updated_at", isinstance(updated, (int, float)) and not isinstance(updated, bool)
              and math.isfinite(updated), "a finite number")
        check("stm", isinstance(raw["stm"], bytes), "safetensors bytes")
        tensors = load(raw["stm"])
        stm = tensors.get("stm")
        if stm is None or not stm.is_floating_point() or stm.dim() != 3:
            raise ValueError("session record field 'stm' must hold one floating-point (L, S, D) tensor 'stm'")
        return cls(session_id=raw["session_id"], stm=stm, turns=raw["turns"], memory_version=raw["memory_version"],
                   metadata=raw["metadata"], updated_at=float(updated))


@dataclass
class CommittedState(SessionState):
    """A state the runtime commits after a memory update: nothing ever writes into its STM again (updates are out
    of place, and the runtime keeps it only to read), so a store that holds tensors may keep this one as it is,
    on the device it was computed on, instead of a private copy (`SessionStore.keeps_device_stm`)."""


@dataclass(frozen=True)
class Retention:
    """How long a store keeps sessions nobody uses: at most ``max_sessions`` (the least recently used go first)
    and none idle for more than ``idle_seconds``. None = no bound. The in-memory store always has one (its
    default, `MEMORY_RETENTION`); the directory and Redis stores delete only when given one."""

    max_sessions: int | None = None
    idle_seconds: float | None = None

    def __post_init__(self) -> None:
        if self.max_sessions is not None and (isinstance(self.max_sessions, bool) or self.max_sessions < 1):
            raise ValueError(f"Retention.max_sessions={self.max_sessions!r} must be >= 1 or None")
        if self.idle_seconds is not None and not (math.isfinite(self.idle_seconds) and self.idle_seconds > 0):
            raise ValueError(f"Retention.idle_seconds={self.idle_seconds!r} must be a finite number > 0 or None")

    @property
    def bounded(self) -> bool:
        return self.max_sessions is not None or self.idle_seconds is not None


MEMORY_RETENTION = Retention(max_sessions=1024, idle_seconds=3600.0)


class SessionStore(abc.ABC):
    """Load and save sessions by id. Implementations must be safe to call from one thread at a time (the lane)."""

    keeps_device_stm = False
    """True for a store whose `save` keeps a `CommittedState`'s STM itself, wherever it lives (the in-process
    store): the runtime's commit writer then hands it the STM on the device, with no copy to the host, and the
    commit (so MemoryUpdated) waits only for the update pass. Stores that write bytes get a host copy."""

    @abc.abstractmethod
    def load(self, session_id: str) -> SessionState | None: ...

    @abc.abstractmethod
    def save(self, state: SessionState) -> None: ...

    instant_saves = False
    """True for a store whose `save_many` of `CommittedState`s never waits (the in-process store: a dict insert under a
    lock): the commit writer then hands all the commits of an update pass to one worker, as one job (one wake-up,
    one report). A store whose saves may take long keeps them spread over the workers by session, so one slow save
    holds up only its worker's sessions."""

    def save_many(self, states: list[SessionState]) -> list[str | None]:
        """Save each of ``states``, in order: per state None, or the repr of what its save raised (a failing save
        fails only its own state). One by one here; a store may do it in one go."""
        errors: list[str | None] = []
        for state in states:
            try:
                self.save(state)
            except Exception as exc:
                errors.append(repr(exc))
            else:
                errors.append(None)
        return errors

    @abc.abstractmethod
    def delete(self, session_id: str) -> None: ...

    @abc.abstractmethod
    def session_ids(self) -> list[str]: ...

    def health(self) -> dict[str, Any]:
        """``{"status": "ok" | "degraded", ...}`` for ``/healthz``; in-process stores are always reachable."""
        return {"status": "ok", "store": type(self).__name__}

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections or files."""



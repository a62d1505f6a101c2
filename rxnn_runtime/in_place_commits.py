"""`InPlaceCommits`: the commits a store saves in place, each waiting on the lane for the update pass that wrote it.

The in-process store keeps a committed STM on the device (`CommitWriter.saves_in_place`): such a commit needs no
host copy and no commit thread, only its update pass done. `ReactiveModel` queues those commits here at launch and
settles them in the lane action that finds their pass done (or, when the lane has nothing else to run, waiting for
it), so a turn's `MemoryUpdated` leaves without a hop to a thread and back through the lane's input (each hop a
thread wake-up and a wait for the GIL). Oldest first: a later pass's commits never overtake an earlier one's.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from typing import Any

from rxnn_runtime.active_turn import ActiveTurn
from rxnn_runtime.stores import SessionState, SessionStore

log = logging.getLogger(__name__)

#: one saved commit: the turn, the state saved, and the error (None when saved)
Saved = tuple[ActiveTurn, SessionState, "str | None"]


class InPlaceCommits:
    """Commits queued with the device event of the pass that wrote them (``ready``: has ``query()`` and
    ``synchronize()``, like `torch.cuda.Event`; None when the pass ran synchronously). The lock guards the queue
    against `save_left`, which `ReactiveModel.dispose` calls from another thread."""

    def __init__(self, store: SessionStore) -> None:
        self.store = store
        self._queue: deque[tuple[list[tuple[ActiveTurn, SessionState]], Any]] = deque()
        self._lock = threading.Lock()

    def __bool__(self) -> bool:
        return bool(self._queue)

    def add(self, commits: list[tuple[ActiveTurn, SessionState]], ready: Any = None) -> None:
        with self._lock:
            self._queue.append((commits, ready))

    def settle(self, *, wait: bool) -> list[Saved]:
        """Save the commits whose pass is done, oldest first, stopping at the first pass still running (``wait``:
        every commit, waiting for its pass on the device, the GIL let go).

        A pass found done by ``query()`` is not synchronised on as well: ``synchronize()`` lets the GIL go even for
        a finished event, and the lane then waits for the event loop's thread to hand it back (at 64 sessions the
        saves of one pass, a dict insert per session, took 0.9 ms on the lane: `runtime_overhead.json`'s timers)."""
        saved: list[Saved] = []
        while True:
            with self._lock:
                if not self._queue:
                    return saved
                commits, ready = self._queue[0]
                if ready is not None and not wait:
                    if not ready.query():
                        return saved
                    ready = None  # done: nothing to wait for
                self._queue.popleft()
            saved.extend(self._save(commits, ready))

    def _save(self, commits: list[tuple[ActiveTurn, SessionState]], ready: Any) -> list[Saved]:
        try:
            if ready is not None:
                ready.synchronize()
            errors = self.store.save_many([state for _, state in commits])
        except Exception as exc:  # the pass failed on the device, or the store: every commit of the job fails
            log.exception("saving %d sessions failed", len(commits))
            errors = [repr(exc)] * len(commits)
        for (_, state), error in zip(commits, errors, strict=True):
            if error is not None:
                log.error("saving session %s failed: %s", state.session_id, error)
        return [(turn, state, error) for (turn, state), error in zip(commits, errors, strict=True)]

    def save_left(self) -> None:
        """At dispose: the commits still waiting are saved (not announced: the event stream has stopped)."""
        with self._lock:
            left, self._queue = list(self._queue), deque()
        for commits, ready in left:
            try:
                if ready is not None:
                    ready.synchronize()
                self.store.save_many([state for _, state in commits])
            except Exception:
                log.exception("saving %d sessions at dispose failed", len(commits))

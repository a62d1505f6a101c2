"""Store commits off the model lane: copy the new STM to the host and save it on a thread of its own.

The lane hands over (turn, state) with the STM still on the device and goes back to decoding. The writer copies
the STM to the host (on CUDA: on its own stream, after an event recorded on the lane's stream, so the copy
neither waits for later decode steps nor races the update that produced it), saves it, and reports back
through ``on_done(turn, state, error)``, which the runtime schedules onto the lane to emit MemoryUpdated. Commits
are saved in the order they were handed over (one worker thread), so a session's saves never overtake each other.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import torch

from rxnn_runtime.stores import SessionState, SessionStore

log = logging.getLogger(__name__)

_STOP = object()


class CommitWriter:
    def __init__(self, store: SessionStore, on_done: Callable[[Any, SessionState, str | None], None]) -> None:
        self.store = store
        self.on_done = on_done
        self._queue: queue.Queue = queue.Queue()
        self._pending = 0
        self._lock = threading.Lock()
        self._stream: torch.cuda.Stream | None = None
        self._thread = threading.Thread(target=self._run, name="rxnn-commit", daemon=True)
        self._thread.start()

    def submit(self, turn: Any, state: SessionState) -> None:
        """Save ``state`` (its STM may be on the device; it is never modified afterwards: updates are out of place)."""
        event = None
        if state.stm.is_cuda:
            event = torch.cuda.Event()
            event.record()  # on the lane's stream: the copy starts once the update that wrote the STM is done
        with self._lock:
            self._pending += 1
        self._queue.put((turn, state, event))

    @property
    def pending(self) -> int:
        with self._lock:
            return self._pending

    def _host_copy(self, stm: torch.Tensor, event: torch.cuda.Event | None) -> torch.Tensor:
        if event is None:
            return stm.detach().clone()
        if self._stream is None:
            self._stream = torch.cuda.Stream(device=stm.device)
        with torch.cuda.stream(self._stream):
            self._stream.wait_event(event)
            host = torch.empty(stm.shape, dtype=stm.dtype, pin_memory=True)
            host.copy_(stm, non_blocking=True)
        self._stream.synchronize()
        return host

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is _STOP:
                return
            turn, state, event = item
            error = None
            try:
                saved = replace(state, stm=self._host_copy(state.stm, event))
                self.store.save(saved)
            except Exception as exc:  # reported as the turn's Error; the writer goes on
                log.exception("saving session %s failed", state.session_id)
                error = repr(exc)
            with self._lock:
                self._pending -= 1
            try:
                self.on_done(turn, state, error)
            except Exception:
                log.exception("commit callback failed")

    def close(self, timeout: float = 10.0) -> None:
        """Finish the commits already handed over, then stop."""
        self._queue.put(_STOP)
        self._thread.join(timeout)

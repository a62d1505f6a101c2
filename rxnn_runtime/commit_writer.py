"""Store commits off the model lane: copy the new STM to the host and save it on a thread of its own.

The lane hands over (turn, state) with the STM still on the device and goes back to decoding. The writer copies
the STM to the host (on CUDA: on its own stream, after an event recorded on the lane's stream, so the copy
neither waits for later decode steps nor races the update that produced it), saves it, and reports back
through ``on_done(turn, state, error)``, which the runtime schedules onto the lane to emit MemoryUpdated. A few
worker threads share the work, each session always on the same one (by a stable hash of its id), so a session's
saves never overtake each other while one slow save holds up only the sessions of its worker.
"""

from __future__ import annotations

import logging
import queue
import threading
import zlib
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import torch

from rxnn_runtime.stores import SessionState, SessionStore

log = logging.getLogger(__name__)

_STOP = object()


class CommitWriter:
    def __init__(self, store: SessionStore, on_done: Callable[[Any, SessionState, str | None], None], *,
                 workers: int = 4) -> None:
        if workers < 1:
            raise ValueError(f"commit workers={workers} must be >= 1")
        self.store = store
        self.on_done = on_done
        self._pending = 0
        self._lock = threading.Lock()
        self._queues: list[queue.Queue] = [queue.Queue() for _ in range(workers)]
        self._threads = [threading.Thread(target=self._run, args=(q,), name=f"rxnn-commit-{i}", daemon=True)
                         for i, q in enumerate(self._queues)]
        for thread in self._threads:
            thread.start()

    def shard_of(self, session_id: str) -> int:
        return zlib.crc32(session_id.encode("utf-8", "surrogatepass")) % len(self._queues)

    def submit(self, turn: Any, state: SessionState, ready: torch.cuda.Event | None = None) -> None:
        """Save ``state`` (its STM may be on the device; it is never modified afterwards: updates are out of place).

        ``ready``: a CUDA event recorded right after the work that wrote the STM; without it one is recorded now,
        on the lane's stream, so the copy also waits for whatever the lane queued since."""
        event = None
        if state.stm.is_cuda:
            event = ready
            if event is None:
                event = torch.cuda.Event()
                event.record()  # on the lane's stream: the copy starts once the update that wrote the STM is done
        with self._lock:
            self._pending += 1
        self._queues[self.shard_of(state.session_id)].put((turn, state, event))

    @property
    def pending(self) -> int:
        with self._lock:
            return self._pending

    @staticmethod
    def _host_copy(stm: torch.Tensor, event: torch.cuda.Event | None, local: threading.local) -> torch.Tensor:
        if event is None:
            return stm.detach().clone()
        stream = getattr(local, "stream", None)
        if stream is None:
            stream = local.stream = torch.cuda.Stream(device=stm.device)
        with torch.cuda.stream(stream):
            stream.wait_event(event)
            host = torch.empty(stm.shape, dtype=stm.dtype, pin_memory=True)
            host.copy_(stm, non_blocking=True)
        stream.synchronize()
        return host

    def _run(self, jobs: queue.Queue) -> None:
        local = threading.local()
        while True:
            item = jobs.get()
            if item is _STOP:
                return
            turn, state, event = item
            error = None
            try:
                saved = replace(state, stm=self._host_copy(state.stm, event, local))
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
        for jobs in self._queues:
            jobs.put(_STOP)
        for thread in self._threads:
            thread.join(timeout)

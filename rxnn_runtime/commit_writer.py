"""Store commits off the model lane: copy the new STM to the host and save it on a thread of its own.

The lane hands over (turn, state) with the STM still on the device and goes back to decoding. The writer copies
the STM to the host (on CUDA: on its own stream, after an event recorded on the lane's stream, so the copy
neither waits for later decode steps nor races the update that produced it), saves it, and reports back
through ``on_done([(turn, state, error), ...])``, which the runtime schedules onto the lane to emit MemoryUpdated.
A few worker threads share the work, each session always on the same one (by a stable hash of its id), so a
session's saves never overtake each other while one slow save holds up only the sessions of its worker. The
sessions one update pass wrote are handed over together: per worker, one copy of their STMs, and reports of the
sessions saved so far every ``report_every_s`` (and at the end of the job), so with a slow store (a file synced
to disk, Redis) a session's MemoryUpdated waits for its own save and a few more, not for its worker's whole job
(16 slow saves), while 64 sessions still cost a few lane hops. 10 ms: far above a job of in-memory saves, whose
sessions are announced together and start their next turns together (reported piecemeal they would drift apart
and share fewer decode steps).

A store that keeps committed STMs where they are (`SessionStore.keeps_device_stm`: the in-process store) gets no
copy at all: the worker waits for the update pass's event and saves the device tensor itself (a `CommittedState`,
never written again). Copying 64 nano STMs to the host and then into the store's records (50 MB each way) was
most of the time from a 64-session pass's answer to its MemoryUpdated. Such commits (`saves_in_place`: nothing to
copy, saves that never wait) are kept on the model lane by `ReactiveModel` rather than handed to a worker here:
the hop to a worker and back cost two thread wake-ups and two waits for the GIL.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
import zlib
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import torch

from rxnn_runtime.stores import CommittedState, SessionState, SessionStore

log = logging.getLogger(__name__)

_STOP = object()


class CommitWriter:
    def __init__(self, store: SessionStore,
                 on_done: Callable[[list[tuple[Any, SessionState, str | None]]], None], *,
                 workers: int = 4, report_every_s: float | None = 0.01) -> None:
        if workers < 1:
            raise ValueError(f"commit workers={workers} must be >= 1")
        if report_every_s is not None and not report_every_s > 0:
            raise ValueError(f"commit report_every_s={report_every_s} must be > 0 (or None: one report per job)")
        self.report_every_s = report_every_s
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
        """Save ``state`` (see `submit_many`)."""
        self.submit_many([(turn, state)], ready)

    def submit_many(self, commits: list[tuple[Any, SessionState]], ready: torch.cuda.Event | None = None) -> None:
        """Save the states of ``commits`` (their STMs may be on the device; never modified afterwards: updates are
        out of place), typically every session one update pass wrote. Per worker one job: one copy of its sessions'
        STMs to the host and one ``on_done`` call with all of them, so 64 sessions finishing together cost a few
        copies and lane hops, not 64.

        ``ready``: a CUDA event recorded right after the work that wrote the STMs; without it one is recorded now,
        on the lane's stream, so the copy also waits for whatever the lane queued since."""
        if not commits:
            return
        event = None
        if any(state.stm.is_cuda for _, state in commits):
            event = ready
            if event is None:
                event = torch.cuda.Event()
                event.record()  # on the lane's stream: the copy starts once the update that wrote the STM is done
        jobs: dict[int, list[tuple[Any, SessionState]]] = {}
        if self.saves_in_place(commits):
            # Nothing to copy, serialise or wait for: the pass is one job (one wake-up, one save_many, one report,
            # one lane hop). Such jobs always go to worker 0; a session's other commits (a reset) wait for this
            # one's report (the scheduler keeps the session busy until then), so its saves never overtake each other.
            jobs[0] = list(commits)
        else:
            for turn, state in commits:  # a session always on the same worker: its saves never overtake each other
                jobs.setdefault(self.shard_of(state.session_id), []).append((turn, state))
        with self._lock:
            self._pending += len(commits)
        for shard, job in jobs.items():
            self._queues[shard].put((job, event))

    def saves_in_place(self, commits: list[tuple[Any, SessionState]]) -> bool:
        """Whether saving ``commits`` needs neither a copy nor a wait: the store keeps committed STMs where they are
        and its saves never wait (the in-process store), and every state is a `CommittedState`. Such a commit is
        only the update pass being done; the runtime then saves it on its lane (`ReactiveModel`), no thread hop."""
        return (self.store.keeps_device_stm and self.store.instant_saves
                and all(isinstance(state, CommittedState) for _, state in commits))

    @property
    def pending(self) -> int:
        with self._lock:
            return self._pending

    @staticmethod
    def _host_copies(stms: list[torch.Tensor], event: torch.cuda.Event | None,
                     local: threading.local) -> list[torch.Tensor]:
        if not stms:
            return []
        if event is None or not any(stm.is_cuda for stm in stms):
            # Host STMs as they are: never modified (updates are out of place), and every store copies or
            # serialises what it keeps, so a clone here only doubled the memory traffic of a commit.
            return [stm.detach() for stm in stms]
        device = next(stm.device for stm in stms if stm.is_cuda)
        stream = getattr(local, "stream", None)
        if stream is None:
            stream = local.stream = torch.cuda.Stream(device=device)
        # One device-to-host copy for the whole job when the STMs stack (one model on one device: they do).
        stacks = len({(s.device, s.shape, s.dtype) for s in stms}) == 1
        with torch.cuda.stream(stream):
            stream.wait_event(event)
            parts = [torch.stack(stms)] if stacks else stms
            hosts = []
            for part in parts:
                if part.is_cuda:
                    host = torch.empty(part.shape, dtype=part.dtype, pin_memory=True)
                    host.copy_(part, non_blocking=True)
                else:
                    host = part.detach().clone()
                hosts.append(host)
        stream.synchronize()
        return list(hosts[0].unbind(0)) if stacks else hosts

    def _stms_to_save(self, job: list[tuple[Any, SessionState]], event: torch.cuda.Event | None,
                      local: threading.local) -> list[torch.Tensor]:
        """The STM each commit of ``job`` saves: a store that keeps committed STMs where they are (the in-process
        store) gets the device tensor itself once the pass that wrote it is done, no copy; the others a host copy
        (one for the job)."""
        keep = [self.store.keeps_device_stm and isinstance(state, CommittedState) for _, state in job]
        if event is not None and any(keep):
            event.synchronize()  # the update pass is done: the commit is the pass, nothing else
        copies = iter(self._host_copies([state.stm for (_, state), kept in zip(job, keep) if not kept], event,
                                        local))
        return [state.stm if kept else next(copies) for (_, state), kept in zip(job, keep)]

    def _run(self, jobs: queue.Queue) -> None:
        local = threading.local()
        while True:
            item = jobs.get()
            if item is _STOP:
                return
            job, event = item
            done = []
            try:
                hosts = self._stms_to_save(job, event, local)
            except Exception as exc:  # the copy failed: every commit of the job fails
                log.exception("copying %d STMs to the host failed", len(job))
                hosts, copy_error = [None] * len(job), repr(exc)
            else:
                copy_error = None
            if copy_error is None and all(host is state.stm for (_, state), host in zip(job, hosts, strict=True)):
                # Every STM kept where it is (the in-process store): the job's saves in one go, one report.
                errors = self.store.save_many([state for _, state in job])
                for (_, state), error in zip(job, errors, strict=True):
                    if error is not None:
                        log.error("saving session %s failed: %s", state.session_id, error)
                self._report([(turn, state, error) for (turn, state), error in zip(job, errors, strict=True)])
                continue
            reported = time.perf_counter()
            for k, ((turn, state), host) in enumerate(zip(job, hosts, strict=True)):
                error = copy_error
                if error is None:
                    try:
                        self.store.save(replace(state, stm=host))
                    except Exception as exc:  # reported as the turn's Error; the writer goes on
                        log.exception("saving session %s failed", state.session_id)
                        error = repr(exc)
                done.append((turn, state, error))
                last = k == len(job) - 1
                if last or (self.report_every_s is not None
                            and time.perf_counter() - reported >= self.report_every_s):
                    self._report(done)
                    done, reported = [], time.perf_counter()

    def _report(self, done: list[tuple[Any, SessionState, str | None]]) -> None:
        with self._lock:
            self._pending -= len(done)
        try:
            self.on_done(done)
        except Exception:
            log.exception("commit callback failed")

    def close(self, timeout: float = 10.0) -> None:
        """Finish the commits already handed over, then stop."""
        for jobs in self._queues:
            jobs.put(_STOP)
        for thread in self._threads:
            thread.join(timeout)

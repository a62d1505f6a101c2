"""The model as a connectable Observable of events: the Rx shell around the scheduler and the executor.

    input: Subject ──observe_on(lane)──► TurnScheduler ──plan──► ModelExecutor (one batched step) ──┐
          ▲                                  ▲                                                    │
          │                    commits ◄─────┴── SessionCache (STM on the device) ◄───────────────┘
    batches: multicast(IsolatingSubject) ◄── one tuple of events per lane action ──► events (flattened)

Everything that touches weights or STM runs on the lane (one EventLoopScheduler), one action at a time, so no
locks guard model state and events leave in one total order (``seq``). Messages pushed into `input` from any
thread are moved onto the lane by RxPY's ``observe_on``, all that wait in one lane action (`Crossing`), so a burst
of queries is accepted at once and prefilled together in the next step. Nothing flows before `connect()`: queries
sent earlier wait.

Each step is one lane action: the scheduler plans it (one decode step for every running turn, one prefill for
the turns admitted together, primed interactions' memory update), the executor runs it on the device, the
scheduler turns the previous step's output into events, the turns that output ended get their memory-update pass
at once (queued behind the step; its STMs are handed over at launch), and the events of the step leave as **one batch**
(`batches`, a tuple per action) so they cross threads once per step; `events` is the same stream one event at
a time. Steps and input messages interleave on the lane, and each step first takes the messages that arrived
during the last one (`Crossing.take_waiting`), so a query that arrives mid-step is admitted by the next step.

A session runs one turn at a time: from admission until its memory is committed (saved to the store, by the
`CommitWriter`, off the lane; a store that saves in place, the in-process one, is saved on the lane in the first
action that finds the update pass done, `_settle`) the session is busy and its next query waits, so it always
reads the committed memory. Other sessions keep decoding while a commit is saved. Cancellation: a waiting turn is dropped; a
running turn stops at once; a cancelled turn's partial answer is **not** written to memory.

Any exception while handling one message or one phase of a step becomes an Error event for the turns it
concerns (a tokenizer error on a query, a bad stored record, an STM with NaN), never a hang and never a stop.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from typing import Any

import reactivex
from reactivex import abc
from reactivex import operators as ops
from reactivex.disposable import Disposable
from reactivex.scheduler import EventLoopScheduler
from reactivex.subject import Subject

from rxnn_runtime.active_turn import ActiveTurn
from rxnn_runtime.commit_writer import CommitWriter
from rxnn_runtime.crossing import Crossing
from rxnn_runtime.events import Error, Event, MemoryUpdated
from rxnn_runtime.in_place_commits import InPlaceCommits
from rxnn_runtime.isolating_subject import IsolatingSubject
from rxnn_runtime.messages import Cancel, InvalidMessage, Prime, Query, Reset
from rxnn_runtime.model_executor import ModelExecutor
from rxnn_runtime.session_cache import SessionCache
from rxnn_runtime.stores import InMemoryStore, SessionState, SessionStore
from rxnn_runtime.turn_intake import TurnIntake
from rxnn_runtime.turn_scheduler import TurnScheduler
from rxt.model import RxT
from rxt.template import InteractionTemplate
from rxt.tokenizer import RxTokenizer

log = logging.getLogger(__name__)

_CONNECT = object()  # the input-stream marker of connect()

SWITCH_INTERVAL_S = 0.0002
"""The GIL switch interval set while a model is connected (Python's default is 5 ms). The lane lets the GIL go at
every wait for the device; with the default, another busy thread of the process (the server's event loop sending
frames to many clients) may keep it for up to 5 ms before the lane gets it back, several decode steps during
which the device idles. 0.2 ms bounds that wait to a fraction of a step. Never raised, only lowered."""


class ReactiveModel:
    def __init__(
        self,
        model: RxT,
        tokenizer: RxTokenizer,
        *,
        store: SessionStore | None = None,
        scheduler: abc.SchedulerBase | None = None,
        max_batch_size: int = 32,
        max_pending_per_session: int = 8,
        session_cache_size: int = 1024,
        use_cuda_graphs: bool | None = None,
        switch_interval_s: float | None = SWITCH_INTERVAL_S,
        update_stream: bool | None = None,
        executor: ModelExecutor | None = None,
        compile_update: bool = False,
        settle_while_waiting: bool = True,
    ) -> None:
        """``executor``: an idle `ModelExecutor` over ``model`` with ``max_batch_size`` slots to reuse (reset here;
        ``use_cuda_graphs``, ``update_stream`` and ``compile_update`` are then its own), e.g. one per trainer across
        its collections; None builds one. ``compile_update``: the memory-update passes fused by torch.compile
        before their graphs are captured (CUDA; a compile of 14-20 s on an H200 at the first capture).
        ``settle_while_waiting``: while the lane waits for a decode step on the device, it looks at the memory-update
        passes in flight and commits and announces those done at once, rather than at the end of its step
        (`_settle_while_waiting`)."""
        if max_batch_size < 1:
            raise ValueError(f"max_batch_size={max_batch_size} must be >= 1")
        if switch_interval_s is not None and switch_interval_s <= 0:
            raise ValueError(f"switch_interval_s={switch_interval_s} must be > 0 (or None to leave Python's)")
        self.switch_interval_s = switch_interval_s
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.template = InteractionTemplate(tokenizer)
        self.store = store or InMemoryStore()
        self.max_batch_size = max_batch_size
        self.max_pending_per_session = max_pending_per_session
        if executor is None:
            # update_stream: memory-update passes on a CUDA stream of their own (default: with graphed updates)
            executor = ModelExecutor(self.model, max_slots=max_batch_size, pad_id=tokenizer.pad_id,
                                     eos_id=tokenizer.eos_id, use_cuda_graphs=use_cuda_graphs,
                                     update_stream=update_stream, compile_update=compile_update)
        elif executor.model is not model or executor.engine.max_slots != max_batch_size:
            raise ValueError(f"ReactiveModel: the executor must run this model with max_batch_size={max_batch_size} "
                             f"slots (it has {executor.engine.max_slots})")
        else:
            executor.reset()
        self.executor = executor
        self.engine = self.executor.engine
        self.scheduler = TurnScheduler(max_slots=max_batch_size, capacity=self.executor.capacity,
                                       eos_id=tokenizer.eos_id, decode_text=tokenizer.decode,
                                       max_pending_per_session=max_pending_per_session)
        self.sessions = SessionCache(self.model, self.store, capacity=session_cache_size, keep=self.scheduler.knows)
        self.sessions.on_evict = self.scheduler.forget
        self.intake = TurnIntake(self.scheduler, self.sessions, tokenizer, self.template,
                                 capacity=self.executor.capacity, max_seq_len=model.config.max_seq_len)
        self.commits = CommitWriter(self.store, self._on_committed)
        self._lane = scheduler or EventLoopScheduler()
        self._owns_lane = scheduler is None
        self._out: Subject = Subject()
        # One tuple of events per lane action; a failing subscriber never hurts the others (IsolatingSubject).
        self.batches = self._out.pipe(ops.multicast(subject=IsolatingSubject(self._on_subscriber_error)))
        self.events: reactivex.Observable = _flatten(self.batches, self._on_subscriber_error)
        self.input: Subject = Subject()
        # Every message waiting is handled in one lane action (then one step), not one message per step.
        self._input_subscription = Crossing(self.input, self._lane, self._on_messages,
                                            on_error=lambda exc: log.error("input stream failed: %r", exc))
        # Commit reports cross onto the lane the same way: the reports of one pass's workers that arrive while the
        # lane is busy are announced in one action, as one batch (its sessions then start their next turns together).
        self._committed: Subject = Subject()
        self._commit_subscription = Crossing(self._committed, self._lane, self._on_commit_reports,
                                             on_error=lambda exc: log.error("commit reports failed: %r", exc))
        self._connected = False
        self._disposed = False
        self._early: list[Any] = []  # messages that arrived before connect()
        self._inflight = None  # the step launched on the device and not yet collected
        self._connection: abc.DisposableBase | None = None
        self._step_scheduled = False
        # Commits saved in place (`CommitWriter.saves_in_place`: the in-process store): saved and announced on the
        # lane once their pass is done (`_settle`), with no hop to a commit thread and back.
        self._in_place = InPlaceCommits(self.store)
        self._settle_scheduled = False
        self.settle_while_waiting = settle_while_waiting

    # -- lifecycle -------------------------------------------------------------------------------------------
    def connect(self) -> abc.DisposableBase:
        """Start the stream: events flow to subscribers and waiting queries are served."""
        if self._disposed:
            raise RuntimeError("ReactiveModel is disposed")
        if self._connection is None:
            if self.switch_interval_s is not None and sys.getswitchinterval() > self.switch_interval_s:
                sys.setswitchinterval(self.switch_interval_s)  # process-wide: see SWITCH_INTERVAL_S
            self._connection = self.batches.connect()
            # Through the input stream, so every message sent before connect() is accepted before any step.
            self.input.on_next(_CONNECT)
        return Disposable(self.dispose)

    def dispose(self) -> None:
        """Stop cleanly: the lane stops; commits already handed over are saved first."""
        if self._disposed:
            return
        self._disposed = True
        self._input_subscription.dispose()
        self._in_place.save_left()
        self.commits.close()
        self._commit_subscription.dispose()
        if self._connection is not None:
            self._connection.dispose()
        if self._owns_lane:
            self._lane.dispose()

    def submit(self, message: Query | Cancel | Reset | Prime) -> None:
        """Same as ``input.on_next(message)``."""
        self.input.on_next(message)

    def prime(self, session_id: str, interactions: list[tuple[str, str]], *, query_id: str = "") -> None:
        """Write earlier (query, answer) turns into a session's memory, in order, through the batched update.

        Used when a client brings its own history (e.g. an OpenAI-style request without a session). Emits one
        MemoryUpdated per interaction, carrying ``query_id``; the session's later queries wait for them. A
        `Cancel` for the session drops what is not yet written.
        """
        self.submit(Prime(session_id, tuple((str(q), str(a)) for q, a in interactions), query_id=query_id))

    def session(self, session_id: str):
        """A `ReactiveSession` facade (``await s.ask(text)``, ``async for e in s.stream(text)``, ``ask_sync``)."""
        from rxnn_runtime.session import ReactiveSession

        return ReactiveSession(self, session_id)

    def session_state(self, session_id: str) -> SessionState | None:
        """The committed state of a session (from the store; safe from any thread)."""
        return self.store.load(session_id)

    # -- lane plumbing ---------------------------------------------------------------------------------------
    def _schedule(self, action) -> None:
        if self._disposed:
            return

        def run(_scheduler: Any, _state: Any = None) -> None:
            try:
                action()
            except Exception:
                log.exception("lane action failed")

        self._lane.schedule(run)

    def _emit(self, events: list[Event]) -> None:
        if events:
            self._out.on_next(tuple(events))

    def _on_subscriber_error(self, value: Any, exc: BaseException) -> None:
        events = value if isinstance(value, tuple) else (value,)
        # About a subscriber, not the turn: no query id, so the turn's own waiters carry on.
        turns = {(e.session_id, e.turn_id) for e in events if not isinstance(e, Error)}
        if not turns:
            return  # never loop on a subscriber that fails on errors too
        self._schedule(lambda: self._emit([self.scheduler.event(Error, s, t, code="subscriber", message=repr(exc))
                                           for s, t in sorted(turns)]))

    def _on_messages(self, messages: list[Any]) -> None:
        """Every input message that waited, in order, in one lane action: their events leave as one batch (and
        the queries' texts are tokenized in one call)."""
        self._emit(self._accept(messages))
        self._request_step()

    def _accept(self, messages: list[Any]) -> list[Event]:
        events: list[Event] = []
        ready: list[Any] = []
        for message in messages:
            if message is _CONNECT:
                self._connected = True
                ready.extend(self._early)  # what arrived before connect() goes first
                self._early = []
            elif not self._connected:
                self._early.append(message)
            else:
                ready.append(message)
        text_ids = self.intake.tokenize_many([m for m in ready if isinstance(m, Query)])
        for message in ready:
            events.extend(self._handle(message, text_ids))
        return events

    def _handle(self, message: Any, text_ids: dict[int, list[int]] | None = None) -> list[Event]:
        try:
            if isinstance(message, Query):
                return self.intake.query(message, None if text_ids is None else text_ids.get(id(message)))
            if isinstance(message, Cancel):
                return self.scheduler.cancel(message.session_id, message.query_id)
            if isinstance(message, Reset):
                return self.scheduler.reset(ActiveTurn(Query(message.session_id, ""), 0, [], kind="reset"))
            if isinstance(message, Prime):
                return self.intake.prime(message)
            return [self.scheduler.event(Error, "", 0, code="invalid",
                                         message=f"unsupported input {type(message).__name__}")]
        except Exception as exc:  # whatever one message does wrong is that message's Error
            log.exception("handling %s failed", type(message).__name__)
            sid = getattr(message, "session_id", "")
            return [self.scheduler.event(Error, sid, 0, getattr(message, "query_id", ""), code="internal",
                                         message=repr(exc))]

    # -- the step loop ---------------------------------------------------------------------------------------
    def _request_step(self) -> None:
        if self._connected and not self._step_scheduled and not self._disposed:
            self._step_scheduled = True
            self._schedule(self._step)

    def _step(self) -> None:
        """Launch step N+1 on the device, then turn step N's output into events while the device works."""
        self._step_scheduled = False
        previous, self._inflight = self._inflight, None
        events: list[Event] = []  # the step's events leave as one batch: one crossing per step
        try:
            # Messages that arrived during the last step are accepted now, so this step's plan admits their queries
            # (their own lane action, queued behind this step, would have come a step later).
            waiting = self._input_subscription.take_waiting()
            if waiting:
                events.extend(self._accept(waiting))
            plan = self.scheduler.schedule()
            if not plan.empty:
                self._inflight = self._launch(plan, events)
                self._hand_over([(turn, self.sessions.reset(turn.session_id)) for turn in plan.resets])
            if previous is not None:
                events.extend(self._finish(previous))
            # The turns ``previous`` ended update their memory now, queued behind the step just launched, rather
            # than in the next step's plan: one step less from the answer to its commit. No rows: nothing to wait.
            updates = self.scheduler.schedule_updates()
            if not updates.empty:
                launched = self._launch(updates, events)
                events.extend(self.scheduler.update_from_output(updates, self.executor.collect(launched)))
            events.extend(self._settle(wait=False))  # passes done by now: committed in this step's batch
        finally:
            self._emit(events)
            if self._inflight is not None or self.scheduler.has_work():
                self._request_step()
            elif self._in_place:
                self._request_settle()  # nothing else to run: the lane waits for the pass itself

    def _launch(self, plan, events: list[Event]):
        """Launch ``plan`` on the device and hand the memory its update pass wrote to the commit writer at once
        (the copy off the device waits for the pass only, on its own stream), not after the step is collected."""
        launched = self.executor.launch(plan, self._stm_of)  # the pass first: its events are made while it runs
        events.extend(self.scheduler.started_events(plan))
        result = launched.result
        # The committed turn count is the number the client was sent (cancelled turns consume numbers too), so
        # numbering carries on from there after a restart. The pass's sessions are handed over together.
        self._hand_over([(turn, self.sessions.advance(turn.session_id, result.new_memory[turn], turns=turn.turn_id))
                         for turn in self.scheduler.memory_written(result)], ready=result.memory_ready)
        return launched

    # -- commits ---------------------------------------------------------------------------------------------
    def _hand_over(self, commits: list[tuple[ActiveTurn, SessionState]], ready: Any = None) -> None:
        """Commits that save in place wait on the lane for their pass (`_settle`); the others go to the commit
        writer's threads (a host copy, a store that may take its time)."""
        if not commits:
            return
        if self.commits.saves_in_place(commits):
            self._in_place.add(commits, ready)
        else:
            self.commits.submit_many(commits, ready=ready)

    def _settle(self, *, wait: bool) -> list[Event]:
        """Save and announce the in-place commits whose update pass is done, oldest first (``wait``: every one,
        waiting for its pass on the device): their MemoryUpdated leaves in the lane action that sees the pass done."""
        return self._announce(self._in_place.settle(wait=wait))

    def _announce(self, saved: list[tuple[ActiveTurn, SessionState, str | None]]) -> list[Event]:
        """The events of commits saved (or failed): their sessions are free for their next turns."""
        events: list[Event] = []
        for turn, state, error in saved:
            events.extend(self.scheduler.committed(turn, state.memory_version, error))
        return events

    def _request_settle(self) -> None:
        if not self._settle_scheduled and not self._disposed:
            self._settle_scheduled = True
            self._schedule(self._settle_now)

    def _settle_now(self) -> None:
        """A lane action of its own: the lane has nothing else to run, so it waits for the in-place commits' passes
        (on the device, the GIL let go) and announces them; their sessions' next turns may then start."""
        self._settle_scheduled = False
        if self._disposed:
            return
        self._emit(self._settle(wait=True))
        self._request_step()

    def _stm_of(self, session_id: str):
        return self.sessions.get(session_id).stm

    def _finish(self, launched) -> list[Event]:
        waiting = self._settle_while_waiting if self.settle_while_waiting and self._in_place else None
        return self.scheduler.update_from_output(launched.plan, self.executor.collect(launched, waiting))

    def _settle_while_waiting(self) -> bool:
        """Called between looks at a decode step still running on the device: the in-place commits whose pass is
        done by now are saved and announced at once, as a batch of their own (their sessions' MemoryUpdated need
        not wait for the step and its token events). True while commits still wait for their pass.

        Without it the lane sees a finished pass only at the end of its step: at 64 sessions a step is 1-1.5 ms,
        and the memory update's median was 3-4x one session's (`serving.json`)."""
        events = self._settle(wait=False)
        if events:
            self._emit(events)
        return bool(self._in_place)

    def _on_committed(self, commits: list[tuple[ActiveTurn, SessionState, str | None]]) -> None:
        """From the commit writer's threads: the report crosses onto the lane (`_on_commit_reports`)."""
        self._committed.on_next(commits)

    def _on_commit_reports(self, reports: list[list[tuple[ActiveTurn, SessionState, str | None]]]) -> None:
        """On the lane: every commit report that waited frees its sessions and announces them, in one batch."""
        if self._disposed:
            return
        try:
            self._emit(self._announce([saved for commits in reports for saved in commits]))
            self._request_step()
        except Exception:
            log.exception("announcing commits failed")

    def lane_health(self, timeout: float = 2.0) -> dict[str, Any]:
        """Probe the lane: a no-op scheduled on it must run within ``timeout`` seconds (a lane stuck in one action,
        or dead, never runs it). Blocks the caller; the counts are read on the lane, where the scheduler lives."""
        if self._disposed:
            return {"alive": False, "error": "the model is disposed"}
        answered = threading.Event()
        report: dict[str, Any] = {}
        start = time.perf_counter()

        def probe() -> None:
            report.update(self.scheduler.depth())
            answered.set()

        self._schedule(probe)
        if not answered.wait(timeout):
            return {"alive": False, "error": f"the lane ran no action within {timeout}s"}
        return {"alive": True, "latency_ms": round((time.perf_counter() - start) * 1000, 3), **report}

    # -- testing and shutdown helpers ------------------------------------------------------------------------
    def wait_idle(self, timeout: float = 30.0) -> bool:
        """Block until no turn is waiting, running or committing (for tests, scripts and graceful shutdown)."""
        done = threading.Event()

        def check() -> None:
            if self.scheduler.idle() and not self.commits.pending and not self._in_place:
                done.set()
            elif not self._disposed:
                self._schedule(check)

        self._schedule(check)
        return done.wait(timeout)


def _flatten(batches: reactivex.Observable, on_error) -> reactivex.Observable:
    """The batch stream one event at a time; a subscriber that raises on one event still gets the rest."""

    def subscribe(observer: abc.ObserverBase, scheduler: abc.SchedulerBase | None = None) -> abc.DisposableBase:
        def on_next(batch: tuple[Event, ...]) -> None:
            for event in batch:
                try:
                    observer.on_next(event)
                except Exception as exc:
                    log.exception("subscriber failed on %r", event)
                    on_error(event, exc)

        return batches.subscribe(on_next, observer.on_error, observer.on_completed, scheduler=scheduler)

    return reactivex.create(subscribe)


__all__ = ["InvalidMessage", "MemoryUpdated", "ReactiveModel"]

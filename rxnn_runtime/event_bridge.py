"""The one bridge from the model lane into asyncio: event batches cross once per step, fan out per session.

    reactive.batches (lane thread, one tuple per step) ──► inbox ──tick──►
        observe_on(AsyncIOThreadSafeScheduler(loop)) ──► EventBridge._dispatch (loop thread): every batch waiting
        ──per session──► session_events(sid) ──take_while(not terminal, inclusive=True)──► turn_events(sid, qid)

One `EventBridge` per (model, event loop), shared by everything on that loop: the session facade
(`ReactiveSession.stream/ask`), the websocket bridge, the OpenAI handler and the CLI. The lane never waits on the
loop: it appends the step's batch to an inbox (`Crossing`) and, unless a drain is already on its way, sends one
tick through RxPY's ``observe_on``; the loop callback then dispatches every batch that waits, and while batches
keep coming the loop polls the inbox (every ``POLL_S``, longer under load: `poll_delay`) instead of being woken
by the lane at every step (see `Crossing`); a batch with a turn's terminal event (MemoryUpdated, Cancelled, Error) wakes it at once. A loop that falls behind so gets several steps in one callback, before its senders run, and the
websocket bridge coalesces their tokens into one frame per turn instead of paying a frame per token per step
(which would make the loop, not the device, the bottleneck). Fan-out is a dict lookup by session id, so the cost
of a step grows with its events, not with events x listeners, and it is batched: each listener (`listen`) gets
one call per drain with all its events of every batch waiting, in ``seq`` order across the sessions it listens
to (a websocket connection listens to each session it owns with one sink, so it writes its frames once per
drain). The bridge subscribes to the model while it has listeners and lets go when the last one leaves, so a
finished ``asyncio.run`` leaves nothing behind on the lane.

Observables returned here deliver on the loop's thread and must be subscribed from it (asyncio code).
"""

from __future__ import annotations

import asyncio
import logging
import time
import weakref
from collections.abc import Callable
from typing import Any

import reactivex
from reactivex import abc
from reactivex import operators as ops
from reactivex.disposable import Disposable
from reactivex.scheduler.eventloop import AsyncIOThreadSafeScheduler

from rxnn_runtime.crossing import Crossing
from rxnn_runtime.events import TERMINAL_EVENTS, Event


class _LoopScheduler(AsyncIOThreadSafeScheduler):
    """RxPY's asyncio scheduler, made safe to call after the loop has closed (a late batch is dropped)."""

    def schedule(self, action, state=None):
        if self._loop.is_closed():
            return Disposable()
        try:
            return super().schedule(action, state)
        except RuntimeError:  # closed between the check and the call
            return Disposable()


POLL_S = 0.001
"""While steps keep coming, the loop looks for the lane's batches every POLL_S seconds instead of being woken by
the lane at every step (see `Crossing`): a token reaches the loop at most this much later, and the lane never
hands the GIL to the loop thread to wake it."""
POLL_MAX_S = 0.003
"""The longest wait between polls, however long the drains take (see `poll_delay`): a token reaches the loop at
most this much later."""
POLL_LOAD_FACTOR = 3.0
"""Under load the next poll comes ``POLL_LOAD_FACTOR`` times the last drain's duration after it (`poll_delay`)."""
IDLE_POLLS = 10
"""Polls in a row that found nothing before the loop stops polling (and the lane ticks again): polling outlasts
the gaps of a busy server (a long step, a memory-update pass), and an idle one stops after 10 ms."""

log = logging.getLogger(__name__)

_BRIDGES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # loop -> {id(reactive): EventBridge}


_WAITED_FOR = frozenset(TERMINAL_EVENTS)


def poll_delay(last_drain_s: float) -> float:
    """Seconds from one drain to the next poll, given the loop thread's CPU time in the last drain: ``POLL_S``, or
    ``POLL_LOAD_FACTOR`` times the drain (at most ``POLL_MAX_S``) when that is longer.

    A drain's cost is mostly per frame, and so per connection and per drain (encode, frame, one socket write, and
    the GIL hand-over that write makes), not per token: 64 sessions cost the loop about as much per drain with one
    token each as with three. Polling every step, the loop then held the GIL about as long as the lane's own step,
    and the two threads took turns on it (the device idled). Spacing the drains by a multiple of their duration
    keeps the loop busy at most 1 / POLL_LOAD_FACTOR of the time: under load each drain carries a few steps' tokens
    in one frame per turn, while a light load (a drain of a few frames) is still polled every ``POLL_S``."""
    return min(POLL_MAX_S, max(POLL_S, POLL_LOAD_FACTOR * last_drain_s))


def _urgent(batch: tuple[Event, ...]) -> bool:
    """Whether a batch must wake the loop at once rather than wait for its next poll (up to ``POLL_S``): one with a
    turn's terminal event (MemoryUpdated, Cancelled, Error), which its client waits for before it sends the next
    query, so a poll's wait there would be a wait between turns. Tokens and answers (most batches of a busy
    server, whose every tick would hand the GIL to the loop thread mid-step) ride the polls."""
    return any(type(event) in _WAITED_FOR for event in batch)


class EventBridge:
    def __init__(self, reactive: Any, loop: asyncio.AbstractEventLoop) -> None:
        self.reactive = reactive
        self.loop = loop
        self._listeners: dict[str, list[Callable[[list[Event]], None]]] = {}  # session -> its sinks
        self._count = 0
        self._subscription: abc.DisposableBase | None = None
        self._last_drain_s = 0.0  # the loop thread's CPU time in the last dispatch (`poll_delay`)

    @classmethod
    def of(cls, reactive: Any, loop: asyncio.AbstractEventLoop | None = None) -> EventBridge:
        """The bridge of ``reactive`` into ``loop`` (default: the running loop), made on first use."""
        loop = loop or asyncio.get_running_loop()
        per_loop = _BRIDGES.setdefault(loop, {})
        bridge = per_loop.get(id(reactive))
        if bridge is None or bridge.reactive is not reactive:
            bridge = per_loop[id(reactive)] = cls(reactive, loop)
        return bridge

    # -- loop side ------------------------------------------------------------------------------------------
    def _poll_later(self, callback) -> None:
        if not self.loop.is_closed():
            self.loop.call_later(poll_delay(self._last_drain_s), callback)

    def _dispatch(self, batches: list[tuple[Event, ...]]) -> None:
        """Every batch waiting, fanned out: one call per sink with its events in order (a sink that listens to
        several sessions gets them interleaved as they were emitted)."""
        # The loop thread's own CPU time, not the wall time: a drain's socket writes let the GIL go, and the lane's
        # work that runs meanwhile is no cost of the drain's (measured wall times were 3-4x the loop's own work).
        start = time.thread_time()
        try:
            self._fan_out(batches)
        finally:
            self._last_drain_s = time.thread_time() - start

    def _fan_out(self, batches: list[tuple[Event, ...]]) -> None:
        listeners = self._listeners
        out: dict[Callable[[list[Event]], None], list[Event]] = {}
        for batch in batches:
            for event in batch:
                sinks = listeners.get(event.session_id)
                if sinks:
                    for sink in sinks:
                        got = out.get(sink)
                        if got is None:
                            out[sink] = [event]
                        else:
                            got.append(event)
        for sink, events in out.items():
            try:
                sink(events)
            except Exception:  # one listener's failure never starves the others of this drain
                log.exception("event listener %r failed", sink)

    def listen(self, session_id: str, sink: Callable[[list[Event]], None]) -> abc.DisposableBase:
        """Call ``sink`` (on the loop thread) with the events of ``session_id``, a list per drain; dispose the
        result to stop. Sinks that compare equal (one bound method listening to several sessions) get one list
        per drain for all their sessions, in ``seq`` order."""
        self._listeners.setdefault(session_id, []).append(sink)
        self._count += 1
        if self._subscription is None:
            self._subscription = Crossing(self.reactive.batches, _LoopScheduler(self.loop), self._dispatch,
                                          rearm=self._poll_later, idle_polls=IDLE_POLLS, urgent=_urgent)

        def remove() -> None:
            sinks = self._listeners.get(session_id)
            if sinks is None or sink not in sinks:
                return
            sinks.remove(sink)
            if not sinks:
                del self._listeners[session_id]
            self._count -= 1
            if self._count == 0 and self._subscription is not None:
                self._subscription.dispose()  # its crossing, inbox and tick go with it
                self._subscription = None

        return Disposable(remove)

    # -- observables ----------------------------------------------------------------------------------------
    def session_events(self, session_id: str) -> reactivex.Observable:
        """Every event of ``session_id``, on the loop thread, from the moment of subscription."""

        def subscribe(observer: abc.ObserverBase, scheduler: abc.SchedulerBase | None = None) -> abc.DisposableBase:
            def sink(events: list[Event]) -> None:
                for event in events:
                    observer.on_next(event)  # once disposed (take_while ended it), the observer drops the rest

            return self.listen(session_id, sink)

        return reactivex.create(subscribe)

    def turn_events(self, session_id: str, query_id: str) -> reactivex.Observable:
        """The events of one query, up to and including its terminal event (MemoryUpdated, Cancelled, Error)."""
        return self.session_events(session_id).pipe(
            ops.filter(lambda e: e.query_id == query_id),
            ops.take_while(lambda e: not isinstance(e, TERMINAL_EVENTS), inclusive=True),
        )


class EventQueue:
    """Subscribes to ``observable`` (delivering on the running loop) at once; ``async for`` drains it.

    Subscribing before a query is submitted means none of its events can be missed. `close` unsubscribes;
    iteration ends after the observable completes (e.g. a turn's terminal event).
    """

    _DONE = object()

    def __init__(self, observable: reactivex.Observable) -> None:
        self._queue: asyncio.Queue = asyncio.Queue()
        self._subscription = observable.subscribe(on_next=self._queue.put_nowait, on_error=self._queue.put_nowait,
                                                  on_completed=lambda: self._queue.put_nowait(self._DONE))

    def __aiter__(self) -> EventQueue:
        return self

    async def __anext__(self) -> Event:
        item = await self._queue.get()
        if item is self._DONE:
            self.close()
            raise StopAsyncIteration
        if isinstance(item, BaseException):
            self.close()
            raise item
        return item

    def get_nowait(self) -> Event | None:
        """The next event if one is already waiting, else None (to coalesce what arrived together)."""
        if self._queue.empty():
            return None
        item = self._queue.get_nowait()
        if item is self._DONE or isinstance(item, BaseException):
            self._queue.put_nowait(item)  # keep it for __anext__, which ends or raises
            return None
        return item

    def close(self) -> None:
        self._subscription.dispose()


__all__ = ["EventBridge", "EventQueue"]

"""One hop per batch between threads: an inbox and at most one tick through RxPY's ``observe_on``.

    source (any thread) ──► inbox ──tick (only if none is on its way)──► observe_on(scheduler) ──► drain(items)

RxPY's ``observe_on`` alone runs one scheduled action per item, and its observer re-schedules itself behind
whatever else the scheduler has queued: on the model lane that is one input message per decode step (64 queries
sent together waited up to 64 steps to be accepted), on an asyncio loop one callback per item. Here the items
wait in an inbox, a tick crosses only when no drain is already on its way, and the drain hands every item that
waits, in order, to one call. Used for the model lane's input (`ReactiveModel`) and for the lane's event batches
into asyncio (`EventBridge`).

``rearm`` (the asyncio side: ``loop.call_later`` with a short delay) keeps the drain polling from the scheduler's
own thread while items keep coming, and the source sends no tick meanwhile; after ``idle_polls`` polls in a row
found nothing, polling stops and the source ticks again. A tick from the model lane into asyncio is a write to
the loop's self-pipe: a system call, during which the busy loop thread takes the GIL, and the lane then waits to
get it back, every decode step. A poll runs on the loop's own thread and costs the lane nothing.

``urgent`` (a predicate on items) marks what must not wait for the next poll: such an item sends one tick even
while the drain polls (the next item marked urgent sends another only after that tick's drain), so the loop wakes
at once. The event bridge marks the batches with a turn's terminal event (MemoryUpdated, after which a client
sends its next query; Cancelled; Error): they cross at once, while tokens and answers, most of what crosses,
still ride the polls (a tick per step would hand the GIL to the loop thread at every step).

A fresh `Crossing` per subscription, so a tick lost with a disposed subscription never leaves a later one waiting.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable
from typing import Any

import reactivex
from reactivex import abc
from reactivex import operators as ops
from reactivex.disposable import CompositeDisposable
from reactivex.subject import Subject


class Crossing:
    def __init__(self, source: reactivex.Observable, scheduler: abc.SchedulerBase,
                 drain: Callable[[list[Any]], None], on_error: Callable[[Exception], None] | None = None, *,
                 rearm: Callable[[Callable[[], None]], Any] | None = None, idle_polls: int = 3,
                 urgent: Callable[[Any], bool] | None = None) -> None:
        self._inbox: deque = deque()
        self._lock = threading.Lock()
        self._tick_pending = False
        self._urgent = urgent
        self._urgent_sent = False  # an urgent tick is on its way (sent while polling)
        self._poll_armed = False  # a poll is scheduled (the scheduler's thread only)
        self._drain_to = drain
        self._rearm = rearm
        self._idle_polls = idle_polls
        self._empty = 0  # polls in a row that found nothing
        self._disposed = False
        self._ticks: Subject = Subject()
        crossing = self._ticks.pipe(ops.observe_on(scheduler)).subscribe(on_next=self._drain)
        feed = source.subscribe(on_next=self._push, on_error=on_error)
        self.subscription = CompositeDisposable(feed, crossing)

    def _push(self, item: Any) -> None:  # the source's thread: append, tick at most once
        with self._lock:
            self._inbox.append(item)
            if self._tick_pending:
                if self._urgent_sent or self._urgent is None or not self._urgent(item):
                    return  # the drain on its way takes this item too
                self._urgent_sent = True  # polling, but this one must not wait for the poll: one tick now
            self._tick_pending = True
        self._ticks.on_next(None)

    def _poll(self) -> None:  # the scheduler's thread: the poll armed by a drain
        self._poll_armed = False
        self._drain()

    def _drain(self, _tick: object = None) -> None:  # the scheduler's thread: every item waiting, in order
        with self._lock:
            items = list(self._inbox)
            self._inbox.clear()
            self._urgent_sent = False
            self._empty = 0 if items else self._empty + 1
            polling = self._rearm is not None and not self._disposed and self._empty <= self._idle_polls
            self._tick_pending = polling  # while polling, the source sends no tick: the next poll takes its items
        try:
            if items:
                self._drain_to(items)
        finally:
            if polling and not self._poll_armed:  # one poll at a time (an urgent tick drains between polls)
                self._poll_armed = True
                self._rearm(self._poll)

    def take_waiting(self) -> list[Any]:
        """On the scheduler's thread, inside an action of its own: every item waiting now, taken out of the inbox
        (handed to no drain). A tick already on its way stays so: its drain takes what arrives after, or nothing.
        Lets the model lane accept the queries that arrived during a step at the start of the next one, rather
        than in an action queued behind it."""
        with self._lock:
            items = list(self._inbox)
            self._inbox.clear()
        return items

    def dispose(self) -> None:
        self._disposed = True
        self.subscription.dispose()


__all__ = ["Crossing"]

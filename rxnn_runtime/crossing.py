"""One hop per batch between threads: an inbox and at most one tick through RxPY's ``observe_on``.

    source (any thread) ──► inbox ──tick (only if none is on its way)──► observe_on(scheduler) ──► drain(items)

RxPY's ``observe_on`` alone runs one scheduled action per item, and its observer re-schedules itself behind
whatever else the scheduler has queued: on the model lane that is one input message per decode step (64 queries
sent together waited up to 64 steps to be accepted), on an asyncio loop one callback per item. Here the items
wait in an inbox, a tick crosses only when no drain is already on its way, and the drain hands every item that
waits, in order, to one call. Used for the model lane's input (`ReactiveModel`) and for the lane's event batches
into asyncio (`EventBridge`).

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
                 drain: Callable[[list[Any]], None], on_error: Callable[[Exception], None] | None = None) -> None:
        self._inbox: deque = deque()
        self._lock = threading.Lock()
        self._tick_pending = False
        self._drain_to = drain
        self._ticks: Subject = Subject()
        crossing = self._ticks.pipe(ops.observe_on(scheduler)).subscribe(on_next=self._drain)
        feed = source.subscribe(on_next=self._push, on_error=on_error)
        self.subscription = CompositeDisposable(feed, crossing)

    def _push(self, item: Any) -> None:  # the source's thread: append, tick at most once
        with self._lock:
            self._inbox.append(item)
            if self._tick_pending:
                return  # the drain on its way takes this item too
            self._tick_pending = True
        self._ticks.on_next(None)

    def _drain(self, _tick: object) -> None:  # the scheduler's thread: every item waiting, in order
        with self._lock:
            items = list(self._inbox)
            self._inbox.clear()
            self._tick_pending = False
        self._drain_to(items)

    def dispose(self) -> None:
        self.subscription.dispose()


__all__ = ["Crossing"]

"""A Subject that keeps one failing subscriber from hurting the others.

RxPY's Subject calls observers in turn; an exception in one propagates to the emitter and the remaining
observers miss the event. Here each observer's exception is caught and reported to ``on_observer_error``
(the runtime turns it into an Error event), and delivery continues.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from reactivex.subject import Subject

log = logging.getLogger(__name__)


class IsolatingSubject(Subject):
    def __init__(self, on_observer_error: Callable[[Any, BaseException], None] | None = None) -> None:
        super().__init__()
        self._on_observer_error = on_observer_error

    def _on_next_core(self, value: Any) -> None:
        with self.lock:
            observers = self.observers.copy()
        for observer in observers:
            try:
                observer.on_next(value)
            except Exception as exc:
                log.exception("subscriber failed on %r", value)
                if self._on_observer_error is not None:
                    self._on_observer_error(value, exc)

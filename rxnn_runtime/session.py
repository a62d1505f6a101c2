"""A small facade over `ReactiveModel` for Python code: one object per conversation.

    session = reactive.session("alice")
    text = await session.ask("Hi!")                    # asyncio
    async for event in session.stream("And then?"):    # Token ..., AnswerDone, MemoryUpdateStarted, MemoryUpdated
        ...
    text = session.ask_sync("Hi!")                     # plain threads

Each call sends one `Query` with a fresh query id and listens to the events carrying that id until the turn's
terminal event (MemoryUpdated, Cancelled or Error). `ask` returns at AnswerDone: the memory update carries on
in the background, and the session's next turn waits for it.
"""

from __future__ import annotations

import asyncio
import threading
import uuid
from collections.abc import AsyncIterator
from typing import Any

from reactivex import operators as ops

from rxnn_runtime.events import TERMINAL_EVENTS, AnswerDone, Cancelled, Error, Event
from rxnn_runtime.messages import Cancel, GenerationOptions, Query, Reset


class TurnFailed(RuntimeError):
    """The turn ended with an Error or Cancelled event instead of an answer."""

    def __init__(self, event: Event) -> None:
        detail = getattr(event, "message", "") or type(event).__name__
        super().__init__(f"turn {event.turn_id} of session {event.session_id!r} failed: {detail}")
        self.event = event


class ReactiveSession:
    def __init__(self, reactive: Any, session_id: str) -> None:
        self.reactive = reactive
        self.session_id = session_id

    def _send(self, text: str, options: GenerationOptions | dict | None) -> Query:
        if isinstance(options, dict) or options is None:
            options = GenerationOptions.from_dict(options)
        return Query(self.session_id, text, options, query_id=uuid.uuid4().hex)

    def _subscribe(self, query_id: str, on_event) -> Any:
        return self.reactive.events.pipe(ops.filter(lambda e: getattr(e, "query_id", None) == query_id)).subscribe(
            on_next=on_event
        )

    async def stream(self, text: str, options: GenerationOptions | dict | None = None) -> AsyncIterator[Event]:
        """Yield this turn's events as they happen, ending with its terminal event."""
        query = self._send(text, options)
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[Event] = asyncio.Queue()
        subscription = self._subscribe(query.query_id, lambda e: loop.call_soon_threadsafe(queue.put_nowait, e))
        try:
            self.reactive.submit(query)
            while True:
                event = await queue.get()
                yield event
                if isinstance(event, TERMINAL_EVENTS):
                    return
        finally:
            subscription.dispose()

    async def ask(self, text: str, options: GenerationOptions | dict | None = None) -> str:
        """Answer text; raises `TurnFailed` on Error or Cancelled."""
        async for event in self.stream(text, options):
            if isinstance(event, AnswerDone):
                return event.text
            if isinstance(event, (Error, Cancelled)):
                raise TurnFailed(event)
        raise TurnFailed(Error(self.session_id, 0, 0, message="stream ended without an answer"))

    def ask_sync(
        self, text: str, options: GenerationOptions | dict | None = None, *, timeout: float = 120.0
    ) -> str:
        query = self._send(text, options)
        done = threading.Event()
        result: list[Event] = []

        def on_event(event: Event) -> None:
            if isinstance(event, (AnswerDone, Error, Cancelled)) and not result:
                result.append(event)
                done.set()

        subscription = self._subscribe(query.query_id, on_event)
        try:
            self.reactive.submit(query)
            if not done.wait(timeout):
                raise TimeoutError(f"no answer within {timeout} s")
        finally:
            subscription.dispose()
        if isinstance(result[0], AnswerDone):
            return result[0].text
        raise TurnFailed(result[0])

    def cancel(self) -> None:
        self.reactive.submit(Cancel(self.session_id))

    def reset(self) -> None:
        self.reactive.submit(Reset(self.session_id))

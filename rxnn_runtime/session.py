"""A small facade over `ReactiveModel` for Python code: one object per conversation.

    session = reactive.session("alice")
    text = await session.ask("Hi!")                    # asyncio
    async for event in session.stream("And then?"):    # Token ..., AnswerDone, MemoryUpdateStarted, MemoryUpdated
        ...
    text = session.ask_sync("Hi!")                     # plain threads (runs a private event loop)

Each call sends one `Query` with a fresh query id and listens, through the one Rx-to-asyncio bridge
(`rxnn_runtime.event_bridge`), to the events carrying that id until the turn's terminal event (MemoryUpdated,
Cancelled or Error). `ask` returns at AnswerDone: the memory update carries on in the background, and the
session's next turn waits for it.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from typing import Any

from rxnn_runtime.event_bridge import EventBridge, EventQueue
from rxnn_runtime.events import AnswerDone, Cancelled, Error, Event
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

    def query(self, text: str, options: GenerationOptions | dict | None = None, **fields: Any) -> Query:
        """A `Query` of this session with a fresh id (``fields``: e.g. ``memory_answer``)."""
        if isinstance(options, dict) or options is None:
            options = GenerationOptions.from_dict(options)
        return Query(self.session_id, text, options, query_id=uuid.uuid4().hex, **fields)

    async def events(self, query: Query) -> AsyncIterator[Event]:
        """Submit ``query`` and yield its events as they happen, ending with its terminal event."""
        events = EventQueue(EventBridge.of(self.reactive).turn_events(query.session_id, query.query_id))
        try:
            self.reactive.submit(query)
            async for event in events:
                yield event
        finally:
            events.close()

    async def stream(self, text: str, options: GenerationOptions | dict | None = None) -> AsyncIterator[Event]:
        """Yield this turn's events as they happen, ending with its terminal event."""
        async for event in self.events(self.query(text, options)):
            yield event

    async def ask(self, text: str, options: GenerationOptions | dict | None = None) -> str:
        """Answer text; raises `TurnFailed` on Error or Cancelled."""
        async with contextlib.aclosing(self.stream(text, options)) as events:  # stop listening at once
            async for event in events:
                if isinstance(event, AnswerDone):
                    return event.text
                if isinstance(event, (Error, Cancelled)):
                    raise TurnFailed(event)
        raise TurnFailed(Error(self.session_id, 0, 0, message="stream ended without an answer"))

    def ask_sync(
        self, text: str, options: GenerationOptions | dict | None = None, *, timeout: float = 120.0
    ) -> str:
        """`ask` from plain (non-async) code; TimeoutError after ``timeout`` seconds."""

        async def run() -> str:
            try:
                return await asyncio.wait_for(self.ask(text, options), timeout)
            except TimeoutError:
                raise TimeoutError(f"no answer within {timeout} s") from None

        return asyncio.run(run())

    def cancel(self) -> None:
        self.reactive.submit(Cancel(self.session_id))

    def reset(self) -> None:
        self.reactive.submit(Reset(self.session_id))

"""The agent loop: embed a reactive model in an application.

An agent reacts to its *environment*. Each `EnvironmentEvent` (a sensor reading, a chat message, a tool result)
becomes one query in the agent's session; each answer goes out as an `EffectorEvent` on ``loop.effectors``,
an RxPY Subject the application subscribes to (to act on the world: print, call a tool, move a motor).
The model keeps the conversation in its short-term memory, so each event is processed in real time,
without re-reading the history.

An optional ``internal_hook(answer_text) -> str | None`` turns an answer into a new *internal* query: the
model's output fed back to itself (think, plan, call itself again). Returning None ends the chain. The chain is
bounded by ``max_internal_turns`` per environment event, so a hook can never make the loop spin forever.

    reactive = ReactiveModel(model, tokenizer); reactive.connect()
    loop = AgentLoop(reactive, "thermostat", internal_hook=lambda a: None)
    loop.effectors.subscribe(lambda e: print(e.turn_id, e.text))
    await loop.handle(EnvironmentEvent("temperature 17.5 C"))     # one event, awaited
    loop.attach(sensor_observable)                                # or a whole RxPY Observable of them
    await loop.join()                                             # wait until the attached events are handled

Failures never kill the loop: a failed turn (an Error or Cancelled event from the model) or an exception
raised by the hook is emitted as an `AgentError` on ``loop.errors`` (and logged); the next environment event is
handled as usual. Environment events are handled one at a time, in arrival order, so effector events come out
in the order of the events that caused them.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from reactivex import abc
from reactivex.disposable import Disposable
from reactivex.subject import Subject

from rxnn_runtime.events import AnswerDone, Cancelled, Error
from rxnn_runtime.messages import GenerationOptions

log = logging.getLogger(__name__)

InternalHook = Callable[[str], "str | None"]


@dataclass(frozen=True)
class EnvironmentEvent:
    """Something happened in the agent's environment; ``text`` is what the model is told."""

    text: str
    source: str = ""
    data: Any = None


@dataclass(frozen=True)
class EffectorEvent:
    """The model's answer to an environment event (``internal_depth`` 0) or to an internal query (>= 1)."""

    text: str
    turn_id: int
    internal_depth: int = 0
    cause: EnvironmentEvent | None = field(default=None, compare=False)


@dataclass(frozen=True)
class AgentError:
    """A turn failed or the internal hook raised; the loop carries on with the next event."""

    code: str  # "turn" (the model's Error/Cancelled event) or "hook"
    message: str
    cause: EnvironmentEvent | None = None
    exception: BaseException | None = field(default=None, compare=False)


class AgentLoop:
    def __init__(
        self,
        reactive: Any,
        session_id: str,
        *,
        max_internal_turns: int = 4,
        internal_hook: InternalHook | None = None,
        options: GenerationOptions | dict | None = None,
        turn_timeout: float = 300.0,
    ) -> None:
        if max_internal_turns < 0:
            raise ValueError(f"max_internal_turns={max_internal_turns} must be >= 0")
        self.reactive = reactive
        self.session = reactive.session(session_id)
        self.session_id = session_id
        self.max_internal_turns = max_internal_turns
        self.internal_hook = internal_hook
        self.options = options
        self.turn_timeout = turn_timeout
        self.effectors: Subject = Subject()
        self.errors: Subject = Subject()
        self._lock: asyncio.Lock | None = None
        self._queue: asyncio.Queue | None = None
        self._worker: asyncio.Task | None = None

    # -- one event -------------------------------------------------------------------------------------------
    async def handle(self, event: EnvironmentEvent | str) -> list[EffectorEvent]:
        """Process one environment event (and its internal chain); returns the effector events it produced."""
        if isinstance(event, str):
            event = EnvironmentEvent(event)
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:
            produced: list[EffectorEvent] = []
            text: str | None = event.text
            depth = 0
            while text is not None:
                answer = await self._turn(text, event)
                if answer is None:
                    break
                effector = EffectorEvent(answer.text, answer.turn_id, depth, event)
                produced.append(effector)
                self._publish(self.effectors, effector)
                if depth >= self.max_internal_turns or self.internal_hook is None:
                    break
                try:
                    text = self.internal_hook(answer.text)
                except Exception as exc:
                    log.warning("internal hook raised on turn %s: %r", answer.turn_id, exc)
                    self._publish(self.errors, AgentError("hook", f"internal hook raised {exc!r}", event, exc))
                    break
                if text is not None and not isinstance(text, str):
                    self._publish(self.errors, AgentError(
                        "hook", f"internal hook returned {type(text).__name__}, expected str or None", event))
                    break
                depth += 1
            return produced

    async def _turn(self, text: str, cause: EnvironmentEvent) -> AnswerDone | None:
        answer: AnswerDone | None = None
        try:
            async with asyncio.timeout(self.turn_timeout):
                async for ev in self.session.stream(text, self.options):
                    if isinstance(ev, AnswerDone):
                        answer = ev  # keep reading until the memory update is committed
                    elif isinstance(ev, (Error, Cancelled)):
                        detail = getattr(ev, "message", "") or ev.type
                        self._publish(self.errors, AgentError("turn", f"turn {ev.turn_id} failed: {detail}", cause))
                        return None
        except TimeoutError:
            self._publish(self.errors, AgentError("turn", f"no answer within {self.turn_timeout} s", cause))
            return None
        except Exception as exc:
            self._publish(self.errors, AgentError("turn", repr(exc), cause, exc))
            return None
        return answer

    def _publish(self, subject: Subject, item: Any) -> None:
        try:
            subject.on_next(item)
        except Exception:
            log.exception("an agent subscriber raised")

    # -- a stream of events ----------------------------------------------------------------------------------
    def attach(self, observable: abc.ObservableBase) -> abc.DisposableBase:
        """Handle every event of ``observable`` in order (call from the event loop that runs the agent).

        The observable may emit from any thread. Returns a Disposable that stops listening; `join` waits until
        the events received so far are handled.
        """
        loop = asyncio.get_running_loop()
        if self._queue is None:
            self._queue = asyncio.Queue()
            self._worker = loop.create_task(self._work())
        queue = self._queue

        def put(item: Any) -> None:
            loop.call_soon_threadsafe(queue.put_nowait, item)

        def on_error(exc: Exception) -> None:
            loop.call_soon_threadsafe(
                self._publish, self.errors, AgentError("environment", f"environment stream failed: {exc!r}",
                                                       None, exc)
            )

        subscription = observable.subscribe(on_next=put, on_error=on_error)
        return Disposable(subscription.dispose)

    async def _work(self) -> None:
        assert self._queue is not None
        while True:
            item = await self._queue.get()
            try:
                await self.handle(item)
            except Exception:
                log.exception("agent failed on %r", item)
            finally:
                self._queue.task_done()

    async def join(self, timeout: float | None = None) -> None:
        """Wait until every attached event received so far is handled."""
        if self._queue is None:
            return
        await asyncio.wait_for(self._queue.join(), timeout)

    async def aclose(self) -> None:
        """Stop the attach worker and complete the subjects."""
        if self._worker is not None:
            self._worker.cancel()
            try:
                await self._worker
            except asyncio.CancelledError:
                pass
            self._worker = None
        self.effectors.on_completed()
        self.errors.on_completed()


__all__ = ["AgentError", "AgentLoop", "EffectorEvent", "EnvironmentEvent"]

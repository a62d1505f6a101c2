"""Typed, immutable events of a turn: one set for the model-level chat (`rxt.chat.ReactiveChat`) and the runtime.

Every event carries ``session_id``, ``turn_id`` (the session's turn number, from 1), ``query_id`` (the id the
client gave its query, a string or an integer kept as given, "" if none) and ``seq``: a number that increases strictly across all events of one
`ReactiveModel` (or one `ReactiveChat`), so a consumer can order and deduplicate. The identity fields default
to empty, so a single in-process conversation can leave them out. Per turn the order is:

    QueryAccepted, Token*, AnswerDone, MemoryUpdateStarted, MemoryUpdated

or a turn ends early with Cancelled or Error. `to_dict` / `event_from_dict` give a msgpack- and JSON-safe form
with a ``type`` field ("query_accepted", "token", "answer", "memory_update_started", "memory_updated",
"cancelled", "error").
"""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass, field
from typing import Any, ClassVar


@dataclass(frozen=True)
class Event:
    session_id: str = ""
    turn_id: int = 0
    seq: int = 0
    query_id: str | int = ""
    type: ClassVar[str] = "event"

    def to_dict(self) -> dict[str, Any]:
        # Field by field, shallow: every field is a scalar, a string or a tuple of scalars, so this equals
        # ``dataclasses.asdict`` (tuples as lists) at a fraction of its cost (it deep-copies every value), which
        # the servers pay for every frame they send.
        data: dict[str, Any] = {"type": self.type}
        for name in _field_names(type(self)):
            value = getattr(self, name)
            data[name] = list(value) if isinstance(value, tuple) else value
        return data


@dataclass(frozen=True)
class QueryAccepted(Event):
    text: str = ""
    type: ClassVar[str] = "query_accepted"


@dataclass(frozen=True)
class Token(Event):
    """One generated token; ``text`` is the newly completed text ("" inside a multi-byte character)."""

    index: int = 0
    token_id: int = 0
    text: str = ""
    type: ClassVar[str] = "token"


def token_event(session_id: str, turn_id: int, seq: int, query_id: str | int, index: int, token_id: int,
                text: str) -> Token:
    """``Token(session_id=..., ...)``, made without the frozen dataclass's ``object.__setattr__`` per field (the
    instance's fields live in its ``__dict__`` either way): a third of the cost, and a server makes one per token
    per session. Equal to the constructor's event in every respect (fields, equality, hash, repr)."""
    event = _new(Token)
    event.__dict__.update(session_id=session_id, turn_id=turn_id, seq=seq, query_id=query_id, index=index,
                          token_id=token_id, text=text)
    return event


_new = object.__new__


@dataclass(frozen=True)
class AnswerDone(Event):
    text: str = ""
    token_ids: tuple[int, ...] = ()
    stopped_by_eos: bool = False
    log_probs: tuple[float, ...] = ()  # per token, when the query asked for them (options.return_log_probs)
    # Text the Token events still owe: an unfinished UTF-8 character at the very end of the answer, decoded as
    # U+FFFD. The Token texts followed by ``tail`` always equal ``text``.
    tail: str = ""
    type: ClassVar[str] = "answer"


@dataclass(frozen=True)
class MemoryUpdateStarted(Event):
    type: ClassVar[str] = "memory_update_started"


@dataclass(frozen=True)
class MemoryUpdated(Event):
    """The turn is committed: STM written and the session saved. ``version`` counts the session's updates.

    ``update_ms``: milliseconds from the moment the server knew the turn's answer was complete (its last token
    reached the model lane) to this commit: the memory-update pass, its wait on the device and the save. For a
    primed interaction or a reset, from the step that applied it. None where nothing measured it (the chat);
    not part of equality (a timing, not the turn's content)."""

    version: int = 0
    update_ms: float | None = field(default=None, compare=False)
    type: ClassVar[str] = "memory_updated"


@dataclass(frozen=True)
class Cancelled(Event):
    """The turn was cancelled; its partial answer is NOT written to memory (see docs/runtime.md)."""

    partial_text: str = ""
    type: ClassVar[str] = "cancelled"


@dataclass(frozen=True)
class Error(Event):
    """Something failed for this session (or, with an empty session_id, for one message)."""

    code: str = "internal"
    message: str = ""
    type: ClassVar[str] = "error"


@functools.cache
def _field_names(cls: type[Event]) -> tuple[str, ...]:
    return tuple(f.name for f in dataclasses.fields(cls))


EVENT_TYPES: dict[str, type[Event]] = {
    cls.type: cls for cls in (QueryAccepted, Token, AnswerDone, MemoryUpdateStarted, MemoryUpdated, Cancelled, Error)
}

TERMINAL_EVENTS = (MemoryUpdated, Cancelled, Error)


def event_from_dict(data: dict[str, Any]) -> Event:
    """Inverse of `Event.to_dict`; unknown types and fields raise ValueError naming them."""
    data = dict(data)
    kind = data.pop("type", None)
    cls = EVENT_TYPES.get(kind)
    if cls is None:
        raise ValueError(f"event type {kind!r} is unknown; known: {sorted(EVENT_TYPES)}")
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ValueError(f"{kind} event has unknown field(s) {unknown}")
    for key in ("token_ids", "log_probs"):
        if key in data:
            data[key] = tuple(data[key])
    return cls(**data)

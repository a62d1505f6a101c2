"""The runtime's events: the very classes of `rxt.events` (one set for chat, serving and MRL), re-exported."""

from rxt.events import (
    EVENT_TYPES,
    TERMINAL_EVENTS,
    AnswerDone,
    Cancelled,
    Error,
    Event,
    MemoryUpdated,
    MemoryUpdateStarted,
    QueryAccepted,
    Token,
    event_from_dict,
)

__all__ = [
    "EVENT_TYPES",
    "TERMINAL_EVENTS",
    "AnswerDone",
    "Cancelled",
    "Error",
    "Event",
    "MemoryUpdateStarted",
    "MemoryUpdated",
    "QueryAccepted",
    "Token",
    "event_from_dict",
]

"""The events of one streamed chat turn: the runtime's own classes (`rxt.events`), under their chat names.

There is one set of events and one `MemoryUpdated`: ``TokenGenerated`` is `rxt.events.Token` and
``AnswerCompleted`` is `rxt.events.AnswerDone`, so code written against the chat reads runtime events too.
"""

from __future__ import annotations

from rxt.events import AnswerDone, MemoryUpdated, MemoryUpdateStarted, Token

TokenGenerated = Token
AnswerCompleted = AnswerDone

ChatEvent = Token | AnswerDone | MemoryUpdateStarted | MemoryUpdated

__all__ = ["AnswerCompleted", "ChatEvent", "MemoryUpdated", "TokenGenerated"]

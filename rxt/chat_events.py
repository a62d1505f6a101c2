"""Typed events of one streamed turn (no magic integers: the reference used -1/-2 token ids as signals)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class TokenGenerated:
    """One answer token; ``text`` is the newly completed text (may be "" mid-way through a UTF-8 character)."""

    index: int
    token_id: int
    text: str


@dataclass(frozen=True)
class AnswerCompleted:
    """The whole answer is out; the memory update has not started yet."""

    text: str
    token_ids: tuple[int, ...]
    stopped_by_eos: bool
    tail: str = ""  # an unfinished character at the end that no TokenGenerated carried; tokens + tail == text


@dataclass(frozen=True)
class MemoryUpdated:
    """The interaction was encoded and written into STM; ``version`` counts committed updates."""

    version: int


ChatEvent = TokenGenerated | AnswerCompleted | MemoryUpdated

"""Typed, validated training records: plain text, one interaction, and a multi-turn episode.

Every record is a frozen dataclass with ``from_dict`` (validates, naming the missing or wrong-typed key) and
``to_dict`` (the JSON-ready form ``from_dict`` reads back). The on-disk episode format is the one of issue 4::

    {"query": str, "answer": str, "interactions": [{"query": str, "answer": str, "think": str?}, ...],
     "metadata": {...}?}

``query``/``answer`` are the first turn; ``interactions`` are the follow-up turns, in order.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any


class RecordError(ValueError):
    """A row that is not a valid record; the message names the key (and, from the loaders, the line)."""


def _require_mapping(data: Any, what: str) -> Mapping[str, Any]:
    if not isinstance(data, Mapping):
        raise RecordError(f"{what} must be an object/dict, got {type(data).__name__}")
    return data


def _get_str(data: Mapping[str, Any], key: str, where: str, optional: bool = False) -> str | None:
    if key not in data or (optional and data[key] is None):
        if optional:
            return None
        raise RecordError(f"{where}missing key {key!r}")
    value = data[key]
    if not isinstance(value, str):
        raise RecordError(f"{where}key {key!r} must be a str, got {type(value).__name__}")
    return value


@dataclass(frozen=True)
class TextRecord:
    """Plain text for language-model pre-training (MLM and autoregressive)."""

    text: str

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], where: str = "") -> TextRecord:
        """Build from ``{"text": str}``; ``where`` prefixes error messages (e.g. ``"line 3: "``)."""
        data = _require_mapping(data, f"{where}record")
        return cls(text=_get_str(data, "text", where))

    def to_dict(self) -> dict[str, Any]:
        return {"text": self.text}


@dataclass(frozen=True)
class InteractionRecord:
    """One query/answer turn; ``think`` is ``None`` when the turn has no ``[T]`` section."""

    query: str
    answer: str
    think: str | None = None

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], where: str = "") -> InteractionRecord:
        """Build from ``{"query": str, "answer": str, "think": str | None (optional)}``."""
        data = _require_mapping(data, f"{where}record")
        return cls(
            query=_get_str(data, "query", where),
            answer=_get_str(data, "answer", where),
            think=_get_str(data, "think", where, optional=True),
        )

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"query": self.query, "answer": self.answer}
        if self.think is not None:
            out["think"] = self.think
        return out


@dataclass(frozen=True)
class EpisodeRecord:
    """A multi-turn dialogue: the first turn (``query``, ``answer``) then ``interactions`` (follow-up turns).

    ``metadata`` is free-form JSON-able data (e.g. the synthetic generator's ``fact_key``, ``fact_value``,
    ``distance``); it is compared but not hashed.
    """

    query: str
    answer: str
    interactions: tuple[InteractionRecord, ...] = ()
    metadata: dict[str, Any] = field(default_factory=dict, hash=False)

    @property
    def turns(self) -> tuple[InteractionRecord, ...]:
        """All turns in order, the first one included: length ``1 + len(interactions)``."""
        return (InteractionRecord(self.query, self.answer), *self.interactions)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], where: str = "") -> EpisodeRecord:
        """Build from the episode format of the module docstring (``interactions`` and ``metadata`` optional)."""
        data = _require_mapping(data, f"{where}record")
        query = _get_str(data, "query", where)
        answer = _get_str(data, "answer", where)
        raw = data.get("interactions")
        if raw is None:
            raw = []
        if isinstance(raw, str | bytes) or not isinstance(raw, Iterable) or isinstance(raw, Mapping):
            raise RecordError(f"{where}key 'interactions' must be a list, got {type(raw).__name__}")
        turns = tuple(
            InteractionRecord.from_dict(item, where=f"{where}interactions[{i}]: ") for i, item in enumerate(raw)
        )
        metadata = data.get("metadata")
        if metadata is None:
            metadata = {}
        if isinstance(metadata, str):
            try:
                metadata = json.loads(metadata)
            except json.JSONDecodeError as exc:
                raise RecordError(f"{where}key 'metadata' is a str but not valid JSON: {exc}") from None
        if not isinstance(metadata, Mapping):
            raise RecordError(f"{where}key 'metadata' must be a dict, got {type(metadata).__name__}")
        return cls(query=query, answer=answer, interactions=turns, metadata=dict(metadata))

    def to_dict(self) -> dict[str, Any]:
        return {
            "query": self.query,
            "answer": self.answer,
            "interactions": [turn.to_dict() for turn in self.interactions],
            "metadata": dict(self.metadata),
        }


Record = TextRecord | InteractionRecord | EpisodeRecord

RECORD_KINDS: dict[str, type] = {"text": TextRecord, "interaction": InteractionRecord, "episode": EpisodeRecord}
"""Kind name -> record class, as accepted by the loaders."""


def record_class(kind: str) -> type:
    """The record class of ``kind`` (one of :data:`RECORD_KINDS`); ``ValueError`` naming the choices otherwise."""
    try:
        return RECORD_KINDS[kind]
    except (KeyError, TypeError):
        raise ValueError(f"kind must be one of {sorted(RECORD_KINDS)}, got {kind!r}") from None


def record_kind(record: Any) -> str:
    """The kind name of a record instance."""
    for kind, cls in RECORD_KINDS.items():
        if isinstance(record, cls):
            return kind
    raise TypeError(f"not a training record: {type(record).__name__}")


def records_fingerprint(records: Iterable[Record]) -> str:
    """A sha256 hex digest of the records' content (kind and ``to_dict`` of each, in order)."""
    digest = hashlib.sha256()
    for record in records:
        line = json.dumps([record_kind(record), record.to_dict()], sort_keys=True, ensure_ascii=False)
        digest.update(line.encode("utf-8"))
        digest.update(b"\n")
    return digest.hexdigest()


__all__ = [
    "RECORD_KINDS",
    "EpisodeRecord",
    "InteractionRecord",
    "Record",
    "RecordError",
    "TextRecord",
    "record_class",
    "record_kind",
    "records_fingerprint",
]

"""Rows of a dataset (a JSONL line, a Parquet row, a ``datasets`` row) as training records, in the formats
datasets on the Hugging Face Hub use:

- **messages**: ``{"messages": [{"role": "system"|"user"|"assistant", "content": str, "reasoning_content"?:
  str}, ...]}`` (ShareGPT's ``{"conversations": [{"from": "human"|"gpt", "value": str}]}`` too, through
  ``columns: {messages: conversations}``). Consecutive messages of one role are joined with a newline; each user
  message followed by an assistant message is one turn (``reasoning_content`` or ``think`` of the assistant is
  the turn's ``[T]`` section); system messages are skipped (an RxT takes a system prompt into memory at run time,
  not from the training pairs), and a last unanswered user message is dropped.
- **query / answer** (``think`` optional), the project's own interaction and episode formats.
- **text**.

A row gives: for kind ``episode`` one episode (all its turns); for ``interaction`` one record per turn; for
``text`` one ``"query answer"`` text per turn of a conversation, or its ``text``. ``columns`` maps a record key to
the dataset's column name (``{query: question, answer: response}``, ``{messages: conversations}``).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Mapping
from typing import Any

from training.data.records import (
    EpisodeRecord,
    InteractionRecord,
    Record,
    RecordError,
    TextRecord,
    record_class,
)

MESSAGES_KEY = "messages"
_ROLE_ALIASES = {"human": "user", "gpt": "assistant", "bot": "assistant", "model": "assistant"}


def _rename(row: Mapping[str, Any], columns: Mapping[str, str] | None) -> Mapping[str, Any]:
    if not columns:
        return row
    missing = sorted(col for col in columns.values() if col not in row)
    if missing:
        raise RecordError(f"columns: the row has no column(s) {missing} (it has {sorted(row)})")
    return {**row, **{key: row[col] for key, col in columns.items()}}


def messages_turns(messages: Any) -> list[InteractionRecord]:
    """The (query, answer) turns of a ``messages`` list (see the module docstring)."""
    if isinstance(messages, str | bytes) or not isinstance(messages, Iterable):
        raise RecordError(f"key 'messages' must be a list of {{role, content}} dicts, got {type(messages).__name__}")
    merged: list[list[Any]] = []  # [role, content, reasoning]
    for i, message in enumerate(messages):
        if not isinstance(message, Mapping):
            raise RecordError(f"messages[{i}] must be a dict with 'role' and 'content', got {type(message).__name__}")
        role = message.get("role", message.get("from"))
        content = message.get("content", message.get("value"))
        role = _ROLE_ALIASES.get(role, role)
        if role not in ("system", "user", "assistant"):
            raise RecordError(f"messages[{i}]: role {role!r} is not one of system, user, assistant")
        if not isinstance(content, str):
            raise RecordError(f"messages[{i}]: 'content' must be a str, got {type(content).__name__}")
        reasoning = message.get("reasoning_content") or message.get("think")
        if role == "system":
            continue
        if merged and merged[-1][0] == role:
            merged[-1][1] += "\n" + content
            if reasoning:
                merged[-1][2] = f"{merged[-1][2]}\n{reasoning}" if merged[-1][2] else reasoning
        else:
            merged.append([role, content, reasoning or None])
    return [InteractionRecord(first[1], second[1], second[2])
            for first, second in itertools.pairwise(merged) if first[0] == "user" and second[0] == "assistant"]


def row_records(row: Mapping[str, Any], kind: str, columns: Mapping[str, str] | None = None) -> list[Record]:
    """The records of one row (raises `RecordError` naming the key)."""
    cls = record_class(kind)
    if not isinstance(row, Mapping):
        raise RecordError(f"record must be an object/dict, got {type(row).__name__}")
    row = _rename(row, columns)
    if MESSAGES_KEY in row and not ("query" in row and "answer" in row):
        turns = messages_turns(row[MESSAGES_KEY])
        if not turns:
            raise RecordError("key 'messages' holds no user message answered by an assistant message")
        if kind == "episode":
            return [EpisodeRecord(turns[0].query, turns[0].answer, tuple(turns[1:]))]
        if kind == "interaction":
            return list(turns)
        return [TextRecord(f"{t.query} {t.answer}") for t in turns]
    if kind == "text" and "text" not in row and "query" in row and "answer" in row:
        turn = InteractionRecord.from_dict(row)
        return [TextRecord(f"{turn.query} {turn.answer}")]
    return [cls.from_dict(row)]


def rows_to_records(
    rows: Iterable[Mapping[str, Any]], kind: str, *, where: str, unit: str = "row",
    columns: Mapping[str, str] | None = None, limit: int | None = None,
) -> list[Record]:
    """Records of ``rows`` in order, stopping once ``limit`` records are read (a streamed dataset is not read
    further). Errors are ``"<where>: <unit> N: ..."`` (1-based)."""
    out: list[Record] = []
    for number, row in enumerate(rows, start=1):
        try:
            out.extend(row_records(row, kind, columns))
        except RecordError as exc:
            raise RecordError(f"{where}: {unit} {number}: {exc}") from None
        if limit is not None and len(out) >= limit:
            return out[:limit]
    return out


__all__ = ["MESSAGES_KEY", "messages_turns", "row_records", "rows_to_records"]

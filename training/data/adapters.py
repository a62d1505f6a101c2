"""Adapters for the packaged conversation corpora: ``chitchat-dataset`` and ``chatterbot-corpus`` (offline).

chitchat (the Chit Chat Challenge, ~7k conversations) stores each conversation as ``{"messages": [[utterance,
...], ...]}``: each inner list is one speaker's consecutive utterances (one "message"). Consecutive messages are
paired as (query, answer): messages 0/1 are turn 1, 2/3 turn 2, ... An unpaired last message is dropped.

chatterbot-corpus stores YAML files ``{"categories": [...], "conversations": [[line, line, ...], ...]}``; each
consecutive pair of lines in a conversation is a (query, answer) pair.

**Held-out chitchat.** The last `CHITCHAT_HELD_OUT` conversations of the packaged file are the ``"eval"`` split;
``"train"`` (the default of every training source) is the rest, whatever its ``limit``. The benchmarks score
chitchat perplexity on the eval split: a training source that read the whole file (the stateless baseline's
``limit: 50000`` episodes did, before the split existed) would be scored on conversations it memorised.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterator, Sequence
from pathlib import Path

from training.data.records import EpisodeRecord, InteractionRecord


def _clean(text: str) -> str:
    return " ".join(text.split())


CHITCHAT_HELD_OUT = 256  # conversations at the end of the packaged file: the "eval" split
CHITCHAT_SPLITS = ("train", "eval")


def _chitchat_messages(path: str | None, split: str = "train") -> Iterator[tuple[str, list[str]]]:
    """Yield ``(conversation_id, messages)`` of the ``split``'s conversations, each message the joined text of one
    speaker's block."""
    import chitchat_dataset as ccc

    if split not in CHITCHAT_SPLITS:
        raise ValueError(f"chitchat split: expected one of {list(CHITCHAT_SPLITS)}, got {split!r}")
    data = list((ccc.Dataset() if path is None else ccc.Dataset(path)).items())
    first_held_out = max(len(data) - CHITCHAT_HELD_OUT, 0)
    data = data[first_held_out:] if split == "eval" else data[:first_held_out]
    for conv_id, conv in data:
        merged: list[tuple[str | None, str]] = []
        for block in conv.get("messages", []):
            text = _clean(" ".join(u.get("text", "") for u in block if isinstance(u.get("text"), str)))
            sender = block[0].get("sender") if block else None
            if not text:
                continue
            if merged and sender is not None and merged[-1][0] == sender:
                merged[-1] = (sender, merged[-1][1] + " " + text)  # same speaker twice in a row: one message
            else:
                merged.append((sender, text))
        yield conv_id, [text for _, text in merged]


def _pairs(messages: Sequence[str]) -> list[InteractionRecord]:
    return [InteractionRecord(messages[i], messages[i + 1]) for i in range(0, len(messages) - 1, 2)]


def chitchat_episodes(
    max_turns: int = 8, min_turns: int = 2, limit: int | None = None, path: str | None = None, split: str = "train"
) -> list[EpisodeRecord]:
    """Chitchat conversations of ``split`` (``"train"`` or the held-out ``"eval"``) as episodes of
    ``min_turns .. max_turns`` turns.

    A conversation longer than ``max_turns`` turns is cut into consecutive chunks of ``max_turns`` (a last chunk
    shorter than ``min_turns`` is dropped). ``metadata = {"source": "chitchat", "conversation_id", "chunk"}``.
    Order follows the packaged file, so the output is deterministic.
    """
    if max_turns < 1 or min_turns < 1 or min_turns > max_turns:
        raise ValueError(f"need 1 <= min_turns <= max_turns, got min_turns={min_turns}, max_turns={max_turns}")
    episodes: list[EpisodeRecord] = []
    for conv_id, messages in _chitchat_messages(path, split):
        turns = _pairs(messages)
        for chunk, start in enumerate(range(0, len(turns), max_turns)):
            part = turns[start : start + max_turns]
            if len(part) < min_turns:
                continue
            episodes.append(
                EpisodeRecord(
                    query=part[0].query,
                    answer=part[0].answer,
                    interactions=tuple(part[1:]),
                    metadata={"source": "chitchat", "conversation_id": conv_id, "chunk": chunk},
                )
            )
            if limit is not None and len(episodes) >= limit:
                return episodes
    return episodes


def chitchat_interactions(
    limit: int | None = None, path: str | None = None, split: str = "train"
) -> list[InteractionRecord]:
    """Every (query, answer) pair of every chitchat conversation of ``split``, in file order."""
    out: list[InteractionRecord] = []
    for _, messages in _chitchat_messages(path, split):
        for pair in _pairs(messages):
            out.append(pair)
            if limit is not None and len(out) >= limit:
                return out
    return out


def chatterbot_interactions(
    language: str = "english", categories: Sequence[str] | None = None, limit: int | None = None
) -> list[InteractionRecord]:
    """(query, answer) pairs from the chatterbot corpus of ``language``.

    Args:
        categories: file stems to read (e.g. ``["greetings", "ai"]``); default every file, sorted by name.

    Raises:
        FileNotFoundError: naming the missing language directory or category file.
    """
    import chatterbot_corpus
    import yaml

    root = Path(os.path.dirname(chatterbot_corpus.__file__)) / "data" / language
    if not root.is_dir():
        raise FileNotFoundError(f"chatterbot corpus has no language directory {root}")
    files = sorted(root.glob("*.yml")) if categories is None else [root / f"{c}.yml" for c in categories]
    out: list[InteractionRecord] = []
    for file in files:
        if not file.is_file():
            raise FileNotFoundError(f"chatterbot corpus category file not found: {file}")
        data = yaml.safe_load(file.read_text(encoding="utf-8")) or {}
        for conversation in data.get("conversations") or []:
            lines = [_clean(str(x)) for x in conversation if isinstance(x, str | int | float)]
            for q, a in itertools.pairwise(lines):
                if q and a:
                    out.append(InteractionRecord(q, a))
                    if limit is not None and len(out) >= limit:
                        return out
    return out


__all__ = [
    "CHITCHAT_HELD_OUT", "CHITCHAT_SPLITS", "chatterbot_interactions", "chitchat_episodes", "chitchat_interactions",
]

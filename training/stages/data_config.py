"""The ``data:`` section shared by every stage config: a list of sources, concatenated in order.

YAML::

    data:
      - {kind: synthetic, limit: 200, synthetic: {num_episodes: 100, num_turns: 2, seed: 0}}
      - {kind: chitchat, limit: 200}
      - {kind: jsonl, path: data/train.jsonl}
      - {kind: hub, name: owner/dataset, split: train, limit: 1000}
      - {kind: hub, name: owner/chats, subset: en, columns: {messages: conversations}, streaming: true, limit: 5000}
      - {kind: hub, name: json, data_files: data/chats.jsonl}        # a packaged builder on local files
      - {kind: hub, name: data/saved}                                # a Dataset.save_to_disk directory

Kinds and what they give for each record kind (``text`` / ``interaction`` / ``episode``):

==========  =======================================================================================
jsonl       records of the requested kind from a local JSONL file (``path``)
parquet     records of the requested kind from a local Parquet file (``path``)
hub         records of the requested kind from ``datasets.load_dataset(name, subset, split=split,
            data_files=data_files, streaming=streaming)`` (``load_from_disk`` for a ``save_to_disk`` directory)
chitchat    the packaged chitchat corpus: one text ``"query answer"`` per turn / its turns / episodes
chatterbot  the packaged chatterbot corpus: texts / (query, answer) pairs; no episodes
synthetic   `SyntheticDialogueConfig(**synthetic)` memory dialogues: `synthetic_records` (a question merged with
            its statements into one sequence) as texts / interactions; episodes
==========  =======================================================================================

Rows of ``jsonl``, ``parquet`` and ``hub`` sources may be in the ``messages`` format (role/content lists), the
query/answer format or text (:mod:`training.data.rows`); ``columns`` maps a record key to the source's column
name (``{query: question, answer: response}``, ``{messages: conversations}``). ``streaming`` (hub only) reads a
large Hub dataset row by row, up to ``limit`` records, without downloading all of it.

``limit`` keeps the first ``limit`` records of the source (after conversion). Problems are `ConfigError` naming
the key (``data[1].path`` ...), raised by `check_sources` before anything heavy runs.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from training.config import ConfigError
from training.data.records import EpisodeRecord, InteractionRecord, Record, TextRecord, record_class

SOURCE_KINDS = ("jsonl", "parquet", "hub", "chitchat", "chatterbot", "synthetic")


@dataclass
class DataSource:
    kind: Literal["jsonl", "parquet", "hub", "chitchat", "chatterbot", "synthetic"]
    path: str | None = None  # jsonl / parquet file
    name: str | None = None  # hub dataset id
    split: str = "train"  # hub split; chitchat: "train" or the held-out "eval" conversations
    limit: int | None = None  # keep the first `limit` records
    synthetic: dict[str, Any] | None = None  # SyntheticDialogueConfig fields
    columns: dict[str, str] | None = None  # record key -> column name (jsonl / parquet / hub)
    subset: str | None = None  # hub: the dataset's configuration name
    data_files: str | list[str] | dict[str, Any] | None = None  # hub: load_dataset's data_files
    streaming: bool = False  # hub: read rows as they arrive, up to `limit` records

    def __post_init__(self) -> None:
        if self.kind not in SOURCE_KINDS:
            raise ConfigError(f"config key 'kind': expected one of {list(SOURCE_KINDS)}, got {self.kind!r}")
        if self.kind in ("jsonl", "parquet") and not self.path:
            raise ConfigError(f"config key 'path': a {self.kind} source needs a file path")
        if self.kind == "hub" and not self.name:
            raise ConfigError("config key 'name': a hub source needs a dataset name")
        if self.limit is not None and self.limit < 1:
            raise ConfigError(f"config key 'limit': must be >= 1 or null, got {self.limit}")
        if self.kind == "chitchat":
            from training.data.adapters import CHITCHAT_SPLITS

            if self.split not in CHITCHAT_SPLITS:
                raise ConfigError(f"config key 'split': a chitchat source reads one of {list(CHITCHAT_SPLITS)}, "
                                  f"got {self.split!r}")
        if self.synthetic is not None and self.kind != "synthetic":
            raise ConfigError(f"config key 'synthetic': only for kind 'synthetic', not {self.kind!r}")
        for key in ("subset", "data_files", "streaming"):
            if getattr(self, key) not in (None, False) and self.kind != "hub":
                raise ConfigError(f"config key {key!r}: only for kind 'hub', not {self.kind!r}")
        if self.columns is not None and self.kind not in ("jsonl", "parquet", "hub"):
            raise ConfigError(f"config key 'columns': only for kinds jsonl, parquet and hub, not {self.kind!r}")
        if self.kind == "synthetic":
            self.synthetic_config()  # fail now, naming the field

    def synthetic_config(self):
        from training.data.synthetic import SyntheticDialogueConfig

        fields = {f.name for f in dataclasses.fields(SyntheticDialogueConfig)}
        raw = dict(self.synthetic or {})
        unknown = sorted(set(raw) - fields)
        if unknown:
            raise ConfigError(f"config key 'synthetic.{unknown[0]}' is unknown; valid keys: {sorted(fields)}")
        for name in ("distance", "num_facts", "groups"):  # YAML lists
            if isinstance(raw.get(name), list):
                raw[name] = tuple(raw[name])
        try:
            return SyntheticDialogueConfig(**raw)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"config key 'synthetic': {exc}") from exc


def check_sources(sources: Sequence[DataSource], key: str = "data", *, required: bool = True) -> None:
    """Cheap checks before training: at least one source (when ``required``) and local files exist."""
    if required and not sources:
        raise ConfigError(f"config key {key!r}: needs at least one data source")
    for i, source in enumerate(sources):
        if source.kind in ("jsonl", "parquet"):
            path = Path(source.path or "")
            if not path.is_file():
                raise ConfigError(f"config key '{key}[{i}].path': file {str(path)!r} does not exist")


def _turn_text(turn: InteractionRecord) -> TextRecord:
    return TextRecord(f"{turn.query} {turn.answer}")


def _convert(records: Sequence[Record], record_kind: str, where: str) -> list[Record]:
    """Episodes/interactions to the requested kind (episode -> its turns -> texts)."""
    out: list[Record] = []
    for record in records:
        if record_kind == "episode":
            if not isinstance(record, EpisodeRecord):
                raise ConfigError(f"config key {where!r}: this source has no multi-turn episodes")
            out.append(record)
            continue
        turns = record.turns if isinstance(record, EpisodeRecord) else (record,)
        for turn in turns:
            out.append(turn if record_kind == "interaction" else _turn_text(turn))
    return out


def _load_one(source: DataSource, record_kind: str, where: str) -> list[Record]:
    from training.data import adapters, loaders

    limit = source.limit
    if source.kind == "jsonl":
        records = loaders.load_jsonl(source.path, record_kind, columns=source.columns)
    elif source.kind == "parquet":
        records = loaders.load_parquet(source.path, record_kind, columns=source.columns)
    elif source.kind == "hub":
        records = loaders.from_hub(
            source.name, record_kind, split=source.split, limit=limit, columns=source.columns,
            subset=source.subset, data_files=source.data_files, streaming=source.streaming,
        )
    elif source.kind == "chitchat":
        if record_kind == "episode":
            records = adapters.chitchat_episodes(limit=limit, split=source.split)
        else:
            records = _convert(adapters.chitchat_interactions(limit=limit, split=source.split), record_kind, where)
    elif source.kind == "chatterbot":
        records = _convert(adapters.chatterbot_interactions(limit=limit), record_kind, where)
    else:
        from training.data.synthetic import synthetic_records

        records = _convert(synthetic_records(source.synthetic_config(), record_kind), record_kind, where)
    return list(records[:limit] if limit is not None else records)


def load_sources(sources: Sequence[DataSource], record_kind: str, key: str = "data") -> list[Record]:
    """All records of ``sources``, in order, as ``record_kind`` (``"text"``, ``"interaction"``, ``"episode"``)."""
    try:
        record_class(record_kind)
    except ValueError as exc:
        raise ConfigError(f"record kind: {exc}") from exc
    check_sources(sources, key, required=False)
    out: list[Record] = []
    for i, source in enumerate(sources):
        records = _load_one(source, record_kind, f"{key}[{i}]")
        if not records:
            raise ConfigError(f"config key '{key}[{i}]': the {source.kind} source gave no records")
        out.extend(records)
    return out


__all__ = ["SOURCE_KINDS", "DataSource", "check_sources", "load_sources"]

"""Pre-tokenisation with an on-disk cache.

The cache file is keyed by sha256 of (format version, the tokenizer's JSON, the records' content fingerprint, the
caller's ``key_params``): a different tokenizer, different data or different params never hit a stale file. It is
an ``.npz`` holding the flat int32 ids and their offsets, written atomically (temp file, fsync, ``os.replace``).

What is cached per record:
- a :class:`~training.data.records.TextRecord`: ``[BOS] text [EOS]`` (list[int]);
- an :class:`~training.data.records.InteractionRecord`: ``[BOS][Q] q ([T] t) [A] a [EOS]`` (list[int]);
- an :class:`~training.data.records.EpisodeRecord`: one such list per turn (list[list[int]]).
Pass a dataset of :mod:`training.data.datasets` to use its ``encode_record`` (its class name joins the key).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from rxt.atomic_io import atomic_write_bytes
from rxt.template import InteractionTemplate
from rxt.tokenizer import RxTokenizer
from training.data.records import EpisodeRecord, InteractionRecord, TextRecord, records_fingerprint

CACHE_FORMAT_VERSION = 1


@dataclass(frozen=True)
class Pretokenized:
    """Token ids per record, where they are cached and whether the cache was hit. Indexable like ``ids``."""

    ids: list[Any]
    path: Path
    hit: bool

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index: int) -> Any:
        return self.ids[index]


def _encoder(tokenizer: RxTokenizer, source: Any):
    if hasattr(source, "encode_record") and hasattr(source, "records"):
        return source.encode_record
    template = InteractionTemplate(tokenizer)

    def encode(record: Any) -> Any:
        if isinstance(record, TextRecord):
            return [tokenizer.bos_id, *tokenizer.encode(record.text), tokenizer.eos_id]
        if isinstance(record, InteractionRecord):
            return template.interaction_ids(record.query, record.answer, record.think)
        if isinstance(record, EpisodeRecord):
            return [template.interaction_ids(t.query, t.answer, t.think) for t in record.turns]
        raise TypeError(f"cannot pre-tokenize a {type(record).__name__}")

    return encode


def cache_key(tokenizer: RxTokenizer, records: Sequence[Any], key_params: dict[str, Any] | None = None) -> str:
    """The sha256 hex key of (format version, tokenizer JSON, records fingerprint, key_params)."""
    digest = hashlib.sha256()
    digest.update(f"rxnn-pretokenize-v{CACHE_FORMAT_VERSION}\n".encode())
    digest.update(hashlib.sha256(tokenizer.to_str().encode("utf-8")).digest())
    digest.update(records_fingerprint(records).encode())
    digest.update(json.dumps(key_params or {}, sort_keys=True, default=str).encode("utf-8"))
    return digest.hexdigest()


def _save(path: Path, ids: list[Any], nested: bool) -> None:
    if nested:
        turn_counts = np.array([len(turns) for turns in ids], dtype=np.int64)
        flat_lists = [seq for turns in ids for seq in turns]
    else:
        turn_counts = np.zeros(0, dtype=np.int64)
        flat_lists = ids
    lengths = np.array([len(seq) for seq in flat_lists], dtype=np.int64)
    flat = np.fromiter((t for seq in flat_lists for t in seq), dtype=np.int32, count=int(lengths.sum()))
    buffer = io.BytesIO()
    np.savez(buffer, flat=flat, lengths=lengths, turn_counts=turn_counts, nested=np.array(nested))
    atomic_write_bytes(path, buffer.getvalue())


def _load(path: Path) -> list[Any]:
    with np.load(path) as data:
        flat, lengths = data["flat"], data["lengths"]
        nested, turn_counts = bool(data["nested"]), data["turn_counts"]
    bounds = np.concatenate([[0], np.cumsum(lengths)])
    seqs = [flat[bounds[i] : bounds[i + 1]].tolist() for i in range(len(lengths))]
    if not nested:
        return seqs
    out, pos = [], 0
    for count in turn_counts.tolist():
        out.append(seqs[pos : pos + count])
        pos += count
    return out


def pretokenize(
    dataset_or_records: Any,
    tokenizer: RxTokenizer,
    cache_dir: str | os.PathLike[str],
    key_params: dict[str, Any] | None = None,
) -> Pretokenized:
    """Token ids of every record, loaded from ``cache_dir`` on a hit, computed and cached on a miss.

    Args:
        dataset_or_records: a sequence of records (one kind), or a dataset of :mod:`training.data.datasets`
            (its ``records`` and ``encode_record`` are used).
        key_params: anything else that changes the ids (JSON-able); part of the key.

    Returns:
        :class:`Pretokenized` with ``ids`` (list[list[int]], or list[list[list[int]]] for episodes).
    """
    params = dict(key_params or {})
    if hasattr(dataset_or_records, "encode_record") and hasattr(dataset_or_records, "records"):
        records = list(dataset_or_records.records)
        params["__dataset__"] = type(dataset_or_records).__name__
    else:
        records = list(dataset_or_records)
    path = Path(cache_dir) / f"pretok-{cache_key(tokenizer, records, params)[:40]}.npz"
    if path.is_file():
        return Pretokenized(_load(path), path, hit=True)
    encode = _encoder(tokenizer, dataset_or_records)
    ids = [encode(record) for record in records]
    nested = bool(records) and isinstance(records[0], EpisodeRecord)
    _save(path, ids, nested)
    return Pretokenized(ids, path, hit=False)


__all__ = ["CACHE_FORMAT_VERSION", "Pretokenized", "cache_key", "pretokenize"]

"""Loading records: local JSONL / Parquet, Hugging Face ``datasets`` (fail-fast offline), concat and split.

Every loader returns a ``list`` of records of one kind (``"text"``, ``"interaction"`` or ``"episode"``, see
:mod:`training.data.records`). Errors name the file, the line (JSONL, 1-based) or row (Parquet, 1-based) and the
key that is wrong.
"""

from __future__ import annotations

import json
import os
import random
import socket
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from rxt.atomic_io import atomic_write_bytes
from training.data.records import Record, RecordError, record_class, record_kind
from training.data.rows import row_records, rows_to_records

OFFLINE_VARIABLES: tuple[str, ...] = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")
"""Environment variables that put the Hugging Face libraries offline; :func:`from_hub` checks them first."""

_TRUE_VALUES = {"1", "true", "yes", "on"}
_LOCAL_BUILDERS = {"json", "csv", "parquet", "text", "arrow", "pandas", "imagefolder", "audiofolder"}


def _existing_file(path: str | os.PathLike[str]) -> Path:
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"data file not found: {path}")
    if not path.is_file():
        raise FileNotFoundError(f"data path is not a file: {path}")
    return path


def load_jsonl(path: str | os.PathLike[str], kind: str, *, columns: Mapping[str, str] | None = None) -> list[Record]:
    """Read the records of every non-blank line of a JSONL file (any row format of :mod:`training.data.rows`).

    Raises:
        FileNotFoundError: naming ``path``.
        ValueError: ``"<path>: line N: ..."`` for invalid JSON or a missing / wrong-typed key.
    """
    record_class(kind)
    path = _existing_file(path)
    records: list[Record] = []
    with path.open("r", encoding="utf-8") as handle:
        for lineno, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path}: line {lineno}: invalid JSON ({exc.msg})") from None
            try:
                records.extend(row_records(row, kind, columns))
            except RecordError as exc:
                raise RecordError(f"{path}: line {lineno}: {exc}") from None
    return records


def load_parquet(path: str | os.PathLike[str], kind: str, *, columns: Mapping[str, str] | None = None) -> list[Record]:
    """Read the records of every row of a Parquet file (columns named like the record's keys, or ``columns``).

    An episode's ``metadata`` column may hold JSON text (what :func:`save_parquet` writes) or a struct.

    Raises:
        FileNotFoundError: naming ``path``.
        ValueError: ``"<path>: row N: ..."`` naming the missing / wrong-typed key.
    """
    import pyarrow.parquet as pq

    record_class(kind)
    path = _existing_file(path)
    return rows_to_records(pq.read_table(path).to_pylist(), kind, where=str(path), columns=columns)



def save_jsonl(records: Iterable[Record], path: str | os.PathLike[str]) -> Path:
    """Write records as JSONL (atomically: temp file, fsync, ``os.replace``); return the path."""
    lines = [json.dumps(record.to_dict(), ensure_ascii=False) for record in records]
    path = Path(path)
    atomic_write_bytes(path, ("\n".join(lines) + ("\n" if lines else "")).encode("utf-8"))
    return path


def save_parquet(records: Sequence[Record], path: str | os.PathLike[str]) -> Path:
    """Write records of one kind as Parquet (atomically); episode ``metadata`` is stored as JSON text."""
    import io

    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = []
    for record in records:
        row = record.to_dict()
        if "metadata" in row:
            row["metadata"] = json.dumps(row["metadata"], ensure_ascii=False, sort_keys=True)
        if "interactions" in row:
            row["interactions"] = [{"think": None, **turn} for turn in row["interactions"]]
        elif "query" in row:
            row.setdefault("think", None)
        rows.append(row)
    buffer = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(rows), buffer)
    path = Path(path)
    atomic_write_bytes(path, buffer.getvalue())
    return path


# ---------------------------------------------------------------------------------------------- Hugging Face Hub
def _offline_variable() -> str | None:
    for name in OFFLINE_VARIABLES:
        if os.environ.get(name, "").strip().lower() in _TRUE_VALUES:
            return name
    return None


def _is_local(name: str) -> bool:
    return name in _LOCAL_BUILDERS or Path(name).exists()


def _probe_hub(name: str, timeout: float) -> None:
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
    parsed = urlparse(endpoint)
    host = parsed.hostname or "huggingface.co"
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    try:
        with socket.create_connection((host, port), timeout=timeout):
            pass
    except OSError as exc:
        raise RuntimeError(
            f"cannot load dataset {name!r} from the Hugging Face Hub: {host}:{port} is unreachable ({exc}). "
            f"Set {OFFLINE_VARIABLES[1]}=1 to work offline and load local files with load_jsonl/load_parquet."
        ) from None


def is_saved_dataset(path: str | os.PathLike[str]) -> bool:
    """A directory written by ``datasets.Dataset(Dict).save_to_disk`` (read with ``load_from_disk``)."""
    path = Path(path)
    return path.is_dir() and ((path / "dataset_dict.json").is_file() or (path / "state.json").is_file())


def _open_dataset(name: str, split: str, subset: str | None, data_files: Any, streaming: bool, kwargs: dict):
    import datasets

    if is_saved_dataset(name):
        data = datasets.load_from_disk(name)
        if isinstance(data, datasets.DatasetDict):
            if split not in data:
                raise ValueError(f"dataset {name!r} has no split {split!r}; it has {sorted(data)}")
            data = data[split]
        return data.to_iterable_dataset() if streaming else data
    return datasets.load_dataset(name, subset, split=split, data_files=data_files, streaming=streaming, **kwargs)


def from_hub(
    name: str,
    kind: str,
    split: str = "train",
    *,
    columns: Mapping[str, str] | None = None,
    limit: int | None = None,
    subset: str | None = None,
    data_files: str | Sequence[str] | Mapping[str, Any] | None = None,
    streaming: bool = False,
    probe_timeout: float = 3.0,
    **kwargs: Any,
) -> list[Record]:
    """Load a Hugging Face dataset as records: ``datasets.load_dataset(name, subset, split=split,
    data_files=data_files, streaming=streaming, **kwargs)``, or ``datasets.load_from_disk(name)`` for a directory
    written by ``save_to_disk``. Rows may be in any format of :mod:`training.data.rows` (``messages``, query/answer,
    text).

    Fails fast rather than hanging: for a Hub name (not a local path or a packaged builder such as ``"json"``),
    a set :data:`OFFLINE_VARIABLES` raises at once, and otherwise a TCP connection to the Hub (``HF_ENDPOINT``) must
    open within ``probe_timeout`` seconds.

    Args:
        name: Hub id (``"owner/name"``), local path (a ``save_to_disk`` directory too), or packaged builder name
            (``"json"``, ``"parquet"``, ... with ``data_files``).
        kind: record kind, ``"text"``, ``"interaction"`` or ``"episode"``.
        columns: record key -> dataset column, for datasets whose columns are named differently.
        limit: keep only the first ``limit`` records; with ``streaming`` no more rows than that are read.
        subset: the dataset's configuration (``name`` argument of ``load_dataset``).
        data_files: files of a builder or a Hub repo (``load_dataset``'s ``data_files``).
        streaming: read rows as they arrive instead of downloading the whole dataset first (large Hub datasets).

    Raises:
        RuntimeError: offline, naming the dataset and the variable (or the unreachable host).
        ValueError: ``"<name>[<split>]: row N: ..."`` naming a missing / wrong-typed key.
    """
    record_class(kind)
    if not _is_local(name):
        variable = _offline_variable()
        if variable is not None:
            raise RuntimeError(
                f"cannot load dataset {name!r} from the Hugging Face Hub: {variable}="
                f"{os.environ[variable]!r} puts it offline. Unset {variable} or load local files instead "
                "(load_jsonl / load_parquet)."
            )
        _probe_hub(name, probe_timeout)
    data = _open_dataset(name, split, subset, data_files, streaming, kwargs)
    return rows_to_records(data, kind, where=f"{name}[{split}]", columns=columns, limit=limit)


# ---------------------------------------------------------------------------------------------- combining
def concat(*sources: Iterable[Record]) -> list[Record]:
    """All records of ``sources`` in order, as one list; every record must be of the same kind.

    Raises:
        TypeError: naming the source and position of the first record of a different kind.
    """
    out: list[Record] = []
    kind: str | None = None
    for s, source in enumerate(sources):
        for i, record in enumerate(source):
            this = record_kind(record)
            if kind is None:
                kind = this
            elif this != kind:
                raise TypeError(f"concat: sources[{s}][{i}] is a {this!r} record, expected {kind!r}")
            out.append(record)
    return out


def train_val_split(
    records: Sequence[Record], val_fraction: float, seed: int = 0
) -> tuple[list[Record], list[Record]]:
    """Deterministic random split into ``(train, val)``; each keeps the original order.

    ``len(val) == round(len(records) * val_fraction)``, at least 1 when ``val_fraction > 0`` and there are at least
    two records. The same (records, val_fraction, seed) always gives the same split.
    """
    if isinstance(val_fraction, bool) or not isinstance(val_fraction, int | float):
        raise TypeError(f"val_fraction must be a float, got {type(val_fraction).__name__}")
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    records = list(records)
    n = len(records)
    n_val = round(n * val_fraction)
    if val_fraction > 0 and n >= 2:
        n_val = max(n_val, 1)
    n_val = min(n_val, max(n - 1, 0))
    order = list(range(n))
    random.Random(f"train_val_split:{seed}").shuffle(order)
    val_idx = set(order[:n_val])
    train = [r for i, r in enumerate(records) if i not in val_idx]
    val = [r for i, r in enumerate(records) if i in val_idx]
    return train, val


__all__ = [
    "OFFLINE_VARIABLES",
    "concat",
    "from_hub",
    "is_saved_dataset",
    "load_jsonl",
    "load_parquet",
    "save_jsonl",
    "save_parquet",
    "train_val_split",
]

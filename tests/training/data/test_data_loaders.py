"""Records and loaders: round trips, errors naming line/row and key, offline from_hub, concat and split."""

from __future__ import annotations

import json
import time

import pytest

from training.data.loaders import (
    concat,
    from_hub,
    load_jsonl,
    load_parquet,
    save_jsonl,
    save_parquet,
    train_val_split,
)
from training.data.records import EpisodeRecord, InteractionRecord, RecordError, TextRecord

EPISODES = [
    EpisodeRecord("hi", "hello", (InteractionRecord("q2", "a2"), InteractionRecord("q3", "a3", think="t")), {"k": 1}),
    EpisodeRecord("only", "one"),
]
INTERACTIONS = [InteractionRecord("What?", "That.", None), InteractionRecord("Why?", "Because.", "hmm")]
TEXTS = [TextRecord("alpha"), TextRecord("béta 🙂")]


@pytest.mark.parametrize("kind,records", [("text", TEXTS), ("interaction", INTERACTIONS), ("episode", EPISODES)])
def test_jsonl_and_parquet_round_trip(tmp_path, kind, records):
    assert load_jsonl(save_jsonl(records, tmp_path / "d.jsonl"), kind) == records
    assert load_parquet(save_parquet(records, tmp_path / "d.parquet"), kind) == records


def test_episode_from_dict_issue_format():
    ep = EpisodeRecord.from_dict({"query": "a", "answer": "b", "interactions": [{"query": "c", "answer": "d"}]})
    assert [t.query for t in ep.turns] == ["a", "c"]
    assert ep.metadata == {}


def test_bad_row_names_line_and_key(tmp_path):
    path = tmp_path / "bad.jsonl"
    rows = [{"query": "a", "answer": "b"}, {"query": "c", "answer": "d"}, {"query": "e"}]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    with pytest.raises(RecordError, match=r"line 3: missing key 'answer'"):
        load_jsonl(path, "interaction")


def test_wrong_type_and_nested_key_named(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps({"query": "a", "answer": "b", "interactions": [{"query": 5, "answer": "x"}]}) + "\n")
    with pytest.raises(RecordError, match=r"line 1: interactions\[0\]: key 'query' must be a str, got int"):
        load_jsonl(path, "episode")
    path.write_text('{"text": "ok"}\n{not json\n')
    with pytest.raises(ValueError, match="line 2: invalid JSON"):
        load_jsonl(path, "text")


def test_parquet_bad_row_names_row_and_key(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "bad.parquet"
    pq.write_table(pa.Table.from_pylist([{"query": "a", "answer": "b"}, {"query": "c", "answer": None}]), path)
    with pytest.raises(RecordError, match=r"row 2: missing key 'answer'|row 2: key 'answer'"):
        load_parquet(path, "interaction")


def test_missing_file_and_bad_kind(tmp_path):
    missing = tmp_path / "nope.jsonl"
    with pytest.raises(FileNotFoundError, match="nope.jsonl"):
        load_jsonl(missing, "text")
    with pytest.raises(FileNotFoundError, match="nope.parquet"):
        load_parquet(tmp_path / "nope.parquet", "text")
    with pytest.raises(ValueError, match="kind must be one of"):
        load_jsonl(missing, "dialogue")


@pytest.mark.parametrize("variable", ["HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"])
def test_from_hub_offline_fails_fast(monkeypatch, variable):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    monkeypatch.setenv(variable, "1")
    start = time.monotonic()
    with pytest.raises(RuntimeError, match=rf"'someone/some-dataset'.*{variable}"):
        from_hub("someone/some-dataset", "interaction")
    assert time.monotonic() - start < 1.0


def test_from_hub_unreachable_endpoint_fails_fast(monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # discard port: connection refused at once
    start = time.monotonic()
    with pytest.raises(RuntimeError, match=r"'someone/some-dataset'.*unreachable.*HF_DATASETS_OFFLINE"):
        from_hub("someone/some-dataset", "text", probe_timeout=2.0)
    assert time.monotonic() - start < 5.0


def test_from_hub_local_json_works_offline(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    path = save_jsonl([InteractionRecord("q", "a"), InteractionRecord("q2", "a2")], tmp_path / "d.jsonl")
    records = from_hub("json", "interaction", data_files=str(path), cache_dir=str(tmp_path / "hf"))
    assert records == [InteractionRecord("q", "a"), InteractionRecord("q2", "a2")]


def test_concat_and_split():
    assert concat(TEXTS, [TextRecord("x")]) == [*TEXTS, TextRecord("x")]
    with pytest.raises(TypeError, match=r"sources\[1\]\[0\]"):
        concat(TEXTS, INTERACTIONS)
    records = [TextRecord(str(i)) for i in range(100)]
    train, val = train_val_split(records, 0.2, seed=3)
    assert len(val) == 20 and len(train) == 80
    assert sorted(train + val, key=lambda r: int(r.text)) == records
    assert train_val_split(records, 0.2, seed=3) == (train, val)
    assert train_val_split(records, 0.2, seed=4)[1] != val
    with pytest.raises(ValueError, match="val_fraction"):
        train_val_split(records, 1.5)

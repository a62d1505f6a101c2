"""Pre-tokenisation cache: hit returns identical data, any key change misses."""

from __future__ import annotations

import pytest

from rxt.tokenizer import RxTokenizer
from training.data.cache import pretokenize
from training.data.datasets import CausalTextDataset
from training.data.records import EpisodeRecord, InteractionRecord, TextRecord
from training.tokenizer_training import TokenizerTrainingConfig, train_tokenizer


@pytest.fixture(scope="module")
def tok():
    return RxTokenizer.default()


@pytest.mark.parametrize("records", [
    [TextRecord("hello"), TextRecord("world wide")],
    [InteractionRecord("q", "a"), InteractionRecord("q2", "a2", think="t")],
    [EpisodeRecord("a", "b", (InteractionRecord("c", "d"),)), EpisodeRecord("e", "f")],
])
def test_hit_returns_identical_data(tmp_path, tok, records):
    first = pretokenize(records, tok, tmp_path, {"max_len": 32})
    assert not first.hit and first.path.is_file()
    second = pretokenize(records, tok, tmp_path, {"max_len": 32})
    assert second.hit and second.path == first.path
    assert second.ids == first.ids
    assert not list(tmp_path.glob(".*.tmp"))


def test_changes_miss(tmp_path, tok):
    records = [TextRecord("hello there"), TextRecord("general")]
    base = pretokenize(records, tok, tmp_path)
    assert not pretokenize(records, tok, tmp_path, {"max_len": 8}).hit
    assert not pretokenize([*records, TextRecord("x")], tok, tmp_path).hit
    texts = ["hello there general kenobi " * 5, "the quick brown fox"] * 20
    other = train_tokenizer(texts, TokenizerTrainingConfig(vocab_size=300, min_frequency=1))
    changed = pretokenize(records, other, tmp_path)
    assert not changed.hit and changed.path != base.path
    assert pretokenize(records, tok, tmp_path).hit


def test_dataset_source_and_token_ids(tmp_path, tok):
    records = [TextRecord("cached text"), TextRecord("more")]
    ds = CausalTextDataset(records, tok, max_len=16)
    cached = pretokenize(ds, tok, tmp_path)
    assert cached.ids[0] == ds.encode_record(records[0])
    fast = CausalTextDataset(records, tok, max_len=16, token_ids=pretokenize(ds, tok, tmp_path).ids)
    assert fast[1]["input_ids"].tolist() == ds[1]["input_ids"].tolist()

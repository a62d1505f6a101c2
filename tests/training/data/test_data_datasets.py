"""Datasets and collators: label masks on hand-made examples, MLM rules, collate shapes."""

from __future__ import annotations

import pytest
import torch

from rxt.tokenizer import RxTokenizer
from training.data.datasets import (
    IGNORE_INDEX,
    CausalTextDataset,
    EpisodeDataset,
    InteractionDataset,
    JointLMDataset,
    MaskedTextDataset,
    collate_episodes,
    collate_lm,
    shift_labels,
)
from training.data.records import EpisodeRecord, InteractionRecord, TextRecord


@pytest.fixture(scope="module")
def tok():
    return RxTokenizer.default()


def test_interaction_labels_hand_made(tok):
    q, a = tok.encode("Where do I live?"), tok.encode("In Lisbon.")
    ds = InteractionDataset([InteractionRecord("Where do I live?", "In Lisbon."), InteractionRecord("Hi", "Yo")],
                            tok, max_len=64)
    item = ds[0]
    expected_ids = [tok.bos_id, tok.query_id, *q, tok.answer_id, *a, tok.eos_id]
    expected_labels = [IGNORE_INDEX] * (2 + len(q) + 1) + [*a, tok.eos_id]
    assert item["input_ids"].tolist() == expected_ids
    assert item["labels"].tolist() == expected_labels
    batch = collate_lm([ds[1], ds[0]], tok.pad_id)
    row = batch["labels"][0]
    short = len(ds[1]["input_ids"])
    assert batch["input_ids"].shape == batch["labels"].shape == (2, len(expected_ids))
    assert (batch["input_ids"][0, short:] == tok.pad_id).all()
    assert (row[short:] == IGNORE_INDEX).all()  # pads never trained on
    assert batch["attention_mask"].dtype == torch.bool
    assert batch["attention_mask"].sum(1).tolist() == [short, len(expected_ids)]
    assert batch["labels"][1].tolist() == expected_labels
    # query tokens and markers are never labels in the batch
    yo = tok.encode("Yo")
    assert row[:short].tolist() == [IGNORE_INDEX] * (short - len(yo) - 1) + [*yo, tok.eos_id]


def test_interaction_think_is_not_labelled(tok):
    item = InteractionDataset([InteractionRecord("q", "ans", think="reason")], tok, 64)[0]
    labelled = [i for i in item["labels"].tolist() if i != IGNORE_INDEX]
    assert labelled == [*tok.encode("ans"), tok.eos_id]


def test_causal_text(tok):
    ds = CausalTextDataset([TextRecord("hello world"), TextRecord("a much longer text " * 20)], tok, max_len=16)
    item = ds[0]
    assert item["input_ids"].tolist() == [tok.bos_id, *tok.encode("hello world"), tok.eos_id]
    assert torch.equal(item["labels"], item["input_ids"])
    assert len(ds[1]["input_ids"]) == 16
    batch = collate_lm([ds[0], ds[1]], tok.pad_id)
    assert batch["input_ids"].shape == (2, 16)
    n = len(item["input_ids"])
    assert (batch["labels"][0, n:] == IGNORE_INDEX).all()
    shifted = shift_labels(batch["labels"])
    assert shifted[0, : n - 1].tolist() == item["input_ids"][1:].tolist()
    assert (shifted[0, n - 1 :] == IGNORE_INDEX).all()


def test_mlm_rules(tok):
    texts = [TextRecord("The quick brown fox jumps over the lazy dog " * (i + 1)) for i in range(8)]
    ds = MaskedTextDataset(texts, tok, max_len=128, mask_prob=0.3, seed=5)
    special = tok.special_ids
    n_masked = n_total = 0
    for i in range(len(ds)):
        original = ds.ids(i)
        item = ds[i]
        ids, labels = item["input_ids"].tolist(), item["labels"].tolist()
        for o, x, lab in zip(original, ids, labels, strict=True):
            if o in special:
                assert x == o and lab == IGNORE_INDEX  # specials never masked nor labelled
            if lab == IGNORE_INDEX:
                assert x == o  # unlabelled positions unchanged
            else:
                assert lab == o
                n_masked += 1
        n_total += len(original)
        assert torch.equal(ds[i]["input_ids"], item["input_ids"])  # deterministic per (seed, index)
    assert 0.15 < n_masked / n_total < 0.45
    other = MaskedTextDataset(texts, tok, max_len=128, mask_prob=0.3, seed=6)
    assert any(not torch.equal(other[i]["labels"], ds[i]["labels"]) for i in range(len(ds)))
    batch = collate_lm([ds[0], ds[3]], tok.pad_id)
    pads = ~batch["attention_mask"]
    assert pads.any() and (batch["labels"][pads] == IGNORE_INDEX).all()
    assert (batch["input_ids"][pads] == tok.pad_id).all()


def test_mlm_mask_token_share(tok):
    ds = MaskedTextDataset([TextRecord("word " * 400)], tok, max_len=512, mask_prob=0.5, seed=0)
    item = ds[0]
    selected = item["labels"] != IGNORE_INDEX
    share = (item["input_ids"][selected] == tok.mask_id).float().mean().item()
    assert 0.7 < share < 0.9


def test_joint_lm_views(tok):
    ds = JointLMDataset([TextRecord("joint views of the same text"), TextRecord("x")], tok, 32, 0.3, seed=1)
    item = ds[0]
    assert item["input_ids"].shape == item["mlm_input_ids"].shape == item["mlm_labels"].shape
    assert torch.equal(item["labels"], item["input_ids"])
    masked = item["mlm_labels"] != IGNORE_INDEX
    assert masked.any() and torch.equal(item["mlm_labels"][masked], item["input_ids"][masked])
    batch = collate_lm([ds[0], ds[1]], tok.pad_id)
    assert set(batch) == {"input_ids", "labels", "mlm_input_ids", "mlm_labels", "attention_mask"}
    assert (batch["mlm_labels"][1, len(ds[1]["input_ids"]) :] == IGNORE_INDEX).all()
    assert (batch["mlm_input_ids"][1, len(ds[1]["input_ids"]) :] == tok.pad_id).all()


def test_episode_dataset_and_collate(tok):
    eps = [
        EpisodeRecord("My cat is Miso.", "Noted.", (InteractionRecord("What is 2 plus 2?", "4."),
                                                    InteractionRecord("Cat name?", "Miso."))),
        EpisodeRecord("Hi", "Hello"),
    ]
    ds = EpisodeDataset(eps, tok, max_len=64, max_turns=8)
    first = ds[0]
    assert len(first) == 3 and len(ds[1]) == 1
    assert first[2]["query_ids"].tolist() == [tok.bos_id, tok.query_id, *tok.encode("Cat name?"), tok.answer_id]
    assert [x for x in first[2]["labels"].tolist() if x != IGNORE_INDEX] == [*tok.encode("Miso."), tok.eos_id]
    assert len(EpisodeDataset(eps, tok, 64, max_turns=2)[0]) == 2
    turns = collate_episodes([ds[0], ds[1]], tok.pad_id)
    assert len(turns) == 3
    assert turns[0]["active"].tolist() == [True, True]
    assert turns[1]["active"].tolist() == [True, False]
    for turn in turns:
        b, t = turn["input_ids"].shape
        assert b == 2 and turn["labels"].shape == turn["attention_mask"].shape == (b, t)
        assert turn["query_ids"].shape == turn["query_attention_mask"].shape
        assert (turn["labels"][~turn["attention_mask"]] == IGNORE_INDEX).all()
    assert not turns[2]["attention_mask"][1].any() and (turns[2]["labels"][1] == IGNORE_INDEX).all()


def test_bad_inputs_named(tok):
    with pytest.raises(TypeError, match=r"records\[0\] must be a TextRecord"):
        CausalTextDataset([InteractionRecord("a", "b")], tok, 8)
    with pytest.raises(ValueError, match="max_len"):
        InteractionDataset([], tok, 0)

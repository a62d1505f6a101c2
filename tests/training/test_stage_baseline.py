"""The stateless baseline stage: history sequences with labels on every answer, left truncation by whole
interactions, parameter matching against the RxT, the loss goes down, bad configs fail before training, and
``final/`` loads with ``DecoderLM.from_pretrained``."""

import json

import pytest
import torch
from torch_threads import one_thread

from rxt.classic import DecoderLM
from rxt.config import RxTConfig
from rxt.model import RxT
from rxt.template import InteractionTemplate
from rxt.tokenizer import RxTokenizer
from training.config import ConfigError, load_config
from training.data.records import EpisodeRecord, InteractionRecord
from training.stages import get_stage
from training.stages.baseline_lm import (
    BaselineLMConfig,
    HistoryDataset,
    build_model,
    history_ids,
    load_episodes,
    run_stage,
)
from training.stages.data_config import DataSource

TRAIN = {"batch_size": 8, "warmup_steps": 2, "lr": 3e-3, "device": "cpu", "log_every": 1, "keep_last": 1,
         "seed": 0}
DATA = [{"kind": "synthetic", "synthetic": {"num_episodes": 32, "num_turns": 2, "seed": 5}}]


def raw_config(output_dir, **overrides):
    raw = {"train": {**TRAIN, "max_steps": 30, "output_dir": str(output_dir)}, "model": "tiny", "data": DATA,
           "max_len": 96, "val_fraction": 0.2}
    raw.update(overrides)
    return raw


@pytest.fixture(scope="module")
def tok():
    return RxTokenizer.default()


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("baseline")
    with one_thread():
        final = run_stage(load_config(raw_config(out), BaselineLMConfig))
    return out, final


def test_registered():
    module = get_stage("baseline")
    assert module.CONFIG_CLASS is BaselineLMConfig


def test_labels_are_exactly_every_answers_tokens(tok):
    episode = EpisodeRecord("My cat is Tom.", "Nice name.", (InteractionRecord("Cat's name?", "Tom."),))
    item = HistoryDataset([episode], tok, max_len=200)[0]
    q1, a1, q2, a2 = (tok.encode(s) for s in ("My cat is Tom.", "Nice name.", "Cat's name?", "Tom."))
    first = [tok.bos_id, tok.query_id, *q1, tok.answer_id, *a1, tok.eos_id]
    second = [tok.bos_id, tok.query_id, *q2, tok.answer_id, *a2, tok.eos_id]
    assert item["input_ids"].tolist() == first + second
    # the same history as the benchmark feeds the baseline: interaction_ids, concatenated
    template = InteractionTemplate(tok)
    assert first == template.interaction_ids("My cat is Tom.", "Nice name.")
    ignore = [-100]
    expected = (ignore * (3 + len(q1)) + [*a1, tok.eos_id]) + (ignore * (3 + len(q2)) + [*a2, tok.eos_id])
    assert item["labels"].tolist() == expected


def test_left_truncation_keeps_the_last_whole_turns(tok):
    template = InteractionTemplate(tok)
    turns = [InteractionRecord(f"question number {i}?", f"answer number {i}.") for i in range(5)]
    pieces = [template.interaction_ids(t.query, t.answer) for t in turns]
    budget = len(pieces[3]) + len(pieces[4]) + 1  # room for the last two, not three
    ids = history_ids(template, turns, budget)
    assert ids == pieces[3] + pieces[4]
    assert ids[0] == tok.bos_id
    item = HistoryDataset([EpisodeRecord(turns[0].query, turns[0].answer, tuple(turns[1:]))], tok, budget)[0]
    assert item["input_ids"].tolist() == ids
    # a single interaction longer than max_len keeps its tail (the benchmark's left cut)
    assert history_ids(template, turns[:1], 5) == pieces[0][-5:]


def test_chatterbot_gives_single_turn_episodes():
    episodes = load_episodes([DataSource(kind="chatterbot", limit=3)])
    assert len(episodes) == 3 and all(len(e.turns) == 1 for e in episodes)


def test_match_parameters_of_tiny(tmp_path, tok):
    cfg = load_config(raw_config(tmp_path, model=None, match_parameters_of="tiny"), BaselineLMConfig)
    lm, match = build_model(cfg, tok)
    rxt = RxT(RxTConfig.preset("tiny", vocab_size=tok.vocab_size)).num_parameters()
    assert match["rxt_parameters"] == rxt
    assert abs(lm.num_parameters() - rxt) / rxt < 0.15
    assert lm.config.num_layers > 2 and lm.config.max_seq_len >= 96


def test_loss_goes_down_and_metrics(trained):
    out, _ = trained
    metrics = json.loads((out / "metrics.json").read_text())
    losses = [e["loss"] for e in metrics["train"]]
    assert len(losses) == 30
    assert sum(losses[-5:]) / 5 < 0.8 * sum(losses[:5]) / 5
    assert {"answer_acc", "answer_ppl"} <= set(metrics["train"][-1])
    assert {"val_loss", "val_answer_acc", "val_answer_ppl"} <= set(metrics["eval"][-1])


def test_final_dir_loads(trained, tok):
    _, final = trained
    lm = DecoderLM.from_pretrained(final)
    assert (final / "tokenizer.json").is_file()
    assert RxTokenizer.from_pretrained(final).vocab_size == tok.vocab_size
    ids = torch.tensor([[tok.bos_id, tok.query_id, *tok.encode("hi"), tok.answer_id]])
    assert lm(ids).logits.shape == (1, ids.shape[1], lm.config.vocab_size)


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        ({"model": None}, "model"),
        ({"match_parameters_of": "tiny"}, "match_parameters_of"),
        ({"max_len": 1}, "max_len"),
        ({"max_turns": 0}, "max_turns"),
        ({"model_overrides": {"no_such": 1}}, "model_overrides"),
        ({"model": "no/such/dir"}, "model"),
        ({"model": None, "match_parameters_of": "no/such/dir"}, "match_parameters_of"),
        ({"data": [{"kind": "jsonl", "path": "no/such.jsonl"}]}, "data[0].path"),
        ({"data": []}, "data"),
    ],
)
def test_bad_config_fails_before_training(tmp_path, overrides, key):
    with pytest.raises(ConfigError, match=key.replace("[", r"\[").replace("]", r"\]")):
        run_stage(load_config(raw_config(tmp_path / "out", **overrides), BaselineLMConfig))
    assert not (tmp_path / "out" / "checkpoints").exists()


def test_max_len_beyond_a_saved_model_fails(trained, tmp_path):
    _, final = trained
    with pytest.raises(ConfigError, match="max_len"):
        run_stage(load_config(raw_config(tmp_path / "out", model=str(final), max_len=10_000), BaselineLMConfig))

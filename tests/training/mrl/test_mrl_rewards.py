"""The fact value of an episode's question turn reaches the reward: collected episodes carry it (and only at the
question step) with the answer text, the reward's value term reads them, and a tiny MRL run with
``reward.value_weight > 0`` trains and logs the term's batch mean."""

from __future__ import annotations

import json
import random

import pytest
import torch

from rxnn_runtime.messages import GenerationOptions
from rxnn_runtime.reactive_model import ReactiveModel
from rxt.config import RxTConfig
from rxt.model import RxT
from rxt.recall import recall_hit
from training.config import load_config
from training.data.records import EpisodeRecord, InteractionRecord
from training.data.synthetic import SyntheticDialogueConfig, generate_episodes
from training.mrl.episodes import collect_episodes
from training.mrl.rewards import compute_rewards, reward_input, step_fact_value, value_hit_rate
from training.rewards import MemoryRetentionReward
from training.stages import get_stage

STEPS = 3


@pytest.fixture(scope="module")
def logs(tok):
    """Collected episodes: 4 whose question is the 3rd follow-up, 2 whose question falls beyond ``STEPS`` (cut
    off), one chitchat episode without metadata."""
    torch.manual_seed(0)
    model = RxT(RxTConfig.preset("tiny", vocab_size=tok.vocab_size)).eval()
    asked = generate_episodes(SyntheticDialogueConfig(num_episodes=4, num_turns=STEPS - 1, seed=3))
    cut = generate_episodes(SyntheticDialogueConfig(num_episodes=2, num_turns=STEPS, seed=4))
    chat = EpisodeRecord("Hi there.", "Hello!", tuple(InteractionRecord(f"Turn {i}?", "Fine.") for i in range(3)))
    reactive = ReactiveModel(model, tok, max_batch_size=7, use_cuda_graphs=False)
    try:
        out = collect_episodes(reactive, [*asked, *cut, chat], options=GenerationOptions(max_new_tokens=6),
                               teacher_forcing=True, generator=random.Random(0), max_steps=STEPS)
        reactive.wait_idle()
    finally:
        reactive.dispose()
    return out


def _rows(logs):
    return [(log, k) for log in logs for k in range(len(log.steps))]


def test_the_question_step_carries_its_fact_value(logs, tok):
    assert [len(log.steps) for log in logs] == [STEPS] * 7
    inp = reward_input(_rows(logs), tok.pad_id)
    expected = []
    for i, log in enumerate(logs):
        for k in range(STEPS):
            asks = i < 4 and k == STEPS - 1  # the question turn is the last step of the first four only
            expected.append(log.metadata["fact_value"] if asks else None)
    assert list(inp.fact_values) == expected
    assert all(step_fact_value(log, k) is None for log in logs[4:] for k in range(STEPS))
    # the answer text is the decoding of the answer ids, as the benchmark decodes its answers
    assert list(inp.generated_texts) == [tok.decode(log.steps[k].answer_ids) for log, k in _rows(logs)]


def test_the_value_term_scores_the_question_steps_only(logs, tok):
    for log in logs[:2]:  # hand-made answers that name the value (the tiny untrained model does not)
        log.steps[-1].answer_text = f"It is {log.metadata['fact_value'].upper()}!"
    logs[2].steps[-1].answer_text = "I do not know."
    try:
        base, valued = (MemoryRetentionReward(cosine_weight=0.0, value_weight=w) for w in (0.0, 3.0))
        r0 = compute_rewards(logs, base, pad_id=tok.pad_id, last_step_reward=base)
        r3 = compute_rewards(logs, valued, pad_id=tok.pad_id, last_step_reward=valued)
        inp = reward_input(_rows(logs), tok.pad_id)
        v = [hit for hit, value in zip(valued.components(inp)["value"].tolist(), inp.fact_values, strict=True)
             if value is not None]
        assert v[:3] == [1.0, 1.0, 0.0]
        assert value_hit_rate(logs) == sum(v) / 4  # the logged batch mean: over the 4 question steps
        norm = 1.0 + 0.1
        for (log, k), a, b in zip(_rows(logs), r0, r3, strict=True):
            value = step_fact_value(log, k)
            if value is None:
                assert a == b  # no value, no term: today's reward
            else:
                hit = float(recall_hit(log.steps[k].answer_text, value))
                assert b == pytest.approx((norm * a + 10.0 * 3.0 * hit) / (norm + 3.0), abs=1e-5)
    finally:
        for log in logs[:3]:
            log.steps[-1].answer_text = tok.decode(log.steps[-1].answer_ids)
    assert value_hit_rate(logs[4:]) is None


def test_tiny_mrl_with_a_value_weight_logs_the_value_term(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    stage = get_stage("mrl")
    cfg = load_config("examples/configs/tiny_mrl.yaml", stage.CONFIG_CLASS)
    cfg.train.output_dir = str(tmp_path)
    cfg.curriculum[0].episodes_per_epoch = 8
    cfg.eval_episodes = 4
    cfg.reward = {**cfg.reward, "value_weight": 1.0}
    stage.run_stage(cfg)
    train = json.loads((tmp_path / "metrics.json").read_text())["train"]
    assert len(train) == 2 and all(0.0 <= h["value_term_mean"] <= 1.0 for h in train)
    (events,) = (tmp_path / "tensorboard").rglob("events.out.tfevents.*")
    scalars = EventAccumulator(str(events)).Reload().Tags()["scalars"]
    assert "train/value_term_mean" in scalars and "train/reward_mean" in scalars


"""MRL end to end: a supervised start, then IMPO through the runtime raises the reward; the stage runs from YAML."""

from __future__ import annotations

import json
import random

import pytest
import torch
import torch.nn.functional as F

from rxt.config import RxTConfig
from rxt.model import RxT
from rxt.template import InteractionTemplate, pad_batch
from training.config import TrainConfig, load_config
from training.data.records import EpisodeRecord, InteractionRecord
from training.data.synthetic import SyntheticDialogueConfig, generate_episodes
from training.mrl.curriculum import CurriculumStage, MRLConfig
from training.mrl.trainer import MRLTrainer
from training.stages import get_stage


def _recall_episodes(n: int) -> list[EpisodeRecord]:
    """A fact, one unrelated turn, then the question; the reference answer is the fact value itself. The values
    are numbers (digit tokens), so a reward for the right unigrams is within reach of this tiny model."""
    out = []
    config = SyntheticDialogueConfig(num_episodes=n, num_turns=1, seed=0, num_facts=1, groups=("number",))
    for e in generate_episodes(config):
        question = InteractionRecord(e.interactions[-1].query, e.metadata["fact_value"])
        out.append(EpisodeRecord(e.query, e.answer, (*e.interactions[:-1], question), e.metadata))
    return out


def _supervised_start(model: RxT, tok, episodes, steps: int) -> None:
    """A few teacher-forced memory-aware steps (the SMAT objective in miniature): the supervised start point."""
    tpl = InteractionTemplate(tok)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)

    def batch(pairs):
        ids, lengths = pad_batch([tpl.interaction_ids(q, a) for q, a in pairs], tok.pad_id)
        return ids, torch.arange(ids.shape[1])[None] < lengths[:, None]

    for _ in range(steps):
        ids, mask = batch([(e.query, e.answer) for e in episodes])
        stm = model.update_memory(model.initial_memory(len(episodes)), ids, mask)
        loss = torch.zeros(())
        for k in range(2):
            ids, mask = batch([(e.interactions[k].query, e.interactions[k].answer) for e in episodes])
            answer = tpl.answer_mask(ids)[:, 1:]
            logits = model(ids, stm, mask).logits[:, :-1]
            loss = loss + F.cross_entropy(logits[answer], ids[:, 1:][answer])
            stm = model.update_memory(stm, ids, mask)
        opt.zero_grad()
        loss.backward()
        opt.step()


@pytest.mark.parametrize("static", [False, True], ids=["eager", "static-shapes"])
def test_mrl_raises_the_reward_above_the_supervised_start(tok, tmp_path, static):
    """Also with the update at static shapes (``update_cuda_graphs``: on the CPU the padded minibatches and the flat
    loss run eagerly; on a GPU each step is a CUDA graph)."""
    torch.manual_seed(0)
    model = RxT(RxTConfig.preset("tiny", vocab_size=tok.vocab_size))
    episodes = _recall_episodes(32)
    _supervised_start(model, tok, episodes, steps=20)
    cfg = MRLConfig(
        train=TrainConfig(lr=3e-3, warmup_steps=0, weight_decay=0.0, device="cpu", seed=0, output_dir=str(tmp_path)),
        curriculum=[CurriculumStage(steps=2, strategy="long_range", epochs=1, episodes_per_epoch=32)],
        batch_episodes=16, max_new_tokens=4, temperature=1.0, teacher_forcing=True,
        # learnable at this scale: unigram BLEU of the answer against the reference (the fact value)
        reward={"bleu_weight": 1.0, "cosine_weight": 0.0, "length_weight": 0.0, "ref_weight": 1.0,
                "saved_weight": 0.0, "max_n": 1},
        long_range_last_step=False, unfreeze_schedule=[(0, ["memory", "rest"])], ppo_epochs=2, minibatch_size=16,
        kl_coef=0.0, entropy_coef=0.0, eval_episodes=0, update_cuda_graphs=static,
    )
    trainer = MRLTrainer(cfg, model=model, tokenizer=tok)
    stage = cfg.curriculum[0]

    def mean_reward() -> float:
        trainer.rng = random.Random(123)  # the same sampling seeds for every measurement
        logs = trainer.collect(episodes, stage, reset_prob=1.0)
        rewards = [s.reward for log in logs for s in log.steps]
        return sum(rewards) / len(rewards)

    try:
        start = mean_reward()
        for u in range(25):  # 25 collections x 2 PPO epochs x 2 minibatches = 100 optimizer steps, 800 transitions
            trainer.update(trainer.collect(episodes[(u % 2) * 16 : (u % 2) * 16 + 16], stage, reset_prob=1.0))
        end = mean_reward()
    finally:
        trainer.close()
    assert trainer.learner.first_ratio_exact
    print(f"mean reward: supervised start {start:.3f} -> after MRL {end:.3f}")
    assert end > start * 1.5 and end > start + 0.1, (start, end)


def _tiny_mrl(tmp_path, eval_episodes: int):
    """The mrl stage module and the tiny example config, shrunk to one batch of 8 episodes per epoch."""
    stage = get_stage("mrl")
    cfg = load_config("examples/configs/tiny_mrl.yaml", stage.CONFIG_CLASS)
    cfg.train.output_dir = str(tmp_path)
    cfg.curriculum[0].episodes_per_epoch = 8
    cfg.eval_episodes = eval_episodes
    return stage, cfg


def test_tiny_mrl_yaml_runs_the_stage(tmp_path):
    stage, cfg = _tiny_mrl(tmp_path, eval_episodes=4)
    cfg.save_episode_logs = True
    final = stage.run_stage(cfg)
    assert (final / "model.safetensors").is_file() and (final / "tokenizer.json").is_file()
    assert (tmp_path / "reward_curve.png").is_file() and (tmp_path / "metrics.json").is_file()
    assert list((tmp_path / "tensorboard").rglob("events.out.tfevents.*"))
    files = sorted((tmp_path / "episodes").glob("*.msgpack"))
    assert len(files) == 2
    RxT.from_pretrained(final)
    # offline MRL from the recorded files
    cfg.train.output_dir = str(tmp_path / "offline")
    out = stage.train_from_logs(cfg, files)
    assert (out / "model.safetensors").is_file()


def test_mrl_time_budget_cuts_the_curriculum_after_one_update(tmp_path):
    stage, cfg = _tiny_mrl(tmp_path, eval_episodes=0)
    cfg.train.max_minutes = 1e-9  # spent by the first collection
    stage.run_stage(cfg)
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert len(metrics["train"]) == 1
    assert metrics["stop_reason"].startswith("time budget")

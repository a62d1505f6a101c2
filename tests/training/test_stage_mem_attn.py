"""Stage 3 (memory-attention self-supervised pre-training): loss goes down, the target is built from the
encoded data only (never the network's own output), only memory attention trains, final/ loads."""

from __future__ import annotations

import pytest
import torch

from rxt.config import RxTConfig
from rxt.model import RxT
from rxt.tokenizer import RxTokenizer
from training.config import ConfigError, TrainConfig
from training.data.datasets import EpisodeDataset, collate_episodes
from training.data.records import EpisodeRecord, InteractionRecord
from training.data.synthetic import SyntheticDialogueConfig, generate_episodes
from training.pooling import pool_to_slots
from training.stages.memory_attention_pretraining import (
    MemoryAttentionObjective,
    MemoryAttentionStageConfig,
    MemoryAttentionTrainer,
    episodes_from,
    memory_target,
)


@pytest.fixture(scope="module")
def tok():
    return RxTokenizer.default()


@pytest.fixture(scope="module")
def dataset(tok):
    episodes = generate_episodes(SyntheticDialogueConfig(num_episodes=48, num_turns=2, seed=0))
    return EpisodeDataset(episodes, tok, 64)


def tiny_model(tok, seed=0, **overrides):
    torch.manual_seed(seed)
    return RxT(RxTConfig.preset("tiny", vocab_size=tok.vocab_size, **overrides))


def stage_config(tmp_path, **fields):
    train = {"lr": 3e-3, "warmup_steps": 2, "max_steps": 30, "batch_size": 4, "log_every": 5, "device": "cpu",
             "output_dir": str(tmp_path), "keep_last": 0, **fields.pop("train", {})}
    return MemoryAttentionStageConfig(train=TrainConfig(**train), **fields)


def test_loss_goes_down_only_memory_attention_trains_and_final_loads(tmp_path, tok, dataset):
    model = tiny_model(tok)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    cfg = stage_config(tmp_path, weight_jitter=0.15, encoder_noise=0.01)
    trainer = MemoryAttentionTrainer(model, cfg, dataset, eval_dataset=list(dataset)[:8], tokenizer=tok)
    history = trainer.train()
    losses = [e["loss"] for e in history["train"]]
    cosines = [e["cosine"] for e in history["train"]]
    assert len(losses) == 6
    assert sum(losses[-2:]) / 2 < sum(losses[:2]) / 2 - 0.1, losses
    assert cosines[-1] > cosines[0] + 0.1, cosines
    torch.testing.assert_close(torch.tensor(losses), -torch.tensor(cosines))
    assert 0.0 < history["train"][-1]["new_data_weight"] < 1.0
    assert "val_cosine" in history["eval"][-1]

    after = model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(k.startswith("memory_attention.") for k in changed), sorted(changed)[:5]
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {n for n, _ in model.named_parameters() if n.startswith("memory_attention.")}

    final = tmp_path / "final"
    assert (final / "tokenizer.json").is_file()
    loaded = RxT.from_pretrained(final)
    for k, v in loaded.state_dict().items():
        torch.testing.assert_close(v, after[k])
    assert RxTokenizer.from_pretrained(final).vocab_size == tok.vocab_size


def _batch(dataset, n=4):
    return collate_episodes([dataset[i] for i in range(n)], pad_id=0)


@pytest.mark.parametrize("detach_stm", [True, False])
def test_target_is_built_from_encoded_data_not_the_network_output(tok, dataset, detach_stm):
    model = tiny_model(tok)
    cfg = MemoryAttentionStageConfig(detach_stm=detach_stm, weight_jitter=0.1)
    objective = MemoryAttentionObjective(model, cfg).train()
    objective.record = True
    batch = _batch(dataset)
    out = objective(batch, seed=123)
    out["loss"].backward()
    assert len(objective.trace) == len(batch) >= 3
    initial = model.initial_memory(4).detach()
    for t, step in enumerate(objective.trace):
        target = step["target"]
        assert not target.requires_grad and target.grad_fn is None
        assert step["new"].requires_grad  # the network output is what is trained
        w = step["weight"][None, :, None, None]
        pooled = pool_to_slots(step["encoded"], step["key_valid"], model.config.stm_slots)
        torch.testing.assert_close(target, (1 - w) * step["stm_prev"] + w * pooled)
        if t == 0:
            torch.testing.assert_close(step["stm_prev"], initial)
        else:  # STM_{t-1} is the previous step's output (the memory being built), not this step's
            torch.testing.assert_close(step["stm_prev"], objective.trace[t - 1]["new"].detach())
        assert not torch.allclose(target, step["new"].detach())
    turn0 = objective.trace[0]["target"].clone()

    # Perturb the memory-attention weights: this step's output changes, the first target does not.
    new0 = objective.trace[0]["new"].detach().clone()
    with torch.no_grad():
        g = torch.Generator().manual_seed(5)
        for p in model.memory_attention.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.5)
    objective(batch, seed=123)
    assert not torch.allclose(objective.trace[0]["new"].detach(), new0)
    torch.testing.assert_close(objective.trace[0]["target"], turn0, rtol=0, atol=0)
    # and every later target is still exactly the mix of the (new) previous memory and the pooled data
    for step in objective.trace[1:]:
        w = step["weight"][None, :, None, None]
        pooled = pool_to_slots(step["encoded"], step["key_valid"], model.config.stm_slots)
        torch.testing.assert_close(step["target"], (1 - w) * step["stm_prev"] + w * pooled)


def test_single_interaction_target_independent_of_memory_attention(tok):
    """A one-turn episode's target is (1 - w) STM_0 + w pool(ED): the same for any memory-attention weights."""
    records = episodes_from([InteractionRecord("What is my name?", "Your name is Ann."),
                             InteractionRecord("Hi", "Hello there, how are you today?")])
    assert all(isinstance(r, EpisodeRecord) and len(r.turns) == 1 for r in records)
    batch = collate_episodes([EpisodeDataset(records, tok, 64)[i] for i in range(2)], pad_id=tok.pad_id)
    targets = []
    for seed in (0, 1, 2):
        model = tiny_model(tok, seed=0)
        torch.manual_seed(seed + 10)
        for p in model.memory_attention.parameters():  # re-draw only the memory attention
            torch.nn.init.normal_(p, std=0.2)
        objective = MemoryAttentionObjective(model, MemoryAttentionStageConfig()).eval()
        objective.record = True
        objective(batch)
        targets.append(objective.trace[0]["target"])
    torch.testing.assert_close(targets[0], targets[1], rtol=0, atol=0)
    torch.testing.assert_close(targets[0], targets[2], rtol=0, atol=0)


def test_memory_target_function_and_weight_schedule():
    stm = torch.randn(2, 3, 4, 5, requires_grad=True)
    encoded = torch.randn(2, 3, 7, 5, requires_grad=True)
    valid = torch.ones(3, 7, dtype=torch.bool)
    target = memory_target(stm, encoded, valid, 0.9)
    assert not target.requires_grad
    torch.testing.assert_close(target, 0.1 * stm.detach() + 0.9 * pool_to_slots(encoded.detach(), valid, 4))
    cfg = MemoryAttentionStageConfig()
    assert [round(cfg.new_data_weight(t), 4) for t in range(4)] == [0.9, 0.45, 0.4, 0.35]
    assert cfg.new_data_weight(100) == cfg.new_data_weight_min
    with pytest.raises(ConfigError, match="new_data_weight_first"):
        MemoryAttentionStageConfig(new_data_weight_first=1.5)
    with pytest.raises(ConfigError, match="record_kind"):
        MemoryAttentionStageConfig(record_kind="text")


def test_jitter_is_seeded_bounded_and_off_in_eval(tok):
    objective = MemoryAttentionObjective(tiny_model(tok), MemoryAttentionStageConfig(weight_jitter=0.15)).train()
    a = objective.turn_weights(0, 64, torch.Generator().manual_seed(1))
    b = objective.turn_weights(0, 64, torch.Generator().manual_seed(1))
    c = objective.turn_weights(0, 64, torch.Generator().manual_seed(2))
    torch.testing.assert_close(a, b)
    assert not torch.equal(a, c)
    assert a.min() >= 0.9 * 0.85 - 1e-6 and a.max() <= 1.0 and a.std() > 0
    objective.eval()
    assert torch.all(objective.turn_weights(0, 8, torch.Generator().manual_seed(1)) == 0.9)


def test_inactive_rows_do_not_count(tok):
    records = [EpisodeRecord("My dog is Rex.", "Nice!", (InteractionRecord("Dog name?", "Rex."),)),
               EpisodeRecord("Hello", "Hi!")]
    ds = EpisodeDataset(records, tok, 64)
    batch = collate_episodes([ds[0], ds[1]], pad_id=tok.pad_id)
    model = tiny_model(tok)
    objective = MemoryAttentionObjective(model, MemoryAttentionStageConfig()).eval()
    objective.record = True
    both = objective(batch)
    assert not bool(batch[1]["active"][1])
    only = objective(collate_episodes([ds[0]], pad_id=tok.pad_id))
    solo = objective(collate_episodes([ds[1]], pad_id=tok.pad_id))
    # turn 0 has 2 active rows, turn 1 only row 0: the mean is over 3 (row, turn) pairs
    expected = (only["loss"] * 2 + solo["loss"]) / 3
    torch.testing.assert_close(both["loss"], expected, rtol=1e-5, atol=1e-6)


def test_example_yaml_runs_through_the_stage_registry(tmp_path):
    from pathlib import Path

    from training.config import load_config
    from training.stages import get_stage

    stage = get_stage("mem-attn")
    root = Path(__file__).resolve().parents[2]
    cfg = load_config(root / "examples/configs/tiny_mem_attn.yaml", stage.CONFIG_CLASS)
    assert cfg.data[0].kind == "synthetic" and cfg.train.device == "cpu"
    cfg.train.output_dir, cfg.train.max_steps, cfg.train.eval_every = str(tmp_path), 6, 0
    cfg.train.warmup_steps, cfg.train.log_every = 2, 2
    final = stage.run_stage(cfg)
    assert final == tmp_path / "final"
    RxT.from_pretrained(final)
    assert (final / "tokenizer.json").is_file()
    with pytest.raises(ConfigError, match="data"):
        stage.run_stage(MemoryAttentionStageConfig(train=TrainConfig(output_dir=str(tmp_path / "x"))))

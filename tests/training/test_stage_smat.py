"""Stage 4 (SMAT): loss goes down, truncated BPTT depth, staged unfreezing, inactive rows, final/ loads."""

from __future__ import annotations

import pytest
import torch

from rxt.config import RxTConfig
from rxt.model import RxT
from rxt.tokenizer import RxTokenizer
from training.callbacks import Callback
from training.config import ConfigError, TrainConfig
from training.data.datasets import EpisodeDataset, collate_episodes
from training.data.records import EpisodeRecord, InteractionRecord
from training.data.synthetic import SyntheticDialogueConfig, generate_episodes
from training.metrics import causal_lm_loss
from training.stages.smat import SMATObjective, SMATStageConfig, SMATTrainer, groups_at


@pytest.fixture(scope="module")
def tok():
    return RxTokenizer.default()


@pytest.fixture(scope="module")
def dataset(tok):
    episodes = generate_episodes(SyntheticDialogueConfig(num_episodes=48, num_turns=2, seed=0))
    return EpisodeDataset(episodes, tok, 64)


def tiny_model(tok, seed=0):
    torch.manual_seed(seed)
    return RxT(RxTConfig.preset("tiny", vocab_size=tok.vocab_size))


def stage_config(tmp_path, **fields):
    train = {"lr": 1e-2, "warmup_steps": 2, "max_steps": 30, "batch_size": 4, "log_every": 5, "device": "cpu",
             "output_dir": str(tmp_path), "keep_last": 0, **fields.pop("train", {})}
    return SMATStageConfig(train=TrainConfig(**train), **fields)


def test_loss_goes_down_metrics_and_final_loads(tmp_path, tok, dataset):
    model = tiny_model(tok)
    cfg = stage_config(tmp_path, unfreeze_schedule=[[0, ["memory", "rest"]]], bptt_depth=2)
    trainer = SMATTrainer(model, cfg, dataset, eval_dataset=list(dataset)[:8], tokenizer=tok)
    history = trainer.train()
    train = history["train"]
    losses = [e["loss"] for e in train]
    assert sum(losses[-2:]) / 2 < sum(losses[:2]) / 2 - 1.0, losses
    assert train[-1]["accuracy"] > train[0]["accuracy"]
    assert train[-1]["perplexity"] < train[0]["perplexity"]
    assert {"val_loss", "val_accuracy", "val_perplexity"} <= set(history["eval"][-1])
    final = tmp_path / "final"
    assert (final / "tokenizer.json").is_file()
    loaded = RxT.from_pretrained(final)
    for k, v in loaded.state_dict().items():
        torch.testing.assert_close(v, model.state_dict()[k])


def _batch(dataset, n=2):
    return collate_episodes([dataset[i] for i in range(n)], pad_id=0)


def _reaches(loss: torch.Tensor, tensor: torch.Tensor) -> bool:
    (grad,) = torch.autograd.grad(loss, tensor, retain_graph=True, allow_unused=True)
    return grad is not None and bool(grad.abs().sum() > 0)


def test_bptt_depth_limits_which_memory_updates_get_gradients(tok, dataset):
    model = tiny_model(tok)
    batch = _batch(dataset)
    assert len(batch) == 4
    reach = {}
    for depth in (1, 2):
        objective = SMATObjective(model, bptt_depth=depth)
        objective.record = True
        objective(batch)
        u = objective.updates  # u[k]: STM written after turn k (read at turn k + 1)
        assert len(u) == 3 and len(objective.stms) == 4
        losses = [causal_lm_loss(model(t["input_ids"], s, t["attention_mask"]).logits, t["labels"])
                  for t, s in zip(batch, objective.stms)]
        reach[depth] = {(t, k): _reaches(losses[t], u[k]) for t in range(1, 4) for k in range(t)}
    # depth 1: turn t's loss reaches only the update made right before it
    assert reach[1] == {(t, k): k == t - 1 for t in range(1, 4) for k in range(t)}
    # depth 2: segments of two chained updates: u0 -> u1 | u2
    assert reach[2][(2, 1)] and reach[2][(2, 0)]  # turn 2 reaches two updates back
    assert reach[2][(3, 2)] and not reach[2][(3, 1)] and not reach[2][(3, 0)]  # never more than two

    # and the parameter gradients differ
    grads = {}
    for depth in (0, 1, 2):
        model.zero_grad(set_to_none=True)
        SMATObjective(model, bptt_depth=depth)(batch)["loss"].backward()
        grads[depth] = torch.cat([p.grad.flatten() if p.grad is not None else torch.zeros(p.numel())
                                  for p in model.memory_attention.parameters()])
    assert not torch.allclose(grads[1], grads[2])
    assert torch.all(grads[0] == 0)  # depth 0: the memory path carries no gradient


class RecordGroups(Callback):
    def __init__(self, model):
        self.embedding = model.embedding.weight
        self.mem = next(model.memory_attention.parameters())
        self.rows = []

    def on_step(self, trainer, step, metrics):
        self.rows.append((step, list(trainer.trainable_groups), self.embedding.requires_grad,
                          self.mem.requires_grad, self.embedding.detach().clone(), self.mem.detach().clone()))


def test_unfreeze_schedule_flips_requires_grad_at_the_right_step(tmp_path, tok, dataset):
    model = tiny_model(tok)
    cfg = stage_config(tmp_path, unfreeze_schedule=[(0, ["memory"]), (3, ["memory", "rest"])],
                       train={"max_steps": 6, "log_every": 1})
    rec = RecordGroups(model)
    trainer = SMATTrainer(model, cfg, dataset, callbacks=[rec], tokenizer=tok)
    # every parameter is in the optimizer from the start
    in_opt = {id(p) for g in trainer.optimizer.param_groups for p in g["params"]}
    assert in_opt == {id(p) for p in model.parameters()}
    assert not model.embedding.weight.requires_grad and trainer.trainable_groups == ["memory"]
    emb0 = model.embedding.weight.detach().clone()
    trainer.train()
    steps = [r[0] for r in rec.rows]
    assert steps == [1, 2, 3, 4, 5, 6]
    # on_step(k) follows optimizer step k - 1 (0-based), which used groups_at(k - 1)
    assert [r[1] for r in rec.rows] == [["memory"]] * 3 + [["memory", "rest"]] * 3
    assert [r[2] for r in rec.rows] == [False] * 3 + [True] * 3
    assert all(r[3] for r in rec.rows)
    for _, _, _, _, emb, _ in rec.rows[:3]:
        assert torch.equal(emb, emb0)  # frozen: no update, no weight decay
    assert not torch.equal(rec.rows[3][4], emb0)  # first step with "rest" trainable moves it
    assert not torch.equal(rec.rows[0][5], rec.rows[1][5])  # memory trains from step 0


def test_groups_at_and_config_validation(tok, tmp_path, dataset):
    schedule = [(0, ["memory"]), (5, ["memory", "rest"])]
    assert [groups_at(schedule, s) for s in (0, 4, 5, 99)] == [["memory"]] * 2 + [["memory", "rest"]] * 2
    with pytest.raises(ConfigError, match="unfreeze_schedule"):
        SMATStageConfig(unfreeze_schedule=[(2, ["memory"])])
    with pytest.raises(ConfigError, match="unfreeze_schedule"):
        SMATStageConfig(unfreeze_schedule=[(0, ["memory"]), (0, ["rest"])])
    with pytest.raises(ConfigError, match="bptt_depth"):
        SMATStageConfig(bptt_depth=-1)
    with pytest.raises(ConfigError, match="decoder"):
        SMATTrainer(tiny_model(tok), stage_config(tmp_path, unfreeze_schedule=[(0, ["decoder"])]), dataset)


def test_inactive_rows_contribute_nothing_and_keep_their_memory(tok):
    records = [
        EpisodeRecord("My dog is Rex.", "Nice!", (InteractionRecord("Weather?", "Sunny."),
                                                   InteractionRecord("Dog name?", "Rex."))),
        EpisodeRecord("Hello", "Hi there!"),
    ]
    ds = EpisodeDataset(records, tok, 64)
    batch = collate_episodes([ds[0], ds[1]], pad_id=tok.pad_id)
    assert batch[1]["active"].tolist() == [True, False]
    model = tiny_model(tok)
    objective = SMATObjective(model, bptt_depth=2)
    objective.record = True

    def run(turns):
        model.zero_grad(set_to_none=True)
        out = objective(turns)
        out["loss"].backward()
        grads = [p.grad.clone() if p.grad is not None else None for p in model.parameters()]
        return out, grads, [s.detach().clone() for s in objective.stms]

    clean, clean_grads, stms = run(batch)
    # the ended row's memory is carried unchanged through its inactive turns
    torch.testing.assert_close(stms[2][:, 1], stms[1][:, 1], rtol=0, atol=0)
    # its (garbage) content never counts: loss, token count and gradients are unchanged
    g = torch.Generator().manual_seed(0)
    dirty = [dict(t) for t in batch]
    for t in dirty[1:]:
        width = t["input_ids"].shape[1]
        t["input_ids"] = t["input_ids"].clone()
        t["input_ids"][1] = torch.randint(10, 1000, (width,), generator=g)
        t["attention_mask"] = t["attention_mask"].clone()
        t["attention_mask"][1] = True
        t["labels"] = t["labels"].clone()
        t["labels"][1] = torch.randint(10, 1000, (width,), generator=g)
    out, grads, dirty_stms = run(dirty)
    torch.testing.assert_close(out["loss"], clean["loss"])
    assert int(out["tokens"]) == int(clean["tokens"])
    torch.testing.assert_close(dirty_stms[2][:, 1], stms[1][:, 1], rtol=0, atol=0)
    for a, b in zip(grads, clean_grads):
        assert (a is None) == (b is None)
        if a is not None:
            torch.testing.assert_close(a, b)
    # and the batch equals the two episodes run alone (token-weighted)
    alone = [objective(collate_episodes([ds[i]], pad_id=tok.pad_id)) for i in (0, 1)]
    torch.testing.assert_close(clean["ce_sum"], alone[0]["ce_sum"] + alone[1]["ce_sum"], rtol=1e-5, atol=1e-5)
    assert int(clean["tokens"]) == int(alone[0]["tokens"]) + int(alone[1]["tokens"])


def test_example_yaml_runs_through_the_stage_registry(tmp_path):
    from pathlib import Path

    from training.config import load_config
    from training.stages import get_stage

    stage = get_stage("smat")
    root = Path(__file__).resolve().parents[2]
    cfg = load_config(root / "examples/configs/tiny_smat.yaml", stage.CONFIG_CLASS)
    assert cfg.unfreeze_schedule == [(0, ["memory"]), (10, ["memory", "rest"])]
    cfg.train.output_dir, cfg.train.max_steps, cfg.train.eval_every = str(tmp_path), 6, 0
    cfg.train.warmup_steps, cfg.train.log_every = 2, 2
    final = stage.run_stage(cfg)
    assert final == tmp_path / "final"
    RxT.from_pretrained(final)
    assert (final / "tokenizer.json").is_file()
    # the next stage (or a re-run) loads that directory as its model, with its tokenizer
    cfg.model, cfg.train.output_dir, cfg.train.max_steps = str(final), str(tmp_path / "again"), 2
    cfg.train.warmup_steps = 1
    assert stage.run_stage(cfg).is_dir()


def test_resume_across_an_unfreeze_step_matches_a_straight_run(tmp_path, tok, dataset):
    schedule = [(0, ["memory"]), (3, ["memory", "rest"])]
    straight = SMATTrainer(tiny_model(tok), stage_config(tmp_path / "a", unfreeze_schedule=schedule,
                                                         train={"max_steps": 6}), dataset)
    straight.train()
    first = SMATTrainer(tiny_model(tok), stage_config(tmp_path / "b", unfreeze_schedule=schedule,
                                                      train={"max_steps": 6}), dataset)
    first.train(num_steps=2)
    second = SMATTrainer(tiny_model(tok, seed=7), stage_config(tmp_path / "b", unfreeze_schedule=schedule,
                                                               train={"max_steps": 6}), dataset)
    second.resume_from(tmp_path / "b" / "checkpoints")
    assert second.step == 2
    second.train()
    for (k, a), b in zip(straight.rxt.state_dict().items(), second.rxt.state_dict().values()):
        torch.testing.assert_close(a, b, msg=k)

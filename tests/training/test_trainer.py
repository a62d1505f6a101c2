"""Trainer: loss goes down, resume equivalence, artefacts (final/, metrics.json, loss_curves.png, tensorboard)."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from rxt.classic import DecoderLM
from rxt.config import TransformerConfig
from training.checkpoint import list_checkpoints
from training.config import TrainConfig
from training.trainer import StepOutput, Trainer


class NextTokenTrainer(Trainer):
    def compute_loss(self, model, batch):
        ids = batch["input_ids"]
        logits = model(ids[:, :-1]).logits
        targets = ids[:, 1:]
        loss = F.cross_entropy(logits.reshape(-1, logits.size(-1)).float(), targets.reshape(-1))
        acc = (logits.argmax(-1) == targets).float().mean().item()
        return StepOutput(loss, {"acc": acc}, targets.numel())


def repetitive_data(n=64, seq=17, period=5, vocab=128, seed=0):
    g = torch.Generator().manual_seed(seed)
    pattern = torch.randint(4, vocab, (period,), generator=g)
    rows = []
    for i in range(n):
        offset = i % period
        rows.append({"input_ids": pattern.roll(-offset).repeat(seq // period + 2)[:seq]})
    return rows


def random_data(n=64, seq=17, vocab=128, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [{"input_ids": torch.randint(0, vocab, (seq,), generator=g)} for _ in range(n)]


def make(tmp_path, data, eval_data=None, model_seed=0, callbacks=(), **overrides):
    torch.manual_seed(model_seed)
    model = DecoderLM(TransformerConfig.preset("tiny"))
    kw = {"lr": 3e-3, "warmup_steps": 2, "max_steps": 30, "batch_size": 4, "log_every": 5, "device": "cpu",
          "output_dir": str(tmp_path), "keep_last": 0, **overrides}
    return NextTokenTrainer(model, TrainConfig(**kw), data, eval_data, callbacks=callbacks)


def test_loss_goes_down_and_artefacts(tmp_path):
    trainer = make(tmp_path, repetitive_data(), eval_data=repetitive_data(16, seed=0), eval_every=10, lr=1e-2)
    history = trainer.train()
    losses = [e["loss"] for e in history["train"]]
    assert losses[-1] < 0.5 * losses[0], losses
    assert trainer.step == 30
    assert [e["step"] for e in history["eval"]] == [10, 20, 30]
    assert history["eval"][-1]["val_loss"] < history["eval"][0]["val_loss"]
    assert "val_acc" in history["eval"][-1]
    # artefacts
    loaded = DecoderLM.from_pretrained(tmp_path / "final")
    for (n, a), b in zip(trainer.unwrapped_model.state_dict().items(), loaded.state_dict().values()):
        assert torch.equal(a, b), n
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["step"] == 30 and len(metrics["train"]) == 6
    assert (tmp_path / "loss_curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert any((tmp_path / "tensorboard").rglob("events.out.tfevents*"))
    assert [p.name for p in list_checkpoints(tmp_path / "checkpoints")] == ["step-00000030"]
    entry = history["train"][-1]
    assert entry["tokens_per_s"] > 0 and entry["tokens_seen"] == 30 * 4 * 16
    trainer.close()


def _weights(trainer):
    return {k: v.clone() for k, v in trainer.unwrapped_model.state_dict().items()}


@pytest.mark.parametrize("accum", [1, 2])
def test_resume_equivalence(tmp_path, accum):
    # 13 samples, 4 per step -> 3 steps per epoch: the run crosses epoch boundaries, the resume point is mid-epoch
    data = random_data(n=13)
    common = {"max_steps": 10, "warmup_steps": 3, "batch_size": 4 // accum, "grad_accum_steps": accum, "lr": 1e-2}
    straight = make(tmp_path / "a", data, **common)
    straight.train()

    first = make(tmp_path / "b", data, **common)
    first.train(num_steps=5)
    assert first.step == 5
    ckpt = list_checkpoints(tmp_path / "b" / "checkpoints")[-1]
    # fresh objects with a different init and a different global RNG state: everything must come from the ckpt
    torch.manual_seed(1234)
    second = make(tmp_path / "b", data, model_seed=99, **common)
    second.resume_from(ckpt)
    assert (second.step, second.epoch, second.position) == (first.step, first.epoch, first.position)
    second.train()
    assert second.step == 10
    a, b = _weights(straight), _weights(second)
    for k in a:
        assert torch.equal(a[k], b[k]), k
    # optimizer state equal as well
    sa, sb = straight.optimizer.state_dict()["state"], second.optimizer.state_dict()["state"]
    for i in sa:
        assert torch.equal(sa[i]["exp_avg"], sb[i]["exp_avg"])
    # history continues across the resume
    assert [e["step"] for e in second.history["train"]] == [e["step"] for e in straight.history["train"]]


def test_resume_from_directory_picks_latest_and_keeps_position(tmp_path):
    data = random_data(n=20)
    t = make(tmp_path, data, max_steps=6, save_every=2, batch_size=3)
    t.train()
    names = [p.name for p in list_checkpoints(tmp_path / "checkpoints")]
    assert names == ["step-00000002", "step-00000004", "step-00000006"]
    t2 = make(tmp_path, data, max_steps=6, save_every=2, batch_size=3)
    t2.resume_from(tmp_path / "checkpoints")
    assert t2.step == 6
    # 20 samples, 3 per step -> 6 steps per epoch; after 6 steps the next epoch starts at position 0
    assert (t2.epoch, t2.position) == (1, 0)


def test_data_order_is_a_permutation_per_epoch(tmp_path):
    t = make(tmp_path, random_data(n=10), batch_size=3)
    seen = [i for b in t.rank_batches(0, 0) for i in b]
    assert len(seen) == 9 and len(set(seen)) == 9  # 3 full steps, tail of 1 dropped
    assert list(t.rank_batches(0, 3)) == list(t.rank_batches(0, 0))[1:]
    assert list(t.rank_batches(1, 0)) != list(t.rank_batches(0, 0))


def test_too_small_dataset_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="fewer than one global batch"):
        make(tmp_path, random_data(n=3), batch_size=4)


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_runs(tmp_path, precision):
    t = make(tmp_path, repetitive_data(n=16), max_steps=3, log_every=1, precision=precision)
    history = t.train()
    assert all(torch.isfinite(torch.tensor(e["loss"])) for e in history["train"])
    assert t.scaler.is_enabled() == (precision == "fp16")
    assert (tmp_path / "checkpoints" / "step-00000003" / "scaler.pt").exists()


def test_interrupted_save_leaves_previous_checkpoint_loadable(tmp_path, monkeypatch):
    import training.checkpoint as ck

    t = make(tmp_path, random_data(n=8), max_steps=2, batch_size=4)
    t.train()
    path = list_checkpoints(tmp_path / "checkpoints")[-1]

    def boom(*a, **k):
        raise RuntimeError("disk full")

    monkeypatch.setattr(ck.torch, "save", boom)
    with pytest.raises(RuntimeError, match="disk full"):
        ck.save_checkpoint(path, model=t.unwrapped_model, optimizer=t.optimizer)
    monkeypatch.undo()
    assert not list(path.parent.glob(".tmp-*"))
    state = ck.load_checkpoint(path, model=t.unwrapped_model, optimizer=t.optimizer)
    assert state["step"] == 2


def test_a_failed_automatic_compile_falls_back_to_eager(tmp_path):
    """compile=None (auto, CUDA only) retries a step eagerly when the compiled model fails; asked-for compile
    (compile=True) and eager runs raise as usual."""
    trainer = make(tmp_path, random_data(), max_steps=3)

    class Broken(torch.nn.Module):
        def forward(self, *args, **kwargs):
            raise RuntimeError("inductor says no")

    eager = trainer.model
    trainer._compile_auto, trainer._compiled, trainer.model = True, True, Broken()
    trainer._eager_model = eager
    with pytest.warns(UserWarning, match="torch.compile failed .*inductor says no.*training eagerly"):
        trainer.train()
    assert trainer.model is eager and not trainer._compiled and trainer.step == 3
    other = make(tmp_path / "b", random_data(), max_steps=3)
    other._compiled, other.model = True, Broken()  # compile asked for explicitly: no silent fallback
    with pytest.raises(RuntimeError, match="inductor says no"):
        other.train()

"""No host reads outside log steps; non-finite steps skipped on the device; metrics read lazily and exactly."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from test_trainer import repetitive_data

from rxt.classic import DecoderLM
from rxt.config import TransformerConfig
from training.callbacks import Callback, PrintMetrics, TokenCounter
from training.config import TrainConfig
from training.nonfinite import NonFiniteLossError, NonFiniteLossGuard, optimizer_step, skip_flag
from training.step_metrics import PendingMetrics
from training.trainer import StepOutput, Trainer

READS = ("item", "tolist", "__float__", "__int__", "__bool__", "__index__", "numpy", "cpu")


class DeviceMetricsTrainer(Trainer):
    """Every metric a device tensor; the token count a host int, as packed rows and collates give it."""

    def compute_loss(self, model, batch):
        ids = batch["input_ids"]
        # validate=False: as the stages' packed paths (the token-id range check reads a flag back)
        logits = model.decoder(ids[:, :-1], validate=False).logits
        targets = ids[:, 1:]
        loss = F.cross_entropy(logits.reshape(-1, logits.size(-1)).float(), targets.reshape(-1))
        acc = (logits.detach().argmax(-1) == targets).float().mean()
        return StepOutput(loss, {"acc": acc}, targets.numel())


def make_device(tmp_path, callbacks=(), **overrides):
    torch.manual_seed(0)
    kw = {"lr": 3e-3, "warmup_steps": 2, "max_steps": 10, "batch_size": 4, "log_every": 4, "device": "cpu",
          "output_dir": str(tmp_path), "keep_last": 0, **overrides}
    return DeviceMetricsTrainer(DecoderLM(TransformerConfig.preset("tiny")), TrainConfig(**kw), repetitive_data(),
                                callbacks=callbacks)


@pytest.fixture
def host_reads(monkeypatch):
    """Records ``(trainer step, method)`` for every tensor read to the host (what syncs a GPU) while a trainer
    runs; ``reads.trainer`` must be set first."""

    class Reads(list):
        trainer = None

    reads = Reads()
    for name in READS:
        original = getattr(torch.Tensor, name)

        def wrapper(self, *args, _original=original, _name=name, **kwargs):
            if reads.trainer is not None:
                reads.append((reads.trainer.step, _name))
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, wrapper)
    return reads


@pytest.mark.parametrize("accum", [1, 2])
def test_no_host_read_outside_log_steps(tmp_path, host_reads, accum):
    lines = []
    trainer = make_device(tmp_path, [TokenCounter(), PrintMetrics(print_fn=lines.append)], max_steps=10,
                          log_every=4, grad_accum_steps=accum)
    batches = list(trainer._loader())  # one epoch's micro-batches, served again for the next epoch
    # the batches are made before counting: on a GPU they are host tensors (the index lists and the collate read
    # host memory, which syncs nothing); on this CPU-only machine every tensor would count
    trainer._loader = lambda: iter(batches)
    host_reads.trainer = trainer
    trainer.train()
    host_reads.trainer = None
    read_steps = {step for step, _ in host_reads}
    assert read_steps <= {4, 8, 10}, sorted(host_reads)  # log steps 4 and 8, the last step 10
    for step in (4, 8):  # ONE transfer brings back every pending step's metrics
        assert [name for s, name in host_reads if s == step] == ["tolist"], step
    assert [e["step"] for e in trainer.history["train"]] == [4, 8, 10]
    assert trainer.tokens_seen == 10 * accum * 4 * 16  # counted on the host
    assert len(lines) == 2 and "loss=" in lines[0]  # PrintMetrics printed at the log steps, with values


def test_lazy_metrics_equal_per_step_read_back(tmp_path):
    class Losses(Callback):
        def __init__(self):
            self.seen = []

        def on_step(self, trainer, step, metrics):
            self.seen.append((step, metrics["loss"], metrics["grad_norm"], metrics["acc"], metrics["tokens"]))

    lazy = Losses()
    make_device(tmp_path / "a", [lazy], log_every=5).train()
    eager = make_device(tmp_path / "b", log_every=1)
    eager.train()
    expected = [(e["step"], e["loss"], e["grad_norm"], e["acc"], 64) for e in eager.history["train"]]
    assert lazy.seen == expected  # reading early reads back the pending steps, exactly


def _params(trainer):
    return [p.detach().clone() for p in trainer.unwrapped_model.parameters()]


class Snapshots(Callback):
    def __init__(self):
        self.weights, self.opt_steps = {}, {}

    def on_step(self, trainer, step, metrics):
        self.weights[step] = _params(trainer)
        self.opt_steps[step] = [float(s["step"]) for s in trainer.optimizer.state.values()]


class NaNSteps:
    """Wraps compute_loss: the optimizer steps with index in ``steps`` (0-based) get a NaN loss (and, with
    ``poison``, NaN gradients)."""

    def __init__(self, trainer, steps, poison=True):
        self.trainer, self.steps, self.poison = trainer, set(steps), poison
        self.inner = trainer.compute_loss

    def __call__(self, model, batch):
        out = self.inner(model, batch)
        if self.trainer.step in self.steps:
            out.loss = out.loss * float("nan") if self.poison else out.loss + torch.tensor(float("nan"))
        return out


@pytest.mark.parametrize("poison", [True, False])
def test_non_finite_step_leaves_weights_and_optimizer_unchanged(tmp_path, poison):
    snaps = Snapshots()
    trainer = make_device(tmp_path, [snaps], max_steps=8, nonfinite_loss_patience=2, log_every=8,
                          max_grad_norm=1.0)
    trainer.compute_loss = NaNSteps(trainer, {3, 4}, poison)  # the 4th and 5th steps
    trainer.train()
    for bad in (4, 5):
        assert all(torch.equal(a, b) for a, b in zip(snaps.weights[bad], snaps.weights[3])), bad
        assert snaps.opt_steps[bad] == snaps.opt_steps[3]  # the fused kernel restored its step count
    assert not all(torch.equal(a, b) for a, b in zip(snaps.weights[6], snaps.weights[5]))  # training resumed
    assert all(torch.isfinite(p).all() for p in trainer.unwrapped_model.parameters())
    assert trainer.skipped_steps == 2 and trainer.step == 8
    assert snaps.opt_steps[8] == [6.0] * len(snaps.opt_steps[8])  # 8 steps, 2 skipped


def test_fp16_nan_loss_is_skipped_through_the_grad_scaler(tmp_path):
    snaps = Snapshots()
    trainer = make_device(tmp_path, [snaps], precision="fp16", max_steps=6, nonfinite_loss_patience=2, log_every=6)
    scale = trainer.scaler.get_scale()
    trainer.compute_loss = NaNSteps(trainer, {3, 4}, poison=False)  # NaN loss, finite (scaled) gradients
    trainer.train()
    for bad in (4, 5):
        assert all(torch.equal(a, b) for a, b in zip(snaps.weights[bad], snaps.weights[3])), bad
        assert snaps.opt_steps[bad] == snaps.opt_steps[3]
    assert trainer.scaler.get_scale() == scale / 4  # the scaler backed off at each skipped step, as for overflow
    assert trainer.skipped_steps == 2


def test_guard_raises_after_patience_at_the_read_back(tmp_path):
    snaps = Snapshots()
    trainer = make_device(tmp_path, [snaps], max_steps=20, nonfinite_loss_patience=2, log_every=10, save_every=0)
    trainer.compute_loss = NaNSteps(trainer, range(3, 100))
    with pytest.raises(NonFiniteLossError, match=r"loss is nan at step 6\b.*3 non-finite step\(s\) in a row"):
        trainer.train()
    assert trainer.step == 10  # noticed at the log step's read-back ...
    assert max(snaps.weights) == 9  # the error came before step 10's callbacks
    for weights in [*(snaps.weights[s] for s in range(4, 10)), _params(trainer)]:  # ... and no skipped step
        assert all(torch.equal(a, b) for a, b in zip(weights, snaps.weights[3]))  # touched a weight
    assert not (tmp_path / "final").exists()


def test_guard_counts_grad_norm_outside_fp16():
    guard = NonFiniteLossGuard(patience=0)
    with pytest.raises(NonFiniteLossError, match="grad norm inf"):
        guard.check(1, {"loss": 1.0, "grad_norm": float("inf")})
    NonFiniteLossGuard(patience=0, watch_grad_norm=False).check(1, {"loss": 1.0, "grad_norm": float("inf")})


def test_skip_flag_and_fused_step_on_device():
    p = torch.nn.Parameter(torch.ones(3))
    opt = torch.optim.AdamW([p], lr=0.1, fused=True)
    p.grad = torch.full((3,), float("nan"))
    flag = skip_flag(torch.tensor(1.0), p.grad.norm())
    assert flag.dtype == torch.float32 and flag.item() == 1.0
    optimizer_step(opt, flag)
    assert torch.equal(p.detach(), torch.ones(3)) and not hasattr(opt, "found_inf")
    p.grad = torch.ones(3)
    optimizer_step(opt, skip_flag(torch.tensor(1.0), p.grad.norm()))
    assert (p.detach() < 1).all() and float(opt.state[p]["step"]) == 1.0


def test_pending_metrics_read_back_once_in_order():
    pending = PendingMetrics(torch.device("cpu"))
    seen = []
    pending.on_read = lambda r: seen.append(r.step)
    a = pending.add(1, {"loss": torch.tensor(2.0), "skipped": torch.tensor(0.0)}, {"lr": 0.1, "tokens": 5},
                    ["loss", "lr", "tokens"])
    b = pending.add(2, {"loss": torch.tensor(3.0), "skipped": torch.tensor(1.0)}, {"lr": 0.2, "tokens": 6},
                    ["loss", "lr", "tokens"])
    assert a["tokens"] == 5 and a["lr"] == 0.1 and not a.ready and seen == []
    assert b["loss"] == 3.0 and a.ready and seen == [1, 2]  # one read brings back both
    assert dict(a) == {"loss": 2.0, "lr": 0.1, "tokens": 5} and b.skipped and not a.skipped
    assert pending.read_back() == []

"""Built-in callbacks: token limit, checkpoint keeper, early stopping, hub push, printing, hook order."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from rxt.classic import DecoderLM
from rxt.config import TransformerConfig
from training.callbacks import Callback, CheckpointKeeper, EarlyStopping, HubPush, PrintMetrics, TokenCounter
from training.checkpoint import list_checkpoints
from training.config import TrainConfig
from training.trainer import StepOutput, Trainer


class NextTokenTrainer(Trainer):
    def compute_loss(self, model, batch):
        ids = batch["input_ids"]
        logits = model(ids[:, :-1]).logits
        loss = F.cross_entropy(logits.reshape(-1, logits.size(-1)), ids[:, 1:].reshape(-1))
        return StepOutput(loss, {}, ids[:, 1:].numel())


def data(n=32, seq=9, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [{"input_ids": torch.randint(0, 128, (seq,), generator=g)} for _ in range(n)]


def make(tmp_path, callbacks=(), eval_data=None, **overrides):
    torch.manual_seed(0)
    kw = {"lr": 1e-3, "warmup_steps": 1, "max_steps": 20, "batch_size": 4, "log_every": 5, "device": "cpu",
          "output_dir": str(tmp_path), "keep_last": 0, **overrides}
    return NextTokenTrainer(DecoderLM(TransformerConfig.preset("tiny")), TrainConfig(**kw), data(), eval_data,
                            callbacks=callbacks)


class Recorder(Callback):
    def __init__(self):
        self.events = []

    def on_step(self, trainer, step, metrics):
        self.events.append(("step", step))

    def on_epoch(self, trainer, epoch):
        self.events.append(("epoch", epoch))

    def on_eval(self, trainer, metrics):
        self.events.append(("eval", trainer.step))

    def on_save(self, trainer, path):
        self.events.append(("save", path.name))

    def on_end(self, trainer):
        self.events.append(("end", trainer.step))


def test_hooks_fire_in_order(tmp_path):
    rec = Recorder()
    make(tmp_path, [rec], eval_data=data(8, seed=1), max_steps=9, eval_every=4, save_every=8).train()
    # 32 samples / 4 per step = 8 steps per epoch
    assert rec.events == [
        *[("step", s) for s in range(1, 5)], ("eval", 4), *[("step", s) for s in range(5, 9)], ("epoch", 0),
        ("eval", 8), ("save", "step-00000008"), ("step", 9), ("eval", 9), ("save", "step-00000009"), ("end", 9),
    ]


def test_token_counter_stops_at_limit(tmp_path):
    counter = TokenCounter(limit=100)  # 32 target tokens per step -> 4 steps
    t = make(tmp_path, [counter])
    t.train()
    assert t.step == 4 and counter.tokens == 128 and t.tokens_seen == 128
    assert "token limit 100" in t.stop_reason
    assert [e["step"] for e in t.history["train"]] == [4]  # the partial log window is flushed at the end
    assert (tmp_path / "final" / "model.safetensors").exists()  # the end-of-training outputs still happen


def test_checkpoint_keeper_keeps_last_n(tmp_path):
    t = make(tmp_path, [CheckpointKeeper(2)], max_steps=10, save_every=2)
    t.train()
    assert [p.name for p in list_checkpoints(tmp_path / "checkpoints")] == ["step-00000008", "step-00000010"]
    # cfg.keep_last installs a keeper automatically
    t = make(tmp_path / "auto", max_steps=6, save_every=1, keep_last=3)
    t.train()
    assert [p.name for p in list_checkpoints(tmp_path / "auto" / "checkpoints")] == [
        "step-00000004", "step-00000005", "step-00000006"]


def test_early_stopping_unit():
    class T:
        should_stop = False
        reason = None

        def request_stop(self, reason):
            self.should_stop, self.reason = True, reason

    trainer = T()
    es = EarlyStopping(patience=2)
    for v in [3.0, 2.0, 2.5, 2.1]:
        es.on_eval(trainer, {"val_loss": v})
    assert trainer.should_stop and "2 evaluations" in trainer.reason
    trainer = T()
    es = EarlyStopping(patience=2, metric="val_acc", mode="max")
    for v in [0.1, 0.2, 0.15, 0.3, 0.25]:
        es.on_eval(trainer, {"val_acc": v})
    assert not trainer.should_stop and es.best == 0.3 and es.bad_evals == 1


def test_early_stopping_in_training(tmp_path):
    # lr 0 -> validation loss never improves after the first evaluation
    t = make(tmp_path, eval_data=data(8, seed=1), lr=1e-12, eval_every=2, early_stopping_patience=3)
    t.train()
    evals = [e["step"] for e in t.history["eval"]]
    assert t.step == 8 and evals == [2, 4, 6, 8]
    assert t.stop_reason.startswith("early stopping")


def test_hub_push_called_on_save(tmp_path, monkeypatch):
    import huggingface_hub
    from hub_fixtures import RecordingHubApi

    RecordingHubApi.reset()
    monkeypatch.setattr(huggingface_hub, "HfApi", RecordingHubApi)  # records the uploads (tests/hub_fixtures.py)
    t = make(tmp_path, max_steps=4, save_every=2, push_to_hub="me/tiny")
    t.train()
    assert [u["repo_id"] for u in RecordingHubApi.uploads] == ["me/tiny", "me/tiny"]
    assert any(isinstance(c, HubPush) for c in t.callbacks)


def test_print_metrics(tmp_path):
    lines = []
    make(tmp_path, [PrintMetrics(every=2, print_fn=lines.append)], max_steps=4).train()
    assert [line.split(":")[0] for line in lines] == ["step 2", "step 4"]
    assert "loss=" in lines[0] and "tokens=32" in lines[0]


def test_callback_state_survives_resume(tmp_path):
    t = make(tmp_path, [TokenCounter()], max_steps=6)
    t.train(num_steps=3)
    t2 = make(tmp_path, [TokenCounter()], max_steps=6)
    t2.resume_from(tmp_path / "checkpoints")
    assert t2.callbacks[0].tokens == 96
    t2.train()
    assert t2.callbacks[0].tokens == 192

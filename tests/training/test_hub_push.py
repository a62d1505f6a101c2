"""The HubPush callback uploads what the trained module saves plus a model card with the run's metrics."""

from __future__ import annotations

import huggingface_hub
import torch
import torch.nn.functional as F
from hub_fixtures import RecordingHubApi

from rxt.classic import DecoderLM
from rxt.config import TransformerConfig
from training.config import TrainConfig
from training.trainer import StepOutput, Trainer


class NextToken(Trainer):
    def compute_loss(self, model, batch):
        ids = batch["input_ids"]
        logits = model(ids[:, :-1]).logits
        loss = F.cross_entropy(logits.reshape(-1, logits.size(-1)).float(), ids[:, 1:].reshape(-1))
        return StepOutput(loss, {}, ids[:, 1:].numel())


def test_every_save_pushes_files_and_a_card_with_the_metrics(tmp_path, monkeypatch):
    RecordingHubApi.reset()
    monkeypatch.setattr(huggingface_hub, "HfApi", RecordingHubApi)
    torch.manual_seed(0)
    data = [{"input_ids": torch.randint(0, 128, (9,))} for _ in range(16)]
    cfg = TrainConfig(lr=1e-3, warmup_steps=0, max_steps=4, batch_size=4, log_every=1, save_every=2, device="cpu",
                      output_dir=str(tmp_path / "run"), run_name="lm", push_to_hub="org/lm", keep_last=1)
    NextToken(DecoderLM(TransformerConfig.preset("tiny")), cfg, data).train()
    assert [u["commit_message"] for u in RecordingHubApi.uploads] == ["lm: step 2", "lm: step 4"]
    assert {"config.json", "model.safetensors", "README.md"} <= set(RecordingHubApi.uploads[-1]["files"])
    assert RecordingHubApi.repos["org/lm"]["private"] is True
    card = RecordingHubApi.repos["org/lm"]["branches"]["main"]["README.md"].decode()
    assert "optimizer steps: 4" in card and "`DecoderLM`" in card and "license: apache-2.0" in card

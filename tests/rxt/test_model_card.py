"""The generated model card reads its figures from the files beside the model, never typed in."""

from __future__ import annotations

import json

import torch

from rxt.config import RxTConfig
from rxt.model import RxT
from rxt.model_card import count_parameters, model_card


def test_card_names_architecture_stages_metrics_and_retention(tmp_path):
    torch.manual_seed(0)
    model = RxT(RxTConfig.preset("tiny"))
    recipe = tmp_path / "recipe"
    final = recipe / "4_smat" / "final"
    model.save_pretrained(final)
    assert count_parameters(final) == model.num_parameters()  # tied tensors counted once
    (recipe / "4_smat" / "metrics.json").write_text(json.dumps(
        {"train": [{"step": 40, "loss": 2.5}], "eval": [{"step": 40, "val_loss": 2.75, "val_answer_acc": 0.125}],
         "step": 40, "tokens_seen": 1234, "stop_reason": "time budget"}))
    (recipe / "recipe_summary.json").write_text(json.dumps({"preset": "tiny", "stages": {
        "joint": {"final": "x", "metrics": {"train_loss": 4.5}}, "smat": {"final": "y", "metrics": {"val_loss": 2.75}}}}))
    (recipe / "memory_retention.json").write_text(json.dumps({
        "device": "cpu", "command": "python benchmarks/memory_retention.py", "settings": {"distances": [1, 2]},
        "systems": {"stage4": {"recall": {"1": 0.5, "2": 0.25}, "reward_mean": 3.5}}}))
    card = model_card(final, repo_id="org/tiny", source_dir=final)
    assert card.startswith("---\nlicense: apache-2.0\n")
    assert f"`RxT`, {model.num_parameters():,} parameters" in card and "| stm_slots | 8 |" in card
    assert "preset `tiny`" in card and "- **joint**: train_loss=4.5" in card and "- **smat**: val_loss=2.75" in card
    assert "Last stage (4_smat)" in card and "optimizer steps: 40, tokens seen: 1234, stopped: time budget" in card
    assert "| val_answer_acc | 0.125 |" in card
    assert "| stage4 | 0.5 | 0.25 | 3.5 |" in card
    assert "not affiliated with Reactive AI" in card and "Apache-2.0" in card
    bare = model_card(final, repo_id="org/tiny")  # no source: nothing beside the folder itself
    assert "No training metrics were found" in bare and "Memory retention" not in bare

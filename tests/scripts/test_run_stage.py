"""`scripts/run_stage.py`: a recipe step's config with fields overridden by ``--set dotted.key=yaml``, run as
``rxnn train`` would run it."""

from __future__ import annotations

import pytest


@pytest.fixture
def variant(load_script):
    return load_script("scripts/run_stage.py")


def test_set_parses_yaml_into_nested_sections_and_names_what_is_wrong(variant):
    raw = {"reward": {"bleu_weight": 1.0}, "curriculum": []}
    variant.override(raw, "reward.cosine_weight=0.0")
    variant.override(raw, "curriculum=[{steps: 2, epochs: 4}]")
    assert raw == {"reward": {"bleu_weight": 1.0, "cosine_weight": 0.0}, "curriculum": [{"steps": 2, "epochs": 4}]}
    with pytest.raises(SystemExit, match="expected dotted.key=value"):
        variant.override(raw, "reward.cosine_weight")
    with pytest.raises(SystemExit, match="'train' is not a section"):
        variant.override(raw, "train.lr=1e-4")


def test_a_tiny_variant_trains_and_keeps_its_snapshots(variant, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    variant.main(["--config", "training/presets/tiny/5_mrl.yaml", "--stage", "mrl", "--model", "tiny",
                  "--out", str(tmp_path), "--device", "cpu",
                  "--set", "curriculum=[{steps: 2, strategy: long_range, epochs: 2, episodes_per_epoch: 8}]",
                  "--set", "eval_episodes=0", "--set", "reward.cosine_weight=0.0",
                  "--set", "train.save_every=1", "--set", "train.keep_last=0"])
    assert (tmp_path / "final" / "model.safetensors").is_file()
    assert sorted(p.name for p in (tmp_path / "snapshots").iterdir()) == ["update-000001", "update-000002"]

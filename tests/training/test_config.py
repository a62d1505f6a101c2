"""TrainConfig validation and the strict YAML/JSON loader."""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import pytest

from training.config import ConfigError, TrainConfig, load_config


@dataclass
class StageConfig:
    train: TrainConfig = field(default_factory=TrainConfig)
    mlm_weight: float = 1.0
    dataset: str = "synthetic"
    turns: list[int] = field(default_factory=lambda: [2, 4])
    tokenizer: str | None = None


def test_defaults_validate_and_round_trip():
    cfg = TrainConfig()
    assert load_config(cfg.to_dict(), TrainConfig) == cfg


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"lr": 0.0}, "TrainConfig.lr=0.0 must be > 0"),
        ({"batch_size": 0}, "TrainConfig.batch_size=0 must be >= 1"),
        ({"warmup_steps": 50, "max_steps": 10}, "warmup_steps=50 must be <= max_steps (10)"),
        ({"precision": "fp8"}, "TrainConfig.precision='fp8' must be one of"),
        ({"min_lr_ratio": 1.5}, "min_lr_ratio=1.5 must be in [0, 1]"),
        ({"betas": (0.9, 1.0)}, "betas"),
        ({"push_to_hub": "no-slash"}, "push_to_hub"),
    ],
)
def test_validation_names_field_and_limit(kwargs, needle):
    with pytest.raises(ConfigError) as info:
        TrainConfig(**kwargs)
    assert needle in str(info.value)


def test_yaml_nested_sections(tmp_path):
    path = tmp_path / "stage.yaml"
    path.write_text("train:\n  lr: 1e-4\n  betas: [0.9, 0.99]\n  max_steps: 20\n  warmup_steps: 2\n"
                    "mlm_weight: 2\nturns: [2, 4, 8]\ntokenizer: null\n")
    cfg = load_config(path, StageConfig)
    assert cfg.train.lr == 1e-4 and isinstance(cfg.train.lr, float)  # '1e-4' without a dot is a float
    assert cfg.train.betas == (0.9, 0.99)
    assert cfg.mlm_weight == 2.0 and cfg.turns == [2, 4, 8] and cfg.tokenizer is None
    assert cfg.train.batch_size == TrainConfig().batch_size


def test_json_file(tmp_path):
    path = tmp_path / "train.json"
    path.write_text(json.dumps({"lr": 0.001, "precision": "bf16"}))
    cfg = load_config(path, TrainConfig)
    assert cfg.precision == "bf16" and cfg.lr == 0.001


def test_unknown_key_is_named(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("train:\n  lr: 0.001\n  learning_rate: 0.01\nmlm_weight: 1.0\n")
    with pytest.raises(ConfigError, match=r"unknown config key\(s\) 'train.learning_rate'"):
        load_config(path, StageConfig)
    with pytest.raises(ConfigError, match="'colour'"):
        load_config({"colour": 1}, StageConfig)


@pytest.mark.parametrize(
    ("data", "needle"),
    [
        ({"train": {"batch_size": "8"}}, "'train.batch_size': expected int, got str"),
        ({"train": {"batch_size": 8.5}}, "'train.batch_size': expected int, got float"),
        ({"train": {"compile": "yes"}}, "'train.compile': expected bool | None, got str"),
        ({"train": {"lr": True}}, "'train.lr': expected float, got bool"),
        ({"train": {"betas": [0.9]}}, "'train.betas': expected 2 values"),
        ({"train": {"precision": "fp64"}}, "'train.precision': expected one of"),
        ({"train": 3}, "'train': expected a mapping for TrainConfig, got int"),
        ({"turns": [2, "x"]}, "'turns[1]': expected int, got str"),
        ({"tokenizer": 5}, "'tokenizer': expected str | None, got int"),
        ({"mlm_weight": "heavy"}, "'mlm_weight': expected float, got str"),
    ],
)
def test_wrong_type_names_key_expected_and_actual(data, needle):
    with pytest.raises(ConfigError) as info:
        load_config(data, StageConfig)
    assert needle in str(info.value)


def test_missing_file_names_path(tmp_path):
    missing = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError, match=str(missing)):
        load_config(missing, StageConfig)


def test_invalid_value_in_nested_section_names_section():
    with pytest.raises(ConfigError, match=r"train: TrainConfig.lr=-1.0 must be > 0"):
        load_config({"train": {"lr": -1}}, StageConfig)


def test_non_mapping_file(tmp_path):
    path = tmp_path / "list.yaml"
    path.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="mapping at the top level"):
        load_config(path, StageConfig)

"""The fields every stage config shares, written once: stage configs subclass these and add their own.

`ModelStageConfig`: the loop settings (``train``) and the model to start from (``model``/``tokenizer``/
``model_overrides`` go to `training.model_loading.load_model_and_tokenizer`: a preset name or a
``save_pretrained`` directory, usually the previous stage's ``final/``). `DataStageConfig` adds the data sources
(`training.stages.data_config.DataSource`) and the held-out split. A subclass re-declares a field only to change
its default (e.g. ``train``'s run name).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from training.config import TrainConfig
from training.stages.data_config import DataSource


@dataclass
class ModelStageConfig:
    train: TrainConfig = field(default_factory=TrainConfig)
    model: str = "tiny"
    tokenizer: str | None = None
    model_overrides: dict[str, Any] = field(default_factory=dict)


@dataclass
class DataStageConfig(ModelStageConfig):
    data: list[DataSource] = field(default_factory=list)
    eval_data: list[DataSource] = field(default_factory=list)
    val_fraction: float = 0.0  # held out of `data` when `eval_data` is empty


__all__ = ["DataStageConfig", "ModelStageConfig"]

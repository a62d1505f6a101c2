"""What the episode stages (3: memory-attention pre-training, 4: SMAT) share: the step wrapped as a module
around the RxT (so DDP sees a forward), and a trainer over `collate_episodes` batches."""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from torch import nn

from rxt.model import RxT
from training.attention_backends import shape_varying_attention
from training.callbacks import Callback
from training.data.datasets import collate_episodes
from training.trainer import Trainer


class RxTObjective(nn.Module):
    """Base of a stage's step module: holds the RxT and the tokenizer; ``save_pretrained`` writes both."""

    def __init__(self, model: RxT, tokenizer: Any = None) -> None:
        super().__init__()
        self.model = model
        self.tokenizer = tokenizer
        self.record = False

    def save_pretrained(self, directory: str | Path) -> Path:
        path = self.model.save_pretrained(directory)
        if self.tokenizer is not None:
            self.tokenizer.save_pretrained(path)
        return Path(path)


class EpisodeTrainer(Trainer):
    """A trainer whose model is an `RxTObjective` over multi-turn episode batches.

    ``self.rxt`` is the RxT, ``self.settings`` the stage config, ``self.unwrapped_model`` the objective.
    """

    def __init__(
        self,
        objective: RxTObjective,
        config: Any,
        train_dataset: Sequence[Any],
        eval_dataset: Sequence[Any] | None,
        callbacks: Sequence[Callback],
        pad_id: int,
    ) -> None:
        self.settings = config
        self.rxt = objective.model
        self.pad_id = pad_id
        super().__init__(objective, config.train, train_dataset, eval_dataset, callbacks=callbacks, config=config)

    @staticmethod
    def check_model(model: Any, who: str) -> RxT:
        if not isinstance(model, RxT):
            raise TypeError(f"{who} needs an RxT, got {type(model).__name__}")
        return model

    @staticmethod
    def resolve_pad_id(pad_id: int | None, tokenizer: Any) -> int:
        if pad_id is not None:
            return pad_id
        return tokenizer.pad_id if tokenizer is not None else 0

    def collate(self, samples: list[Any]) -> Any:
        return collate_episodes(samples, self.pad_id)

    def _autocast(self):
        """The Trainer's precision context, plus SDPA without cuDNN: episode batches change shape from step to
        step, and cuDNN would plan every new shape on the host (`training.attention_backends`)."""
        stack = contextlib.ExitStack()
        stack.enter_context(super()._autocast())
        stack.enter_context(shape_varying_attention())
        return stack

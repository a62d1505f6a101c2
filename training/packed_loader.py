"""Trainer mixin for packed rows (`training.data.packing.PackedRows`) as training data.

The rows are moved to the training device once; a step gathers its rows by index there. No DataLoader, no
per-item Python, no host-to-device copy of token ids per step. The data order is the Trainer's own
(`Trainer.rank_batches`), so resuming and DDP sharding work unchanged.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch

from training.data.packing import PackedRows


class PackedRowsLoader:
    """Mix in before `Trainer`. Batches carry ``input_ids``, ``labels``, ``doc``, ``positions``,
    ``attention_mask`` (``doc >= 0``), ``maskable`` and ``num_targets`` (a host int: the AR targets, counted
    when the rows were packed). Subclasses add views in `add_views` (e.g. an MLM copy)."""

    _device_rows: PackedRows | None = None

    def _loader(self) -> Iterator[Any]:
        if not isinstance(self.train_dataset, PackedRows):
            return super()._loader()
        return self._packed_batches()

    def _packed_batches(self) -> Iterator[dict[str, Any]]:
        if self._device_rows is None:
            self._device_rows = self.train_dataset.to(self.device)
        for index in self.rank_batches(self.epoch, self.position):
            index_t = torch.tensor(index)
            batch: dict[str, Any] = self._device_rows.rows(self._to_device(index_t))
            batch["attention_mask"] = batch["doc"] >= 0
            batch["num_targets"] = int(self.train_dataset.targets[index_t].sum())
            yield self.add_views(batch)

    def _to_device(self, index: torch.Tensor) -> torch.Tensor:
        """The row index on the device without a host sync: a blocking (or pageable) host-to-device copy waits
        for the steps already queued, so the index goes through pinned memory, asynchronously."""
        if self.device.type != "cuda":
            return index
        return index.pin_memory().to(self.device, non_blocking=True)

    def add_views(self, batch: dict[str, Any]) -> dict[str, Any]:
        return batch

    def step_generator(self) -> torch.Generator:
        """A generator seeded by (seed, epoch, position): a resumed run draws the same random views, and every
        rank the same stream (each keeps its slice of the global micro-batch's draws, see `mask_tokens`)."""
        seed = hash((self.cfg.seed, self.epoch, self.position)) & 0x7FFF_FFFF_FFFF
        return torch.Generator(self.device).manual_seed(seed)


__all__ = ["PackedRowsLoader"]

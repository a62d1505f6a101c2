"""Step metrics that stay on the device until a log step reads them back.

Reading a step's loss back (``.item()``, ``.tolist()``, ``float(tensor)``) makes the host wait for the GPU to
finish everything queued so far, so the next step cannot be launched while this one runs. The `Trainer`
therefore keeps each step's device values (loss, grad norm, the stage's metrics, whether the step was skipped)
in a `PendingMetrics` queue and reads all queued steps back in ONE transfer at log steps (and at evaluation,
checkpoint and stop boundaries, and at the end). Values known on the host (the learning rate, the token count of
packed rows and collates) are there at once.

`StepMetrics` is what ``Trainer._train_step`` returns and what ``Callback.on_step`` receives: a read-only mapping
whose host values are ready, and whose device values arrive with the next read-back. Asking for a device value
before that triggers the read-back of every pending step at once (a host sync; under DDP a collective, so every
rank must ask: callbacks run on every rank with identical inputs).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Any

import torch
import torch.distributed as dist


class StepMetrics(Mapping[str, Any]):
    """One optimizer step's metrics (``loss``, ``lr``, ``grad_norm``, ``tokens``, the stage's own)."""

    def __init__(self, step: int, keys: list[str], host: dict[str, Any], fetch: Callable[[], None]) -> None:
        self.step = step
        self._keys = keys  # every key, in the order the step reported them
        self._values = dict(host)
        self._fetch = fetch
        self.skipped = False  # the optimizer step was skipped (non-finite loss or grad norm); set on read-back

    @property
    def ready(self) -> bool:
        return len(self._values) == len(self._keys)

    def _fill(self, values: dict[str, Any], skipped: bool) -> None:
        self._values.update(values)
        self.skipped = skipped

    def __getitem__(self, key: str) -> Any:
        if key not in self._values and key in self._keys:
            self._fetch()  # reads back every pending step (this one included)
        return self._values[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._keys)

    def __len__(self) -> int:
        return len(self._keys)

    def __repr__(self) -> str:
        shown = {k: self._values.get(k, "<on device>") for k in self._keys}
        return f"StepMetrics(step={self.step}, {shown})"


class PendingMetrics:
    """The steps whose device values have not been read back yet.

    ``add`` takes a step's device values (0-dim tensors on one device, stacked at once into one small tensor: no
    sync) and host values (floats/ints); ``read_back`` moves every pending step to the host in one transfer.
    Under DDP the values are all-reduced there, once: ``sum_keys`` are summed over ranks (token counts), every
    other value is averaged (a rank-mean; the grad norm and the skip flag are equal on every rank).
    """

    def __init__(self, device: torch.device, world_size: int = 1, sum_keys: tuple[str, ...] = ("tokens",)) -> None:
        self.device = device
        self.world_size = world_size
        self.sum_keys = set(sum_keys)
        self._pending: list[tuple[StepMetrics, list[str], torch.Tensor | None, list[str], list[float]]] = []
        self.on_read: Callable[[StepMetrics], None] | None = None  # called per step, in order, after a read-back

    def __len__(self) -> int:
        return len(self._pending)

    def add(self, step: int, device_values: dict[str, torch.Tensor], host_values: dict[str, Any],
            order: list[str], skip_key: str = "skipped") -> StepMetrics:
        """Queue one step. ``device_values[skip_key]`` (a 0/1 tensor) says whether its optimizer step was skipped;
        it is not a metric. Under DDP the host values are reduced too (at read-back), so they are pending."""
        reduce_host = self.world_size > 1
        dev_keys = list(device_values)
        packed = (torch.stack([v.detach().reshape(()).to(torch.float64) for v in device_values.values()])
                  if dev_keys else None)
        host_keys = [k for k in host_values if reduce_host and k != "lr"]
        ready = {k: v for k, v in host_values.items() if k not in host_keys}
        record = StepMetrics(step, [k for k in order if k != skip_key], ready, self.read_back)
        self._pending.append((record, dev_keys, packed, host_keys, [float(host_values[k]) for k in host_keys]))
        return record

    def read_back(self) -> list[StepMetrics]:
        """Every pending step's values on the host (one device-to-host transfer; one all-reduce under DDP);
        returns those steps, in order, after ``on_read`` has seen each."""
        pending, self._pending = self._pending, []
        if not pending:
            return []
        parts = [p for _, _, p, _, _ in pending if p is not None]
        host_flat = [v for *_, values in pending for v in values]
        flat = torch.cat(parts) if parts else torch.zeros(0, dtype=torch.float64, device=self.device)
        if self.world_size > 1:
            flat = torch.cat([flat.to(self.device), torch.tensor(host_flat, dtype=torch.float64, device=self.device)])
            keys = [k for _, dk, _, hk, _ in pending for k in dk] + [k for *_, hk, _ in pending for k in hk]
            scale = torch.tensor([1.0 if k in self.sum_keys else 1.0 / self.world_size for k in keys],
                                 dtype=torch.float64, device=self.device)
            dist.all_reduce(flat)
            flat = flat * scale
            host_flat = []  # the reduced host values are now part of `flat`
        values = iter(flat.tolist())
        device_parts = [[(k, next(values)) for k in dk] for _, dk, _, _, _ in pending]
        host_parts = ([[(k, next(values)) for k in hk] for *_, hk, _ in pending] if self.world_size > 1 else
                      [[] for _ in pending])
        records = []
        for (record, _, _, _, _), dev, host in zip(pending, device_parts, host_parts):
            got = dict(dev) | dict(host)
            skipped = bool(got.pop("skipped", 0.0))
            if "tokens" in got:
                got["tokens"] = int(round(got["tokens"]))
            record._fill(got, skipped)
            records.append(record)
        for record in records:
            if self.on_read is not None:
                self.on_read(record)
        return records


__all__ = ["PendingMetrics", "StepMetrics"]

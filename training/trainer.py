"""`Trainer`: the training loop shared by every stage.

A stage subclasses `Trainer` and implements ``compute_loss(model, batch) -> StepOutput``; optionally
``evaluate_batch`` (defaults to ``compute_loss`` under ``no_grad``), ``param_groups()``/``lr_scales()`` (named
parameter sets and their lr multipliers for `build_optimizer`) and ``collate`` (defaults to torch's
``default_collate``). The base class does the rest: AdamW + warmup/cosine schedule, seeding, bf16/fp16 autocast
(GradScaler for fp16), gradient accumulation and clipping, ``torch.compile``, DDP under torchrun, a deterministic
resumable data order, tqdm, TensorBoard, periodic evaluation and checkpoints, callbacks, and at the end
``save_pretrained(output_dir/"final")``, ``metrics.json`` and ``loss_curves.png``.

Data order. Epoch ``e`` visits ``torch.randperm(len(train_dataset))`` drawn from a generator seeded with
``seed + e``. One optimizer step consumes ``batch_size * world_size * grad_accum_steps`` consecutive entries of it
(the tail that does not fill a step is dropped); each micro-batch takes ``batch_size * world_size`` entries and
rank ``r`` takes the ``r``-th slice of ``batch_size`` of them. The position (entries consumed this epoch) and
the epoch are checkpointed, so a resumed run continues with exactly the next batch; with the same global batch
the order is the same for any world size, which is what makes a DDP run equal a single-process one.

Host syncs. A step reads nothing back from the device: its loss, grad norm and metrics are queued on the device
(`training.step_metrics`) and read back in one transfer (one all-reduce under DDP) at log steps, before an
evaluation or a checkpoint, and at the end; token counts come from the host (packed rows and the collates count
their targets). A step whose loss or grad norm is non-finite is skipped on the device (`training.nonfinite`), and
the guard counts such steps when they are read back. Under DDP the ranks agree on stopping (and the time budget
on its projection and expiry) at log, evaluation and checkpoint steps only, where they synchronise anyway.
"""

from __future__ import annotations

import contextlib
import math
import os
import random
import time
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, default_collate
from tqdm.auto import tqdm

from training.callbacks import Callback, CheckpointKeeper, EarlyStopping, HubPush
from training.checkpoint import (
    RNG_FILE,
    capture_rng_state,
    checkpoint_name,
    latest_checkpoint,
    load_checkpoint,
    load_pt,
    restore_rng_state,
    save_checkpoint,
)
from training.config import TrainConfig, to_dict
from training.distributed import DistInfo, init_distributed
from training.nonfinite import NonFiniteLossGuard, optimizer_step, skip_flag
from training.optim import build_optimizer, set_schedule_horizon, warmup_cosine_schedule
from training.plumbing import ScalarLog, plot_curves, resolve_device, write_metrics
from training.step_metrics import PendingMetrics, StepMetrics
from training.time_budget import TimeBudget


@dataclass
class StepOutput:
    """What ``compute_loss``/``evaluate_batch`` return: the (mean) loss to back-propagate, extra scalar metrics
    (averaged over micro-batches and ranks) and the number of target tokens in the batch."""

    loss: torch.Tensor
    metrics: dict[str, float] = field(default_factory=dict)
    num_tokens: int = 0


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (CPU and every CUDA device)."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def move_to_device(batch: Any, device: torch.device) -> Any:
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, dict):
        return {k: move_to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        moved = [move_to_device(v, device) for v in batch]
        return type(batch)(*moved) if hasattr(batch, "_fields") else type(batch)(moved)
    return batch


class Trainer:
    """Base training loop; see the module docstring. ``config`` (optional) is the full stage config stored in
    checkpoints; it defaults to ``cfg``."""

    #: passed to DistributedDataParallel (set True in stages that leave some trainable parameters unused)
    ddp_find_unused_parameters: bool = False
    #: whether ``TrainConfig.compile = None`` (auto) compiles on CUDA; off for steps that unroll a Python loop over
    #: a varying number of turns (a recompile per shape would cost more than it saves)
    auto_compile: bool = True

    def __init__(
        self,
        model: nn.Module,
        cfg: TrainConfig,
        train_dataset: Sequence[Any],
        eval_dataset: Sequence[Any] | None = None,
        callbacks: Sequence[Callback] = (),
        config: Any = None,
    ) -> None:
        cfg.validate()
        self.cfg = cfg
        # fp16: an inf gradient norm is a GradScaler overflow (skipped and handled there), not a divergence
        self._nonfinite = NonFiniteLossGuard(cfg.nonfinite_loss_patience, watch_grad_norm=cfg.precision != "fp16")
        self.config = config if config is not None else cfg
        self.train_dataset = train_dataset
        self.eval_dataset = eval_dataset

        device_type = resolve_device(cfg.device).type
        self.dist: DistInfo = init_distributed(device_type)
        self.device = torch.device("cuda", self.dist.local_rank) if device_type == "cuda" else torch.device("cpu")
        seed_everything(cfg.seed + self.dist.rank)

        self.output_dir = Path(cfg.output_dir)
        self.checkpoint_dir = self.output_dir / "checkpoints"

        self.unwrapped_model = model.to(self.device)
        self.optimizer = build_optimizer(self.unwrapped_model, cfg, self.param_groups(), self.lr_scales())
        self.scheduler = warmup_cosine_schedule(self.optimizer, cfg.warmup_steps, cfg.max_steps, cfg.min_lr_ratio)
        self.scaler = torch.amp.GradScaler(device_type, enabled=cfg.precision == "fp16")
        self.autocast_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(cfg.precision)

        wrapped: nn.Module = self.unwrapped_model
        if self.dist.enabled:
            wrapped = DistributedDataParallel(
                wrapped,
                device_ids=[self.dist.local_rank] if device_type == "cuda" else None,
                find_unused_parameters=self.ddp_find_unused_parameters,
            )
        self.eval_model: nn.Module = self.unwrapped_model
        # compile=None (auto): on CUDA only, and a failure to compile falls back to eager with a warning
        self._compile_auto = cfg.compile is None and device_type == "cuda" and self.auto_compile
        self._eager_model = wrapped
        self._compiled = bool(cfg.compile or self._compile_auto)
        if self._compiled:
            wrapped = self.compile_model(wrapped)
            if cfg.compile:
                self.eval_model = torch.compile(self.unwrapped_model)
        self.model = wrapped

        self.callbacks: list[Callback] = list(callbacks)
        if cfg.keep_last > 0 and not any(isinstance(c, CheckpointKeeper) for c in self.callbacks):
            self.callbacks.append(CheckpointKeeper(cfg.keep_last))
        if cfg.early_stopping_patience > 0 and not any(isinstance(c, EarlyStopping) for c in self.callbacks):
            self.callbacks.append(EarlyStopping(cfg.early_stopping_patience))
        if cfg.push_to_hub and not any(isinstance(c, HubPush) for c in self.callbacks):
            self.callbacks.append(HubPush(cfg.push_to_hub))

        self.step = 0
        self.epoch = 0
        self.position = 0  # entries of this epoch's permutation already consumed
        self.tokens_seen = 0
        self.skipped_steps = 0  # optimizer steps skipped for a non-finite loss or grad norm (as read back)
        self._metrics = PendingMetrics(self.device, self.dist.world_size)
        self._metrics.on_read = self._on_read
        self.history: dict[str, list[dict[str, float]]] = {"train": [], "eval": []}
        self.should_stop = False
        self.stop_reason: str | None = None
        self.scalar_log = ScalarLog(self.output_dir / "tensorboard" / cfg.run_name, enabled=self.is_main)
        self._last_eval_step = -1
        self._last_save_step = -1
        self.time_budget: dict[str, Any] | None = None  # what max_minutes did, for metrics.json

        samples = len(train_dataset)
        if self.steps_per_epoch < 1:
            raise ValueError(
                f"train_dataset has {samples} samples, fewer than one global batch of {self.step_samples} "
                f"(batch_size {cfg.batch_size} x world_size {self.dist.world_size} x grad_accum_steps "
                f"{cfg.grad_accum_steps})"
            )

    # ------------------------------------------------------------------------------------------ to override

    def compute_loss(self, model: nn.Module, batch: Any) -> StepOutput:
        raise NotImplementedError(f"{type(self).__name__} must implement compute_loss(model, batch)")

    def evaluate_batch(self, model: nn.Module, batch: Any) -> StepOutput:
        return self.compute_loss(model, batch)

    def param_groups(self) -> dict[str, list[nn.Parameter]] | None:
        """Named, disjoint parameter sets for the optimizer (None: one group with every parameter)."""
        return None

    def lr_scales(self) -> dict[str, float] | None:
        """lr multipliers per name in `param_groups`."""
        return None

    def collate(self, samples: list[Any]) -> Any:
        return default_collate(samples)

    def compile_model(self, model: nn.Module) -> nn.Module:
        """The compiled training model (``TrainConfig.compile``). Stages whose step loops in Python (SMAT)
        compile their sub-modules in place instead of tracing the loop."""
        return torch.compile(model)

    def uncompile_model(self) -> None:
        """Undo what `compile_model` did in place (the eager fallback of ``compile=None``)."""

    # ------------------------------------------------------------------------------------------ properties

    @property
    def is_main(self) -> bool:
        return self.dist.is_main

    @property
    def micro_samples(self) -> int:
        """Entries of the permutation consumed by one micro-batch over all ranks."""
        return self.cfg.batch_size * self.dist.world_size

    @property
    def step_samples(self) -> int:
        """Global batch: entries consumed by one optimizer step over all ranks."""
        return self.micro_samples * self.cfg.grad_accum_steps

    @property
    def steps_per_epoch(self) -> int:
        return len(self.train_dataset) // self.step_samples

    def request_stop(self, reason: str = "stopped by a callback") -> None:
        if not self.should_stop:
            self.should_stop = True
            self.stop_reason = reason

    # ------------------------------------------------------------------------------------------ data order

    def epoch_permutation(self, epoch: int) -> torch.Tensor:
        generator = torch.Generator().manual_seed(self.cfg.seed + epoch)
        return torch.randperm(len(self.train_dataset), generator=generator)

    def rank_batches(self, epoch: int, position: int) -> Iterator[list[int]]:
        """This rank's micro-batch index lists for ``epoch``, from ``position`` to the last full step."""
        perm = self.epoch_permutation(epoch)
        usable = self.steps_per_epoch * self.step_samples
        lo = self.dist.rank * self.cfg.batch_size
        for start in range(position, usable, self.micro_samples):
            yield perm[start + lo : start + lo + self.cfg.batch_size].tolist()

    def _loader(self) -> Iterator[Any]:
        loader = DataLoader(
            self.train_dataset,
            batch_sampler=list(self.rank_batches(self.epoch, self.position)),
            collate_fn=self.collate,
            num_workers=self.cfg.num_workers,
            pin_memory=self.device.type == "cuda",
        )
        return iter(loader)

    # ------------------------------------------------------------------------------------------ the loop

    def _autocast(self):
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.autocast_dtype)

    def _train_step(self, batches: Iterator[Any]) -> StepMetrics:
        """One optimizer step. Nothing is read back from the device: the step's loss, grad norm and metrics are
        queued (`training.step_metrics`) until the next read-back; a step whose loss or grad norm is non-finite
        is skipped on the device (`training.nonfinite`)."""
        self.model.train()
        accum = self.cfg.grad_accum_steps
        loss_sum = torch.zeros((), device=self.device, dtype=torch.float64)
        extra: dict[str, Any] = {}  # device tensors stay on the device until the read-back
        tokens: int | torch.Tensor = 0  # a host int where the batches know their target counts
        for micro in range(accum):
            batch = move_to_device(next(batches), self.device)
            sync = micro == accum - 1 or not isinstance(self.model, DistributedDataParallel)
            ctx = contextlib.nullcontext() if sync else self.model.no_sync()
            with ctx:
                out = self._forward_backward(batch, accum)
            loss_sum += out.loss.detach().double()
            tokens = tokens + self._host_or_device(out.num_tokens)
            for k, v in out.metrics.items():
                extra[k] = extra.get(k, 0.0) + self._host_or_device(v) / accum
            self.position += self.micro_samples
        self.scaler.unscale_(self.optimizer)
        params = [p for g in self.optimizer.param_groups for p in g["params"]]
        grad_norm = torch.nn.utils.clip_grad_norm_(
            params, self.cfg.max_grad_norm if self.cfg.max_grad_norm > 0 else math.inf
        )
        loss = loss_sum / accum
        skip = skip_flag(loss, grad_norm)
        if self.dist.enabled:  # every rank must skip the same steps, or the replicas drift apart (no host sync)
            dist.all_reduce(skip, op=dist.ReduceOp.MAX)
        lr = self.optimizer.param_groups[0]["lr"]
        optimizer_step(self.optimizer, skip, self.scaler)
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        self.step += 1

        device_values: dict[str, torch.Tensor] = {"loss": loss, "grad_norm": grad_norm, "skipped": skip}
        host_values: dict[str, Any] = {"lr": float(lr)}
        for k, v in [("tokens", tokens), *sorted(extra.items())]:
            (device_values if isinstance(v, torch.Tensor) else host_values)[k] = v
        order = ["loss", "lr", "grad_norm", "tokens", *sorted(extra)]
        return self._metrics.add(self.step, device_values, host_values, order)

    def _host_or_device(self, value: Any) -> float | int | torch.Tensor:
        """A metric as the step keeps it: a float64 tensor on the training device, or a host number (host
        tensors too: reading them costs no device sync)."""
        if isinstance(value, torch.Tensor):
            if value.device.type == "cpu" and self.device.type != "cpu":
                return value.item()
            return value.detach().double()
        return value

    def _read_back(self) -> list[StepMetrics]:
        """Every pending step's metrics on the host, in one transfer; the guard sees each step in order (and
        raises before anything logs, evaluates or saves after a run of non-finite steps)."""
        return self._metrics.read_back()

    def _on_read(self, record: StepMetrics) -> None:
        self.tokens_seen += int(record["tokens"])
        self.skipped_steps += int(record.skipped)
        self._nonfinite.check(record.step, record)

    def _forward_backward(self, batch: Any, accum: int) -> StepOutput:
        try:
            with self._autocast():
                out = self.compute_loss(self.model, batch)
            self.scaler.scale(out.loss / accum).backward()
        except Exception as exc:  # only an automatic compile is retried, eagerly
            if not (self._compile_auto and self._compiled):
                raise
            warnings.warn(f"torch.compile failed ({type(exc).__name__}: {str(exc)[:200]}); training eagerly",
                          stacklevel=2)
            self.model, self._compiled = self._eager_model, False
            self.uncompile_model()
            self.optimizer.zero_grad(set_to_none=True)
            return self._forward_backward(batch, accum)
        return out

    def train(self, num_steps: int | None = None) -> dict[str, list[dict[str, float]]]:
        """Train until ``max_steps`` (or ``num_steps`` more steps, or a callback stops it); returns the history."""
        end_step = self.cfg.max_steps if num_steps is None else min(self.cfg.max_steps, self.step + num_steps)
        self.should_stop, self.stop_reason = False, None
        bar = tqdm(total=self.cfg.max_steps, initial=self.step, disable=not self.is_main, desc=self.cfg.run_name,
                   dynamic_ncols=True)
        window: list[StepMetrics] = []
        t_last = time.perf_counter()
        budget = TimeBudget(self.cfg.max_minutes, self.step) if self.cfg.max_minutes > 0 else None
        try:
            while self.step < end_step and not self.should_stop:
                batches = self._loader()
                epoch_done = False
                while self.step < end_step and not self.should_stop:
                    metrics = self._train_step(batches)  # no read-back: `metrics` fills at the next one
                    window.append(metrics)
                    bar.update(1)
                    if budget is not None:
                        end_step = self._apply_time_budget(budget, end_step, bar, num_steps is not None)
                    log_step = self.step % self.cfg.log_every == 0 or self.step == end_step
                    if log_step:
                        self._read_back()  # the guard sees every step before any log, callback or save
                        now = time.perf_counter()
                        tok_s = sum(m["tokens"] for m in window) / max(now - t_last, 1e-9)
                        self._log_train(window, tok_s)
                        bar.set_postfix(loss=f"{metrics['loss']:.4f}", tok_s=f"{tok_s:,.0f}")
                        window, t_last = [], now
                    for cb in self.callbacks:
                        cb.on_step(self, self.step, metrics)  # reading a device value reads back early
                    if self.position + self.step_samples > self.steps_per_epoch * self.step_samples:
                        self.epoch += 1
                        self.position = 0
                        epoch_done = True
                        for cb in self.callbacks:
                            cb.on_epoch(self, self.epoch - 1)
                    eval_due = self.eval_dataset is not None and bool(self.cfg.eval_every) and \
                        self.step % self.cfg.eval_every == 0
                    save_due = bool(self.cfg.save_every) and self.step % self.cfg.save_every == 0
                    if eval_due:
                        self.evaluate()
                    if log_step or eval_due or save_due:  # DDP: ranks agree on stopping where they sync anyway
                        self._sync_stop()
                    if save_due:
                        self.save_checkpoint()
                    if epoch_done:
                        break
            self._read_back()  # the steps since the last read-back (stopped early)
            if window:  # steps since the last log
                self._log_train(window, sum(m["tokens"] for m in window) / max(time.perf_counter() - t_last, 1e-9))
            if self.eval_dataset is not None and self._last_eval_step != self.step:
                self.evaluate()
            if self._last_save_step != self.step:
                self.save_checkpoint()
            self._finish()
        finally:
            bar.close()
        return self.history

    def _apply_time_budget(self, budget: TimeBudget, end_step: int, bar: tqdm, partial: bool) -> int:
        """Move the run's end to what fits in ``max_minutes`` (see `training.time_budget`); returns the new end.

        Under DDP the projection and the expiry are decided only at log steps (every rank agrees there, in the
        collective it makes anyway), so no step between log steps waits for the other ranks."""
        due = budget.observe(self.step)
        log_step = self.step % self.cfg.log_every == 0
        if self.dist.enabled:
            due = False  # the first projection waits for the next log step, where all ranks make it
        if due or (budget.projected and log_step):
            if self.time_budget is None:
                self.time_budget = {"max_minutes": self.cfg.max_minutes, "planned_max_steps": self.cfg.max_steps}
            horizon = budget.horizon(self.step, self.time_budget["planned_max_steps"])
            if self.dist.enabled:  # every rank must stop at the same step
                agreed = torch.tensor([horizon], device=self.device, dtype=torch.int64)
                dist.all_reduce(agreed, op=dist.ReduceOp.MIN)
                horizon = int(agreed.item())
            if horizon < self.cfg.max_steps or (horizon > self.cfg.max_steps and budget.may_lengthen()):
                set_schedule_horizon(self.scheduler, horizon)
                self.cfg.warmup_steps = self.scheduler.lr_lambdas[0].warmup_steps  # cfg describes the run it drives
                self.cfg.max_steps = horizon
                self.time_budget.update(max_steps=horizon, seconds_per_step=budget.seconds_per_step(self.step))
                bar.total = horizon
                bar.refresh()
                end_step = min(end_step, horizon) if partial else horizon  # partial: train(num_steps)
        if (log_step or not self.dist.enabled) and budget.expired():  # DDP: agreed by `_sync_stop` at log steps
            self.request_stop(f"time budget of {self.cfg.max_minutes} min reached")
        return end_step

    def _sync_stop(self) -> None:
        """DDP: stop on every rank if any rank stopped. Called where the ranks sync anyway (log, evaluation and
        checkpoint steps); a stop requested on every rank at the same step (callbacks see identical inputs) needs
        no agreement."""
        if not self.dist.enabled:
            return
        flag = torch.tensor([1.0 if self.should_stop else 0.0], device=self.device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        if flag.item() > 0:
            self.request_stop("stopped on another rank")

    # ------------------------------------------------------------------------------------------ evaluation

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        """Loss and metrics over ``eval_dataset`` (sharded over ranks, token-weighted), as ``val_<name>``."""
        if self.eval_dataset is None:
            raise ValueError("evaluate() needs an eval_dataset")
        self._read_back()  # pending steps first: the guard runs before any evaluation
        self.eval_model.eval()
        n = len(self.eval_dataset)
        indices = list(range(self.dist.rank, n, self.dist.world_size))
        bs = self.cfg.batch_size
        sums: dict[str, float] = {}
        weight_total = 0.0
        for start in range(0, len(indices), bs):
            batch = self.collate([self.eval_dataset[i] for i in indices[start : start + bs]])
            batch = move_to_device(batch, self.device)
            with self._autocast():
                out = self.evaluate_batch(self.eval_model, batch)
            w = float(out.num_tokens) if out.num_tokens > 0 else 1.0
            weight_total += w
            sums["loss"] = sums.get("loss", 0.0) + float(out.loss) * w
            for k, v in out.metrics.items():
                sums[k] = sums.get(k, 0.0) + float(v) * w
        keys = sorted(sums)
        packed = torch.tensor([weight_total, *(sums[k] for k in keys)], dtype=torch.float64)
        if self.dist.enabled:
            packed = packed.to(self.device)
            dist.all_reduce(packed)
            packed = packed.cpu()
        total = max(float(packed[0]), 1e-12)
        metrics = {f"val_{k}": float(v) / total for k, v in zip(keys, packed[1:].tolist())}
        self._last_eval_step = self.step
        self.history["eval"].append({"step": self.step, **metrics})
        self.scalar_log.scalars("eval", metrics, self.step)
        for cb in self.callbacks:
            cb.on_eval(self, metrics)
        return metrics

    # ------------------------------------------------------------------------------------------ logging

    def _log_train(self, window: Sequence[Mapping[str, Any]], tok_s: float) -> None:
        avg = {k: sum(m[k] for m in window) / len(window) for k in window[-1] if k not in ("tokens", "lr")}
        entry = {"step": self.step, **avg, "lr": window[-1]["lr"], "tokens_per_s": tok_s,
                 "tokens_seen": self.tokens_seen, "epoch": self.epoch}
        self.history["train"].append(entry)
        self.scalar_log.scalars("train", {k: v for k, v in entry.items() if k != "step"}, self.step)

    # ------------------------------------------------------------------------------------------ checkpoints

    def _gather_rng(self) -> dict[str, Any]:
        state = capture_rng_state()
        if not self.dist.enabled:
            return {"ranks": [state]}
        gathered: list[Any] = [None] * self.dist.world_size
        dist.all_gather_object(gathered, state)
        return {"ranks": gathered}

    def trainer_state(self) -> dict[str, Any]:
        return {
            "step": self.step,
            "epoch": self.epoch,
            "position": self.position,
            "tokens_seen": self.tokens_seen,
            "skipped_steps": self.skipped_steps,
            "world_size": self.dist.world_size,
            "step_samples": self.step_samples,
            "history": self.history,
            "callbacks": {f"{i}:{type(cb).__name__}": cb.state_dict() for i, cb in enumerate(self.callbacks)},
        }

    def save_checkpoint(self) -> Path:
        """Write ``output_dir/checkpoints/step-XXXXXXXX`` (rank 0) and call ``on_save``; all ranks must call it."""
        self._read_back()  # the guard sees every step before a checkpoint; tokens_seen and history are current
        path = self.checkpoint_dir / checkpoint_name(self.step)
        rng = self._gather_rng()
        if self.is_main:
            save_checkpoint(
                path,
                model=self.unwrapped_model,
                optimizer=self.optimizer,
                scheduler=self.scheduler,
                scaler=self.scaler,
                trainer_state=self.trainer_state(),
                config=to_dict(self.config),
                rng_state=rng,
            )
            self._write_metrics()
            for cb in self.callbacks:
                cb.on_save(self, path)
        self._last_save_step = self.step
        if self.dist.enabled:
            dist.barrier()
        return path

    def resume_from(self, path: str | os.PathLike) -> None:
        """Restore model, optimizer, scheduler, scaler, RNG, data position, history and callback states.

        ``path`` is a checkpoint directory or a directory holding ``step-*`` checkpoints (the latest is used).
        """
        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"checkpoint {str(path)!r} does not exist")
        latest = latest_checkpoint(path)
        if latest is not None:
            path = latest
        fused = [g.get("fused") for g in self.optimizer.param_groups]
        state = load_checkpoint(path, model=self.unwrapped_model, optimizer=self.optimizer,
                                scheduler=self.scheduler, scaler=self.scaler, map_location=self.device,
                                restore_rng=False)
        for group, flag in zip(self.optimizer.param_groups, fused):  # the kernel choice is ours, not the file's
            group["fused"] = flag
            for p in group["params"] if flag else ():  # a fused step counts on the parameter's device
                st = self.optimizer.state.get(p, {})
                if isinstance(st.get("step"), torch.Tensor):
                    st["step"] = st["step"].to(p.device, torch.float32)
        rng = load_pt(path / RNG_FILE)
        ranks = rng.get("ranks", [rng])
        if len(ranks) == self.dist.world_size:
            restore_rng_state(ranks[self.dist.rank])
        else:
            warnings.warn(f"checkpoint saved with world size {len(ranks)}, resuming with "
                          f"{self.dist.world_size}: RNG streams are re-seeded", stacklevel=2)
            seed_everything(self.cfg.seed + self.dist.rank + 1_000_003 * int(state["step"]))
        if state.get("step_samples", self.step_samples) != self.step_samples:
            warnings.warn(f"global batch changed from {state['step_samples']} to {self.step_samples} samples; "
                          "the data order continues from the same sample position", stacklevel=2)
        self.step = int(state["step"])
        self.epoch = int(state["epoch"])
        self.position = int(state["position"])
        if self.position + self.step_samples > self.steps_per_epoch * self.step_samples:
            self.epoch, self.position = self.epoch + 1, 0
        self.tokens_seen = int(state.get("tokens_seen", 0))
        self.skipped_steps = int(state.get("skipped_steps", 0))
        self.history = state.get("history", {"train": [], "eval": []})
        saved = state.get("callbacks", {})
        for i, cb in enumerate(self.callbacks):
            key = f"{i}:{type(cb).__name__}"
            if key in saved:
                cb.load_state_dict(saved[key])
        self._last_save_step = self.step

    # ------------------------------------------------------------------------------------------ the end

    def _write_metrics(self) -> None:
        self.output_dir.mkdir(parents=True, exist_ok=True)
        data = {**self.history, "step": self.step, "tokens_seen": self.tokens_seen, "stop_reason": self.stop_reason,
                "time_budget": self.time_budget, "skipped_steps": self.skipped_steps}
        write_metrics(self.output_dir / "metrics.json", data)

    def plot_loss_curves(self, path: str | os.PathLike | None = None) -> Path | None:
        """Train/val loss against step as a PNG (needs matplotlib; returns None without it)."""
        train = self.history["train"]
        evals = [e for e in self.history["eval"] if "val_loss" in e]
        return plot_curves(
            Path(path) if path is not None else self.output_dir / "loss_curves.png",
            [("train loss", [e["step"] for e in train], [e["loss"] for e in train], "-"),
             ("val loss", [e["step"] for e in evals], [e["val_loss"] for e in evals], "o-")],
            xlabel="step", ylabel="loss", title=self.cfg.run_name)

    def _finish(self) -> None:
        if self.is_main:
            if hasattr(self.unwrapped_model, "save_pretrained"):
                self.unwrapped_model.save_pretrained(self.output_dir / "final")
            self._write_metrics()
            self.plot_loss_curves()
            self.scalar_log.flush()
        for cb in self.callbacks:
            cb.on_end(self)
        if self.dist.enabled:
            dist.barrier()

    def close(self) -> None:
        """Close the TensorBoard writer (the process group is left to the launcher)."""
        self.scalar_log.close()

"""AdamW with decoupled weight decay on matrices only, and the warmup + cosine learning-rate schedule.

No weight decay on embeddings, norms (RMSNorm/LayerNorm/GroupNorm/BatchNorm) and biases or any other parameter
with fewer than two dimensions. The decision is made per parameter from the module(s) that own it, so a weight
tied between an ``nn.Embedding`` and an LM head ``nn.Linear`` is treated as an embedding (no decay) and appears
exactly once.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch import nn
from torch.optim.lr_scheduler import LambdaLR

from training.config import TrainConfig

NO_DECAY_MODULES: tuple[type[nn.Module], ...] = (
    nn.Embedding,
    nn.EmbeddingBag,
    nn.RMSNorm,
    nn.LayerNorm,
    nn.GroupNorm,
    nn.modules.batchnorm._BatchNorm,
)


#: devices whose AdamW `build_optimizer` makes fused (torch has fused kernels for both)
FUSED_DEVICES = ("cuda", "cpu")


def no_decay_parameter_ids(model: nn.Module) -> set[int]:
    """ids of the parameters that must not be weight-decayed (embeddings, norms, biases, 1-D params)."""
    ids: set[int] = set()
    for module in model.modules():
        for name, param in module.named_parameters(recurse=False):
            if isinstance(module, NO_DECAY_MODULES) or param.ndim < 2 or name.endswith("bias"):
                ids.add(id(param))
    return ids


def _unique(params: Iterable[nn.Parameter]) -> list[nn.Parameter]:
    seen: set[int] = set()
    out = []
    for p in params:
        if id(p) not in seen:
            seen.add(id(p))
            out.append(p)
    return out


def build_optimizer(
    model: nn.Module,
    cfg: TrainConfig,
    param_groups: dict[str, list[nn.Parameter]] | None = None,
    lr_scales: dict[str, float] | None = None,
) -> torch.optim.AdamW:
    """AdamW over the trainable parameters of ``model``.

    ``param_groups`` names disjoint parameter sets (default: one group ``"default"`` with every parameter); each
    is split into a ``<name>/decay`` and a ``<name>/no_decay`` optimizer group. ``lr_scales[name]`` multiplies
    ``cfg.lr`` for that named group (the schedule keeps the ratio). Parameters with ``requires_grad=False`` are
    left out. The optimizer is fused where torch has the kernel (CUDA and CPU parameters). Raises ``ValueError``
    when a parameter is listed in two groups, or a trainable parameter of the model is in none.
    """
    if param_groups is None:
        param_groups = {"default": list(model.parameters())}
    lr_scales = dict(lr_scales or {})
    unknown = sorted(set(lr_scales) - set(param_groups))
    if unknown:
        raise ValueError(f"lr_scales names unknown parameter group(s) {unknown}; groups: {sorted(param_groups)}")
    no_decay = no_decay_parameter_ids(model)
    owner: dict[int, str] = {}
    groups: list[dict] = []
    for group_name, params in param_groups.items():
        decay, keep = [], []
        for p in _unique(params):
            if id(p) in owner:
                raise ValueError(f"a parameter of shape {tuple(p.shape)} is in both group {owner[id(p)]!r} "
                                 f"and group {group_name!r}; each parameter must be in exactly one group")
            owner[id(p)] = group_name
            if not p.requires_grad:
                continue
            (keep if id(p) in no_decay else decay).append(p)
        scale = float(lr_scales.get(group_name, 1.0))
        if scale <= 0:
            raise ValueError(f"lr_scales[{group_name!r}]={scale} must be > 0")
        for suffix, plist, wd in (("decay", decay, cfg.weight_decay), ("no_decay", keep, 0.0)):
            if plist:
                groups.append({"params": plist, "weight_decay": wd, "lr": cfg.lr * scale,
                               "name": f"{group_name}/{suffix}"})
    missing = [n for n, p in model.named_parameters() if p.requires_grad and id(p) not in owner]
    if missing:
        raise ValueError(f"trainable parameter(s) {missing[:5]}{' ...' if len(missing) > 5 else ''} are in no "
                         f"parameter group (groups: {sorted(param_groups)})")
    if not groups:
        raise ValueError("the model has no trainable parameters (all have requires_grad=False)")
    # fused: one kernel per step, and it takes a device-side `found_inf` flag, which is how the Trainer skips a
    # non-finite step without reading anything back (training.nonfinite)
    fused = all(p.device.type in FUSED_DEVICES for g in groups for p in g["params"])
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps, fused=fused)


def warmup_cosine_factor(step: int, warmup_steps: int, total_steps: int, min_lr_ratio: float) -> float:
    """lr multiplier before optimizer step ``step`` (0-based).

    Linear warmup ``(step + 1) / warmup_steps`` reaching 1.0 at ``step = warmup_steps - 1``; then a half cosine
    from 1.0 at ``step = warmup_steps`` down to ``min_lr_ratio`` at ``step = total_steps``; constant after that.
    """
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    span = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / span)
    return min_lr_ratio + (1.0 - min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


class WarmupCosine:
    """The `warmup_cosine_factor` of a schedule whose horizon may move while training (a time budget, see
    `Trainer`). An object rather than a closure so that `LambdaLR.state_dict` saves the horizon with a
    checkpoint. The planned warmup and horizon are kept: every move scales the warmup from them, so repeated
    moves do not accumulate rounding."""

    def __init__(self, warmup_steps: int, total_steps: int, min_lr_ratio: float) -> None:
        self.planned_warmup_steps = self.warmup_steps = warmup_steps
        self.planned_total_steps = self.total_steps = total_steps
        self.min_lr_ratio = min_lr_ratio

    def set_horizon(self, total_steps: int) -> None:
        """End the cosine at ``total_steps``; the warmup keeps its planned share of the run."""
        scaled = math.ceil(self.planned_warmup_steps * total_steps / self.planned_total_steps)
        self.warmup_steps = min(scaled, total_steps)
        self.total_steps = total_steps

    def __call__(self, step: int) -> float:
        return warmup_cosine_factor(step, self.warmup_steps, self.total_steps, self.min_lr_ratio)


def warmup_cosine_schedule(
    optimizer: torch.optim.Optimizer, warmup_steps: int, total_steps: int, min_lr_ratio: float = 0.1
) -> LambdaLR:
    """`LambdaLR` applying `warmup_cosine_factor` (a `WarmupCosine`) to every group's initial lr."""
    if warmup_steps < 0 or total_steps < 1 or warmup_steps > total_steps:
        raise ValueError(f"need 0 <= warmup_steps ({warmup_steps}) <= total_steps ({total_steps}) and "
                         "total_steps >= 1")
    if not 0.0 <= min_lr_ratio <= 1.0:
        raise ValueError(f"min_lr_ratio={min_lr_ratio} must be in [0, 1]")
    return LambdaLR(optimizer, WarmupCosine(warmup_steps, total_steps, min_lr_ratio))


def set_schedule_horizon(scheduler: LambdaLR, total_steps: int) -> None:
    """Move the cosine's end of every group to ``total_steps`` (a time budget's projection, earlier or later);
    see `WarmupCosine.set_horizon`."""
    for schedule in scheduler.lr_lambdas:
        if not isinstance(schedule, WarmupCosine):
            raise TypeError(f"cannot move the end of a {type(schedule).__name__} schedule")
        schedule.set_horizon(total_steps)

"""Auxiliary losses that modules leave behind during forward (MoE load balancing, later router losses).

Convention: a module that produces an auxiliary loss sets ``self.aux_loss`` to a 0-dim tensor (already scaled
by its own weight) in every forward, and initialises it to None. The trainer adds
``collect_aux_loss(model)`` to the task loss after the forward and calls ``clear_aux_loss(model)`` after the
backward, so the graph held by those tensors is released and a stale loss is never counted twice.
"""

from __future__ import annotations

import torch
from torch import nn

ATTRIBUTE = "aux_loss"


def collect_aux_loss(module: nn.Module) -> torch.Tensor:
    """Sum every submodule's (and ``module``'s own) non-None ``aux_loss``.

    Returns a 0-dim tensor; ``0.0`` on the module's device when no submodule holds a loss.
    Raises TypeError for an ``aux_loss`` that is neither None nor a tensor, and ValueError for a non-scalar one,
    rather than silently dropping or broadcasting it.
    """
    total: torch.Tensor | None = None
    for name, sub in module.named_modules():
        loss = getattr(sub, ATTRIBUTE, None)
        if loss is None:
            continue
        where = name or type(module).__name__
        if not isinstance(loss, torch.Tensor):
            raise TypeError(f"{where}.{ATTRIBUTE} must be a tensor or None, got {type(loss).__name__}")
        if loss.dim() != 0:
            raise ValueError(f"{where}.{ATTRIBUTE} must be a 0-dim tensor, got shape {tuple(loss.shape)}")
        total = loss if total is None else total + loss
    if total is None:
        param = next(module.parameters(), None)
        device = param.device if param is not None else None
        return torch.zeros((), device=device)
    return total


def clear_aux_loss(module: nn.Module) -> None:
    """Reset ``aux_loss`` to None on ``module`` and every submodule that has the attribute."""
    for sub in module.modules():
        if hasattr(sub, ATTRIBUTE):
            setattr(sub, ATTRIBUTE, None)

"""Freeze and unfreeze parts of a model by parameter group (trainers unfreeze memory parts first, then all)."""

from __future__ import annotations

from collections.abc import Iterable

from torch import nn


def set_trainable(parameters: Iterable[nn.Parameter], trainable: bool) -> int:
    """Set ``requires_grad`` on ``parameters``; returns how many tensors were touched."""
    count = 0
    for p in parameters:
        p.requires_grad_(trainable)
        count += 1
    return count


def freeze(module_or_params: nn.Module | Iterable[nn.Parameter]) -> int:
    params = module_or_params.parameters() if isinstance(module_or_params, nn.Module) else module_or_params
    return set_trainable(params, False)


def unfreeze(module_or_params: nn.Module | Iterable[nn.Parameter]) -> int:
    params = module_or_params.parameters() if isinstance(module_or_params, nn.Module) else module_or_params
    return set_trainable(params, True)


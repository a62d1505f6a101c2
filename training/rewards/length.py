"""Length term: does the answer have about the length of the reference?

With ``g`` the generated length and ``t = target_ratio * r`` the target length (``r`` the reference length)::

    LengthReward = (min(g, t) / max(g, t)) ** power        (1 when g == t, including g == t == 0)

It lies in [0, 1]: 1 at the target length, 0.5 (``power=1``) at half or double it, and 0 for an empty answer to a
non-empty reference. It is symmetric in the ratio (an answer k times too long scores as one k times too short).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .base import RewardInput

__all__ = ["LengthReward", "length_ratio_score"]


def length_ratio_score(
    generated_lengths: torch.Tensor, target_lengths: torch.Tensor, power: float = 1.0
) -> torch.Tensor:
    """``(min(g, t) / max(g, t)) ** power`` elementwise, 1 where both are 0; float32 ``(B,)``."""
    g = generated_lengths.float()
    t = target_lengths.to(g.device).float()
    hi = torch.maximum(g, t)
    ratio = torch.where(hi > 0, torch.minimum(g, t) / hi.clamp(min=1e-12), torch.ones_like(hi))
    return ratio.pow(power)


@dataclass
class LengthReward:
    """Reward in [0, 1] for answers close to ``target_ratio`` times the reference length (see module docstring)."""

    target_ratio: float = 1.0
    power: float = 1.0

    def __post_init__(self) -> None:
        if self.target_ratio <= 0:
            raise ValueError("target_ratio must be > 0")
        if self.power <= 0:
            raise ValueError("power must be > 0")

    @torch.no_grad()
    def __call__(self, inputs: RewardInput) -> torch.Tensor:
        _, ref_lengths = inputs.target("reference")
        target = ref_lengths.to(inputs.device).float() * self.target_ratio
        return length_ratio_score(inputs.generated_lengths.to(inputs.device), target, self.power)

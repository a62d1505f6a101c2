"""Residual gates: how a memory update U is blended into the old Short-Term Memory.

Shapes: STM and U (B, S, D) (any leading dims work; the last two are slots S and width D). G: the gate.

- sigmoid:  STM' = (1 - G) * STM + G * U           G in (0, 1): a convex combination, the norm stays bounded
- tanh:     STM' = (1 - G) * STM + (1 + G) * U     G in (-1, 1): not convex; G = 0 is the plain residual

How G is computed (``GateConfig.kind``):

- static:       G = act(w)                          w (S, 1) per slot or (1, 1) per layer; G (B, S, 1)
- elementwise:  G = act(w * mean_D(STM + U) + b)    w, b (S, 1) per slot or (1, 1) per layer; G (B, S, 1)
- linear:       G = act(Linear_{D->D}(STM + U))     one D x D map shared by the slots; G (B, S, D)

Why a plain residual STM' = STM + U is never the default: U is an attention output of roughly the same scale
as STM, so adding it without a gate roughly doubles the memory's magnitude at every turn (two vectors of norm
n pointing the same way give 2n; independent ones still give sqrt(2) n), and after k turns the STM is 2^k (or
2^(k/2)) times larger than what the decoder's memory cross-attention was trained on. The sigmoid gate is a
convex combination: every entry of STM' lies between the matching entries of STM and U, so the memory stays
within the range of its inputs. The plain residual is still reachable for experiments as the tanh gate at
G = 0 (a static tanh gate initialised at 0).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

GATE_KINDS = ("static", "elementwise", "linear")
GATE_ACTIVATIONS = ("sigmoid", "tanh")
GATE_GRANULARITIES = ("slot", "layer")

#: Default pre-activation bias per activation, used when ``GateConfig.init_bias`` is None.
#: sigmoid(-2) ~= 0.12: early in training each update replaces ~12 % of the memory and keeps ~88 %, so a
#: still-random memory-attention network cannot wipe out what the STM holds, while the gate's gradient
#: (sigmoid' ~= 0.10) is still large enough to learn. tanh(0) = 0 gives STM' = STM + U; for independent STM
#: and U, ||STM'||^2 ~ ((1 - G)^2 + (1 + G)^2) ||x||^2 = (2 + 2 G^2) ||x||^2 grows least at G = 0, the tanh
#: start (a negative bias would weight the old memory by up to 2 and grow it fastest).
DEFAULT_INIT_BIAS = {"sigmoid": -2.0, "tanh": 0.0}


@dataclass
class GateConfig:
    """Configuration of a residual gate.

    Attributes:
        kind: "static" (learned constant), "elementwise" (one value per slot from the slot's mean activation)
            or "linear" (one value per slot and channel from a D x D linear map).
        activation: "sigmoid" (convex blend, default) or "tanh" (the (1 - G) / (1 + G) form).
        per: "slot" (a weight per memory slot) or "layer" (one weight shared by the layer's slots). Applies to
            the static and elementwise kinds; the linear kind always shares its D x D map across slots.
        init_bias: initial pre-activation value (the static weight, the elementwise/linear bias). None picks
            the activation's default from :data:`DEFAULT_INIT_BIAS` (-2.0 for sigmoid, 0.0 for tanh) and is
            replaced by that number when the config is built.
    """

    kind: str = "elementwise"
    activation: str = "sigmoid"
    per: str = "slot"
    init_bias: float | None = None

    def __post_init__(self) -> None:
        if self.kind not in GATE_KINDS:
            raise ValueError(f"GateConfig.kind={self.kind!r} must be one of {GATE_KINDS}")
        if self.activation not in GATE_ACTIVATIONS:
            raise ValueError(f"GateConfig.activation={self.activation!r} must be one of {GATE_ACTIVATIONS}")
        if self.per not in GATE_GRANULARITIES:
            raise ValueError(f"GateConfig.per={self.per!r} must be one of {GATE_GRANULARITIES}")
        if self.init_bias is None:
            self.init_bias = DEFAULT_INIT_BIAS[self.activation]
        if not math.isfinite(float(self.init_bias)):
            raise ValueError(f"GateConfig.init_bias={self.init_bias} must be a finite number")
        self.init_bias = float(self.init_bias)


class ResidualGate(nn.Module):
    """Gated residual update of one memory layer (see the module docstring for the formulas).

    Parameters (for ``per="slot"``; ``per="layer"`` uses shape (1, 1) instead of (S, 1)):

    - static: ``weight`` (S, 1), initialised to ``init_bias``.
    - elementwise: ``weight`` (S, 1) initialised to 0 (so G starts at act(init_bias) for every input, while
      the gradient to ``weight``, proportional to mean_D(STM + U), is non-zero) and ``bias`` (S, 1) =
      ``init_bias``.
    - linear: ``linear`` = nn.Linear(D, D) with PyTorch's default weight init and bias = ``init_bias``.
    """

    def __init__(self, cfg: GateConfig, num_slots: int, dim: int) -> None:
        super().__init__()
        if num_slots < 1:
            raise ValueError(f"ResidualGate num_slots={num_slots} must be >= 1")
        if dim < 1:
            raise ValueError(f"ResidualGate dim={dim} must be >= 1")
        self.cfg = cfg
        self.num_slots = num_slots
        self.dim = dim
        rows = num_slots if cfg.per == "slot" else 1
        if cfg.kind == "static":
            self.weight = nn.Parameter(torch.full((rows, 1), cfg.init_bias))
        elif cfg.kind == "elementwise":
            self.weight = nn.Parameter(torch.zeros(rows, 1))
            self.bias = nn.Parameter(torch.full((rows, 1), cfg.init_bias))
        else:
            self.linear = nn.Linear(dim, dim, bias=True)
            with torch.no_grad():
                self.linear.bias.fill_(cfg.init_bias)

    def _activate(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(x) if self.cfg.activation == "sigmoid" else torch.tanh(x)

    def _check(self, stm: torch.Tensor, update: torch.Tensor) -> None:
        if stm.shape != update.shape:
            raise ValueError(
                f"ResidualGate: stm {tuple(stm.shape)} and update {tuple(update.shape)} must have one shape"
            )
        if stm.dim() < 2 or tuple(stm.shape[-2:]) != (self.num_slots, self.dim):
            raise ValueError(
                f"ResidualGate: expected (..., S, D) = (..., {self.num_slots}, {self.dim}); "
                f"got {tuple(stm.shape)}"
            )

    def gate_value(self, stm: torch.Tensor, update: torch.Tensor) -> torch.Tensor:
        """G for ``stm`` and ``update`` (..., S, D).

        Shape (..., S, 1) for static and elementwise gates, (..., S, D) for the linear gate.
        """
        self._check(stm, update)
        kind = self.cfg.kind
        if kind == "static":
            g = self._activate(self.weight).to(stm.dtype)
            return g.expand(*stm.shape[:-1], 1)
        if kind == "elementwise":
            status = (stm + update).mean(dim=-1, keepdim=True)  # (..., S, 1)
            return self._activate(self.weight * status + self.bias)
        return self._activate(self.linear(stm + update))

    def forward(self, stm: torch.Tensor, update: torch.Tensor) -> torch.Tensor:
        """Blend ``update`` into ``stm`` (both (..., S, D)); returns the new memory, same shape."""
        g = self.gate_value(stm, update)
        if self.cfg.activation == "sigmoid":
            return (1 - g) * stm + g * update
        return (1 - g) * stm + (1 + g) * update

"""Position-wise feed-forward networks: dense, gated (SwiGLU / GeGLU / ReGLU) and the factory that picks one.

Shapes: any leading dims, last dim D = ``cfg.dim``; hidden width Hd = ``cfg.hidden_dim``.

- Dense:  y = down(dropout(act(up(x))))
- Gated:  y = down(dropout(act(gate(x)) * up(x)))   (act = silu -> SwiGLU, gelu -> GeGLU, relu -> ReGLU)

A mixture of experts (``cfg.num_experts > 0``) lives in :mod:`rxt.moe`; its experts are the same kind of FFN as
the dense path, so a dense checkpoint can be upcycled into experts weight for weight.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

#: Activation name -> function. The names are the only strings ``FFNConfig.activation`` accepts.
ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "gelu": F.gelu,
    "silu": F.silu,
    "relu": F.relu,
}


def get_activation(name: str) -> Callable[[torch.Tensor], torch.Tensor]:
    """Return the activation function called ``name`` (one of :data:`ACTIVATIONS`)."""
    try:
        return ACTIVATIONS[name]
    except KeyError:
        raise ValueError(f"activation={name!r} must be one of {sorted(ACTIVATIONS)}") from None


@dataclass
class FFNConfig:
    """Configuration of a feed-forward block.

    Attributes:
        dim: model width D (input and output of the block).
        hidden_dim: inner width Hd (per expert, for a mixture of experts).
        activation: "gelu", "silu" or "relu".
        gated: gated linear unit (three matrices) instead of the classic two-matrix MLP.
        dropout: dropout probability on the hidden activations, in [0, 1).
        bias: whether the linear maps have biases.
        num_experts: 0 for a dense block; E > 0 for a mixture of E experts.
        top_k: experts per token (1 <= top_k <= num_experts); ignored when dense.
        balance_loss_weight: scale of the Switch-style load-balancing loss stored on ``MoEFeedForward.aux_loss``.
        renormalize_topk: rescale the chosen experts' router probabilities to sum to 1. With top_k=1 this makes
            every gate weight exactly 1, so the router is trained by the balancing loss alone (the task loss
            gives it no gradient); set False for Switch-style top-1 routing, which scales by the raw probability.
    """

    dim: int
    hidden_dim: int
    activation: str = "silu"
    gated: bool = True
    dropout: float = 0.0
    bias: bool = False
    num_experts: int = 0
    top_k: int = 1
    balance_loss_weight: float = 0.01
    renormalize_topk: bool = True

    def __post_init__(self) -> None:
        if self.dim < 1:
            raise ValueError(f"FFNConfig.dim={self.dim} must be >= 1")
        if self.hidden_dim < 1:
            raise ValueError(f"FFNConfig.hidden_dim={self.hidden_dim} must be >= 1")
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"FFNConfig.activation={self.activation!r} must be one of {sorted(ACTIVATIONS)}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"FFNConfig.dropout={self.dropout} must be in [0, 1)")
        if self.num_experts < 0:
            raise ValueError(f"FFNConfig.num_experts={self.num_experts} must be >= 0 (0 = dense)")
        if self.top_k < 1:
            raise ValueError(f"FFNConfig.top_k={self.top_k} must be >= 1")
        if self.num_experts > 0 and self.top_k > self.num_experts:
            raise ValueError(f"FFNConfig.top_k={self.top_k} must be <= num_experts={self.num_experts}")
        if self.balance_loss_weight < 0.0:
            raise ValueError(f"FFNConfig.balance_loss_weight={self.balance_loss_weight} must be >= 0")

    @property
    def is_moe(self) -> bool:
        """True when the block is a mixture of experts."""
        return self.num_experts > 0


class DenseFFN(nn.Module):
    """Classic two-layer MLP: ``down(dropout(act(up(x))))``. Input and output (..., D)."""

    def __init__(self, cfg: FFNConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.act = get_activation(cfg.activation)
        self.up = nn.Linear(cfg.dim, cfg.hidden_dim, bias=cfg.bias)  # (Hd, D) weight
        self.down = nn.Linear(cfg.hidden_dim, cfg.dim, bias=cfg.bias)  # (D, Hd) weight
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (..., D) -> (..., D)."""
        return self.down(self.dropout(self.act(self.up(x))))


class GatedFFN(nn.Module):
    """Gated linear unit FFN: ``down(dropout(act(gate(x)) * up(x)))``. Input and output (..., D).

    SwiGLU with activation="silu", GeGLU with "gelu", ReGLU with "relu". Three matrices instead of two, so for the
    same parameter count use hidden_dim ~ 2/3 of a dense block's.
    """

    def __init__(self, cfg: FFNConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.act = get_activation(cfg.activation)
        self.gate = nn.Linear(cfg.dim, cfg.hidden_dim, bias=cfg.bias)  # (Hd, D) weight
        self.up = nn.Linear(cfg.dim, cfg.hidden_dim, bias=cfg.bias)  # (Hd, D) weight
        self.down = nn.Linear(cfg.hidden_dim, cfg.dim, bias=cfg.bias)  # (D, Hd) weight
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (..., D) -> (..., D)."""
        return self.down(self.dropout(self.act(self.gate(x)) * self.up(x)))


def build_ffn(cfg: FFNConfig) -> nn.Module:
    """Build the FFN ``cfg`` describes: MoE when ``num_experts > 0``, else gated or dense."""
    if cfg.is_moe:
        # Imported here because rxt.moe imports this module for FFNConfig and the activations.
        from rxt.moe import MoEFeedForward

        return MoEFeedForward(cfg)
    return GatedFFN(cfg) if cfg.gated else DenseFFN(cfg)

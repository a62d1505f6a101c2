"""Training-only heads. `MLMHead`: the encoder's masked-LM head (stages 1 and 2).

The head is not part of `rxt.model.RxT` (inference never needs it); it is saved beside a saved model as
``mlm_head.safetensors`` so the next stage continues with the trained head. A head tied to the token embedding
stores only its norm (the projection *is* the embedding) and must be loaded with that embedding.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save
from torch import nn

from rxt.atomic_io import atomic_write_bytes

MLM_HEAD_FILE = "mlm_head.safetensors"


class MLMHead(nn.Module):
    """``logits = Linear(RMSNorm(hidden))``: (B, T, D) -> (B, T, V).

    ``tie_to``: an ``nn.Embedding`` (V, D) whose weight becomes the projection (no bias then).
    """

    def __init__(
        self, dim: int, vocab_size: int, *, norm_eps: float = 1e-6, tie_to: nn.Embedding | None = None
    ) -> None:
        super().__init__()
        if dim < 1 or vocab_size < 1:
            raise ValueError(f"MLMHead needs dim >= 1 and vocab_size >= 1, got dim={dim}, vocab_size={vocab_size}")
        self.dim = dim
        self.vocab_size = vocab_size
        self.norm_eps = norm_eps
        self.norm = nn.RMSNorm(dim, eps=norm_eps)
        self.proj = nn.Linear(dim, vocab_size, bias=tie_to is None)
        if tie_to is not None:
            if tuple(tie_to.weight.shape) != (vocab_size, dim):
                raise ValueError(
                    f"cannot tie MLMHead(dim={dim}, vocab_size={vocab_size}) to an embedding of shape "
                    f"{tuple(tie_to.weight.shape)}"
                )
            self.proj.weight = tie_to.weight
        self.tied = tie_to is not None

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.proj(self.norm(hidden))

    # -- persistence ---------------------------------------------------------------------------------------
    def save(self, directory: str | os.PathLike) -> Path:
        """Write ``directory/mlm_head.safetensors`` (atomically); a tied head stores only its norm."""
        target = Path(directory)
        target.mkdir(parents=True, exist_ok=True)
        tensors = {"norm.weight": self.norm.weight.detach().contiguous().cpu()}
        if not self.tied:
            tensors["proj.weight"] = self.proj.weight.detach().contiguous().cpu()
            tensors["proj.bias"] = self.proj.bias.detach().contiguous().cpu()
        meta = {"dim": self.dim, "vocab_size": self.vocab_size, "tied": self.tied, "norm_eps": self.norm_eps}
        return atomic_write_bytes(target / MLM_HEAD_FILE, save(tensors, metadata={"mlm_head": json.dumps(meta)}))

    @classmethod
    def load(cls, directory: str | os.PathLike, *, embedding: nn.Embedding | None = None) -> MLMHead:
        """Load ``directory/mlm_head.safetensors``; a tied head needs the model's ``embedding``."""
        path = Path(directory) / MLM_HEAD_FILE
        if not path.is_file():
            raise FileNotFoundError(f"no {MLM_HEAD_FILE} in {directory}")
        with safe_open(str(path), framework="pt", device="cpu") as handle:
            meta = json.loads((handle.metadata() or {}).get("mlm_head", "{}"))
            tensors = {name: handle.get_tensor(name) for name in handle.keys()}  # noqa: SIM118 - safe_open has no __iter__
        if not {"dim", "vocab_size", "tied"} <= set(meta):
            raise ValueError(f"{path} has no MLM-head metadata (dim, vocab_size, tied)")
        if meta["tied"] and embedding is None:
            raise ValueError(f"{path} holds a head tied to the token embedding: pass embedding=model.embedding")
        head = cls(
            int(meta["dim"]), int(meta["vocab_size"]), norm_eps=float(meta.get("norm_eps", 1e-6)),
            tie_to=embedding if meta["tied"] else None,
        )
        expected = {"norm.weight"} if head.tied else {"norm.weight", "proj.weight", "proj.bias"}
        if set(tensors) != expected:
            raise ValueError(f"{path} holds tensors {sorted(tensors)}, expected {sorted(expected)}")
        with torch.no_grad():
            for name, value in tensors.items():
                target = head.get_parameter(name)
                if target.shape != value.shape:
                    raise ValueError(f"{path}: {name} has shape {tuple(value.shape)}, expected {tuple(target.shape)}")
                target.copy_(value)
        return head


__all__ = ["MLM_HEAD_FILE", "MLMHead"]

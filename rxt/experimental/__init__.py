"""Experimental attention: Grouped/Deep MoE Attention (GMA/DMA), Flex-SQA, and an LM to compare them.

Research modules, not defaults. See each module's docstring for the exact formulation and its costs.
"""

from rxt.experimental.flex_sqa import (
    FLEX_AVAILABLE,
    FlexSQAAttention,
    dense_mask,
    sliding_window_mask_mod,
    use_flex_sqa,
)
from rxt.experimental.gma import DeepMoEAttention, GroupedMoEAttention
from rxt.experimental.lm import (
    ATTENTION_NAMES,
    ExperimentalAttentionTransformer,
    ExperimentalLMConfig,
    ExperimentalLMOutput,
    build_attention,
)

__all__ = [
    "ATTENTION_NAMES",
    "FLEX_AVAILABLE",
    "DeepMoEAttention",
    "ExperimentalAttentionTransformer",
    "ExperimentalLMConfig",
    "ExperimentalLMOutput",
    "FlexSQAAttention",
    "GroupedMoEAttention",
    "build_attention",
    "dense_mask",
    "sliding_window_mask_mod",
    "use_flex_sqa",
]

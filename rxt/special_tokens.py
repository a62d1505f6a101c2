"""Special tokens of the Reactive Transformer interaction template.

The tokens are named constants; code never spells a special token or its id as a literal. A tokenizer trained
by :func:`training.tokenizer_training.train_tokenizer` registers :data:`ALL_SPECIAL_TOKENS` first, in order, so
their ids are 0..8 (``[PAD]`` is 0). Code should still ask the tokenizer for an id (``tokenizer.pad_id``) rather
than rely on that order.
"""

from __future__ import annotations

from enum import StrEnum


class SpecialTokens(StrEnum):
    """The special tokens, as strings (a ``StrEnum``: ``SpecialTokens.QUERY == "[Q]"``)."""

    PAD = "[PAD]"
    """Padding; never attended to as a key, -100 in training targets."""
    UNK = "[UNK]"
    """Unknown symbol (a byte-level tokenizer never produces it)."""
    BOS = "[BOS]"
    """Start of an interaction or of a system text."""
    EOS = "[EOS]"
    """End of an interaction; generation stops on it."""
    MASK = "[MASK]"
    """Masked position for the encoder's MLM objective."""
    QUERY = "[Q]"
    """Starts the user's query."""
    ANSWER = "[A]"
    """Starts the model's answer."""
    THINK = "[T]"
    """Starts the model's (optional) reasoning, between the query and the answer."""
    INTERNAL = "[I]"
    """Marks internal/system text, written into memory rather than prepended to a query."""


ALL_SPECIAL_TOKENS: tuple[str, ...] = tuple(token.value for token in SpecialTokens)
"""Every special token, in id order for a tokenizer trained by this project (``[PAD]`` = 0 ... ``[I]`` = 8)."""

__all__ = ["ALL_SPECIAL_TOKENS", "SpecialTokens"]

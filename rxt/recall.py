"""The whole-word recall rule: does a generated answer name a fact value?

Shared by the training curriculum (MRL's recall metric, the synthetic data's tests), the benchmarks and the
runtime's demo, so every recall figure of the project is measured the same way. It lives in ``rxt`` because
``rxnn_runtime`` must not import ``training``.
"""

from __future__ import annotations

import re


def normalise(text: str) -> str:
    """Lower case, punctuation other than ``-`` to spaces, whitespace collapsed."""
    return " ".join(re.sub(r"[^\w\s-]", " ", text.lower()).split())


def recall_hit(generated: str, fact_value: str) -> bool:
    """Exact-match recall: ``fact_value`` occurs in ``generated`` as whole words (case and punctuation ignored;
    a hyphen joins words, so ``copper-falcon`` does not match inside ``copper-falconry``)."""
    value = normalise(fact_value)
    return bool(value) and re.search(rf"(?<![\w-]){re.escape(value)}(?![\w-])", normalise(generated)) is not None


__all__ = ["normalise", "recall_hit"]

"""Fact-value term: does the generated answer name the fact value the query asks about?

    V = 1 if `rxt.recall.recall_hit(generated_text, fact_value)` else 0        (per row, in {0, 1})

the very rule of every recall figure of the project (the memory-retention benchmark, MRL's evaluation, the
demo): the value occurs in the answer as whole words, case and punctuation other than ``-`` ignored. BLEU and the
embedding cosine score the whole answer, in which the value is a token or two; V scores exactly what recall
measures. Rows without a value (``None`` or empty: chitchat, turns that ask no fact) have no term.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from rxt.recall import recall_hit

__all__ = ["fact_value_hits"]


def fact_value_hits(texts: Sequence[str], values: Sequence[str | None],
                    device: torch.device | str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``(hits, has_value)``, both ``(B,)``: ``hits`` float32, 1.0 where row ``b``'s value occurs in ``texts[b]``
    (`recall_hit`), else 0.0 (also where there is no value); ``has_value`` bool, the rows that have a value."""
    if len(texts) != len(values):
        raise ValueError(f"fact_value_hits: {len(texts)} texts but {len(values)} values")
    has = [bool(v) for v in values]
    hits = [float(h and recall_hit(t, str(v))) for t, v, h in zip(texts, values, has, strict=True)]
    return (torch.tensor(hits, dtype=torch.float32, device=device),
            torch.tensor(has, dtype=torch.bool, device=device))

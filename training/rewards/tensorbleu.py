"""TensorBLEU: vectorised BLEU on token ids, per sentence or per corpus, on any device.

The scores equal NLTK's ``sentence_bleu`` / ``corpus_bleu`` (``nltk.translate.bleu_score``) computed on the same
token ids (as strings or ints), under the same smoothing, within 1e-6 (use ``dtype=torch.float64`` for the tightest
match; float32 is the default and is within ~1e-7 of it for scores in [0, 1]).

Algorithm (after the TensorBLEU paper, arXiv 2510.05485: count n-grams against a compact dictionary of the n-grams
that occur in this batch instead of a ``V**n`` table, then count all sentences in one batched ``bincount``):

* every (sentence, n-gram) pair of the batch, candidates and references together, gets a dense id from
  ``torch.unique``. The ids are built recursively: the id of the unigram at position ``i`` of sentence ``b`` is the
  dense rank of ``b * (V + 1) + token``; the id of the n-gram at ``i`` is the dense rank of
  ``id_{n-1}[i] * (V + 1) + token[i + n - 1]``. Every key fits an int64 and only 1-D ``unique`` is needed, and
  because the sentence is part of the id, the dictionary is linear in the batch's token count (a per-sentence
  ``B x U`` table would be quadratic).
* candidate counts are one ``bincount`` over the candidate positions; reference counts are one ``bincount`` with an
  offset of ``r * U`` per reference ``r``, giving an ``(R, U)`` table whose max over ``r`` is the clip.
* clipped counts are summed per sentence with a ``scatter_add``. Positions past a sentence's length (padding) and
  n-grams that would cross it map to one sentinel id that is dropped.

There is no Python loop over sentences; there is one over n (1..max_n) and one host sync per call (the largest
token id, to size the keys) besides those ``torch.unique`` makes itself.

NLTK behaviour reproduced exactly (``nltk.translate.bleu_score.corpus_bleu``, which ``sentence_bleu`` calls):

* modified precision ``p_n = clipped_matches_n / max(1, candidate_ngrams_n)``; a candidate shorter than ``n`` has
  ``0 / 1``;
* if there is no unigram match at all (including an empty candidate), the score is 0 under every smoothing;
* ``"none"`` (method0): a zero ``p_n`` is replaced by ``sys.float_info.min``, so the score is ``~1e-77 * ...``,
  i.e. 0 to any tolerance (NLTK warns; we don't);
* ``"floor"`` (method1): a zero ``p_n`` becomes ``epsilon / max(1, candidate_ngrams_n)`` (epsilon 0.1);
* ``"add-k"`` (method2 with k=1): ``p_n = (m_n + k) / (d_n + k)`` for ``n >= 2``, ``p_1`` unchanged;
* ``"exp"`` (method3, NIST): the j-th zero ``p_n`` (in order of n) becomes ``1 / (2**j * d_n)``;
* brevity penalty with the closest reference length, ties to the shorter reference:
  ``1`` if ``c > r``, else ``exp(1 - r / c)``;
* ``BLEU = BP * exp(sum_n w_n * log p_n)`` with ``max_n = len(weights)``.

Multiple references: pass ``(B, R, Tr)`` with ``(B, R)`` lengths, or a list of ``R`` tensors ``(B, Tr_r)`` with a
list of ``R`` length tensors. Every sample has the same ``R``; to give a sample fewer references, repeat one of its
references (a duplicate changes neither the clipping maxima nor the closest length).
"""

from __future__ import annotations

import math
import sys
from collections.abc import Sequence

import torch

__all__ = [
    "SMOOTHINGS",
    "lengths_from_padding",
    "ngram_statistics",
    "tensor_corpus_bleu",
    "tensor_sentence_bleu",
]

SMOOTHINGS = ("none", "floor", "add-k", "exp")
_LOG_FLOAT_MIN = math.log(sys.float_info.min)  # what NLTK's method0 puts in place of log(0)

References = torch.Tensor | Sequence[torch.Tensor]
Lengths = torch.Tensor | Sequence[torch.Tensor] | None


def lengths_from_padding(ids: torch.Tensor, pad_id: int) -> torch.Tensor:
    """Lengths of right-padded rows: index of the last non-pad token + 1 (0 for an all-pad row). Shape ``ids[..., 0]``."""
    not_pad = ids != pad_id
    positions = torch.arange(1, ids.size(-1) + 1, device=ids.device)
    return (not_pad * positions).amax(dim=-1) if ids.size(-1) else ids.new_zeros(ids.shape[:-1])


def _as_lengths(lengths: torch.Tensor | None, shape: tuple[int, ...], full: int, device) -> torch.Tensor:
    if lengths is None:
        return torch.full(shape, full, dtype=torch.long, device=device)
    lengths = torch.as_tensor(lengths, device=device).long()
    if lengths.shape != shape:
        raise ValueError(f"lengths have shape {tuple(lengths.shape)}, expected {shape}")
    return lengths.clamp(0, full)


def _normalise_references(
    references: References, reference_lengths: Lengths, batch: int, device
) -> tuple[torch.Tensor, torch.Tensor]:
    """Return references as ``(B, R, Tr)`` and lengths as ``(B, R)``."""
    if isinstance(references, torch.Tensor):
        refs = references.to(device)
        if refs.dim() == 2:
            refs = refs.unsqueeze(1)
            if isinstance(reference_lengths, torch.Tensor) and reference_lengths.dim() == 1:
                reference_lengths = reference_lengths.unsqueeze(1)
        if refs.dim() != 3 or refs.size(0) != batch:
            raise ValueError(
                f"references must be (B, Tr) or (B, R, Tr) with B={batch}, got {tuple(refs.shape)}"
            )
        if reference_lengths is not None and not isinstance(reference_lengths, torch.Tensor):
            reference_lengths = torch.stack([torch.as_tensor(x) for x in reference_lengths], dim=1)
        lens = _as_lengths(reference_lengths, tuple(refs.shape[:2]), refs.size(2), device)
        return refs.long(), lens
    refs_list = [torch.as_tensor(r, device=device).long() for r in references]
    if not refs_list:
        raise ValueError("at least one reference is needed")
    for r in refs_list:
        if r.dim() != 2 or r.size(0) != batch:
            raise ValueError(f"each reference must be (B, Tr) with B={batch}, got {tuple(r.shape)}")
    if reference_lengths is None:
        lens_list = [None] * len(refs_list)
    elif isinstance(reference_lengths, torch.Tensor) and reference_lengths.dim() == 2:
        lens_list = list(reference_lengths.unbind(1))
    else:
        lens_list = list(reference_lengths)
    if len(lens_list) != len(refs_list):
        raise ValueError(f"{len(refs_list)} references but {len(lens_list)} length tensors")
    width = max(r.size(1) for r in refs_list)
    lens = torch.stack(
        [_as_lengths(ln, (batch,), r.size(1), device) for r, ln in zip(refs_list, lens_list)], dim=1
    )
    refs = torch.stack([torch.nn.functional.pad(r, (0, width - r.size(1))) for r in refs_list], dim=1)
    return refs, lens


def ngram_statistics(
    candidates: torch.Tensor,
    references: References,
    candidate_lengths: torch.Tensor | None = None,
    reference_lengths: Lengths = None,
    max_n: int = 4,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-sentence BLEU sufficient statistics.

    Returns ``(matches, totals, hyp_len, closest_ref_len)``: ``matches`` and ``totals`` are ``(B, max_n)`` long
    tensors of clipped n-gram matches and ``max(1, candidate n-gram count)`` (NLTK's numerator and denominator),
    ``hyp_len`` and ``closest_ref_len`` are ``(B,)``.
    """
    if candidates.dim() != 2:
        raise ValueError(f"candidates must be (B, Tc), got {tuple(candidates.shape)}")
    if max_n < 1:
        raise ValueError("max_n must be >= 1")
    device = candidates.device
    cand = candidates.long()
    batch, tc = cand.shape
    c_len = _as_lengths(candidate_lengths, (batch,), tc, device)
    refs, r_len = _normalise_references(references, reference_lengths, batch, device)
    n_refs, tr = refs.shape[1], refs.shape[2]

    # Closest reference length (ties -> the shorter one), as NLTK's closest_ref_length.
    diff = (r_len - c_len[:, None]).abs()
    tie_break = torch.where(diff == diff.amin(dim=1, keepdim=True), r_len, torch.iinfo(torch.long).max)
    closest = tie_break.amin(dim=1)

    totals = (c_len[:, None] - torch.arange(max_n, device=device)).clamp(min=1)  # max(1, c - n + 1)
    if batch == 0 or tc == 0:  # no candidate n-gram at all
        return torch.zeros(batch, max_n, dtype=torch.long, device=device), totals, c_len, closest

    # All tokens of the batch in one flat row: candidates first, then the references.
    tokens = torch.cat([cand.reshape(-1), refs.reshape(-1)])
    sent = torch.cat(
        [
            torch.arange(batch, device=device).repeat_interleave(tc),
            torch.arange(batch, device=device).repeat_interleave(n_refs * tr),
        ]
    )
    pos = torch.cat(
        [
            torch.arange(tc, device=device).repeat(batch),
            torch.arange(tr, device=device).repeat(batch * n_refs),
        ]
    )
    row_len = torch.cat([c_len.repeat_interleave(tc), r_len.reshape(-1).repeat_interleave(tr)])
    n_cand = batch * tc
    n_tok = tokens.numel()
    # Which reference each reference position belongs to (for the per-reference bincount offsets).
    ref_index = torch.arange(n_refs, device=device).repeat_interleave(tr).repeat(batch)

    valid_tok = pos < row_len
    max_tok, has_negative = torch.stack(
        [torch.where(valid_tok, tokens, 0).max(), (valid_tok & (tokens < 0)).any().long()]
    ).tolist()
    if has_negative:
        raise ValueError("token ids must be >= 0")
    base = max_tok + 2  # token t -> t + 1 in 1..V, so keys are unique per (prefix id, token)
    if (n_tok + 2) * base >= 2**63 or (batch + 1) * base >= 2**63:
        raise ValueError("batch too large for int64 n-gram keys")

    matches = []
    ids = torch.empty(0)
    shifted = torch.zeros_like(tokens)
    for n in range(1, max_n + 1):
        if n == 1:
            valid = valid_tok
            keys = torch.where(valid, sent * base + tokens + 1, -1)
        else:
            # Extend the (n-1)-gram id at position i with the token at i + n - 1; the mask keeps it in one row.
            shifted[: n_tok - (n - 1)] = tokens[n - 1 :]
            valid = pos + n <= row_len
            keys = torch.where(valid, ids * base + shifted + 1, -1)
        uniq, inv = torch.unique(keys, return_inverse=True)
        size = uniq.numel() + 1
        # id 0 = invalid (padding, or the n-gram crosses the row's end); 1..U = (sentence, n-gram) pairs
        ids = torch.where(valid, inv + 1, 0)

        cand_ids = ids[:n_cand]
        cand_counts = torch.bincount(cand_ids, minlength=size)
        ref_counts = torch.bincount(ref_index * size + ids[n_cand:], minlength=n_refs * size).view(
            n_refs, size
        )
        clipped = torch.minimum(cand_counts, ref_counts.amax(dim=0))
        clipped[0] = 0
        # Each id belongs to one sentence: sum the clipped counts per sentence.
        id_sentence = torch.zeros(size, dtype=torch.long, device=device).scatter_(0, cand_ids, sent[:n_cand])
        matches.append(
            torch.zeros(batch, dtype=torch.long, device=device).scatter_add_(0, id_sentence, clipped)
        )
    return torch.stack(matches, dim=1), totals, c_len, closest


def _log_precisions(
    matches: torch.Tensor, totals: torch.Tensor, smoothing: str, epsilon: float, k: float, dtype: torch.dtype
) -> torch.Tensor:
    m = matches.to(dtype)
    d = totals.to(dtype)
    zero = matches == 0
    if smoothing == "none":
        return torch.where(zero, torch.full_like(m, _LOG_FLOAT_MIN), torch.log(m) - torch.log(d))
    if smoothing == "floor":
        return torch.where(zero, math.log(epsilon) - torch.log(d), torch.log(m) - torch.log(d))
    if smoothing == "add-k":
        smoothed = torch.log(m + k) - torch.log(d + k)
        smoothed[..., 0] = torch.log(m[..., 0]) - torch.log(
            d[..., 0]
        )  # p_1 is not smoothed (may be -inf: masked)
        return smoothed
    if smoothing == "exp":
        j = torch.cumsum(zero.to(dtype), dim=-1)  # index of this zero among the zeros so far
        return torch.where(zero, -j * math.log(2.0) - torch.log(d), torch.log(m) - torch.log(d))
    raise ValueError(f"unknown smoothing {smoothing!r}; expected one of {SMOOTHINGS}")


def _weights(weights: Sequence[float] | None, max_n: int | None) -> tuple[float, ...]:
    if weights is None:
        n = 4 if max_n is None else max_n
        return (1.0 / n,) * n
    weights = tuple(float(w) for w in weights)
    if max_n is not None and len(weights) != max_n:
        raise ValueError(f"{len(weights)} weights for max_n={max_n}")
    if not weights:
        raise ValueError("weights must not be empty")
    return weights


def _brevity_penalty(hyp_len: torch.Tensor, ref_len: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    c = hyp_len.to(dtype)
    r = ref_len.to(dtype)
    bp = torch.exp(1.0 - r / c.clamp(min=1))
    bp = torch.where(hyp_len > ref_len, torch.ones_like(bp), bp)
    return torch.where(hyp_len == 0, torch.zeros_like(bp), bp)


def _combine(matches, totals, hyp_len, ref_len, weights, smoothing, epsilon, k, dtype) -> torch.Tensor:
    w = torch.tensor(weights, dtype=dtype, device=matches.device)
    log_p = _log_precisions(matches, totals, smoothing, epsilon, k, dtype)
    # No unigram match -> 0 (this also masks the -inf of an unsmoothed p_1 under add-k).
    no_match = matches[..., 0] == 0
    log_p = torch.where(no_match[..., None], torch.zeros_like(log_p), log_p)
    score = _brevity_penalty(hyp_len, ref_len, dtype) * torch.exp((w * log_p).sum(dim=-1))
    return torch.where(no_match, torch.zeros_like(score), score)


def tensor_sentence_bleu(
    candidates: torch.Tensor,
    references: References,
    candidate_lengths: torch.Tensor | None = None,
    reference_lengths: Lengths = None,
    max_n: int | None = None,
    weights: Sequence[float] | None = None,
    smoothing: str = "none",
    *,
    epsilon: float = 0.1,
    k: float = 1.0,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Per-sentence BLEU of each candidate row against its reference(s); ``(B,)`` tensor of ``dtype``.

    Args:
        candidates: ``(B, Tc)`` token ids (any integer dtype, ids >= 0 within the lengths).
        references: ``(B, Tr)``, ``(B, R, Tr)``, or a list of ``R`` tensors ``(B, Tr_r)``.
        candidate_lengths: ``(B,)`` valid lengths (the rest is padding); default: all of ``Tc``.
        reference_lengths: ``(B,)``, ``(B, R)`` or a list of ``R`` ``(B,)`` tensors; default: full widths.
        max_n: highest n-gram order; default ``len(weights)``, or 4.
        weights: n-gram weights; default uniform ``1 / max_n`` (NLTK's ``(0.25,) * 4``).
        smoothing: ``"none"`` (NLTK method0), ``"floor"`` (method1, ``epsilon``), ``"add-k"`` (method2 when
            ``k == 1``), ``"exp"`` (method3).
        dtype: compute and output dtype (``torch.float64`` for bit-level agreement with NLTK).
    """
    if smoothing not in SMOOTHINGS:
        raise ValueError(f"unknown smoothing {smoothing!r}; expected one of {SMOOTHINGS}")
    w = _weights(weights, max_n)
    matches, totals, hyp_len, ref_len = ngram_statistics(
        candidates, references, candidate_lengths, reference_lengths, len(w)
    )
    return _combine(matches, totals, hyp_len, ref_len, w, smoothing, epsilon, k, dtype)


def tensor_corpus_bleu(
    candidates: torch.Tensor,
    references: References,
    candidate_lengths: torch.Tensor | None = None,
    reference_lengths: Lengths = None,
    max_n: int | None = None,
    weights: Sequence[float] | None = None,
    smoothing: str = "none",
    *,
    epsilon: float = 0.1,
    k: float = 1.0,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Corpus BLEU of the batch (NLTK ``corpus_bleu``): matches, totals and lengths summed before combining.

    Same arguments as :func:`tensor_sentence_bleu`; returns a 0-d tensor.
    """
    if smoothing not in SMOOTHINGS:
        raise ValueError(f"unknown smoothing {smoothing!r}; expected one of {SMOOTHINGS}")
    w = _weights(weights, max_n)
    matches, totals, hyp_len, ref_len = ngram_statistics(
        candidates, references, candidate_lengths, reference_lengths, len(w)
    )
    return _combine(
        matches.sum(0), totals.sum(0), hyp_len.sum(), ref_len.sum(), w, smoothing, epsilon, k, dtype
    )

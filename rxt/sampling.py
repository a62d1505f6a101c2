"""Next-token choice: greedy, temperature, top-k and top-p (nucleus) sampling, seeded."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from rxt.sampling_noise import SampleStream, random_key


@dataclass
class SamplingConfig:
    """How to pick tokens.

    ``temperature=0`` is greedy. ``top_k=0`` and ``top_p=1.0`` disable those filters. ``seed`` makes sampling
    reproducible: each sampled token is drawn from one uniform number that depends only on the seed, the row of
    a `generate` batch and the token's index in the turn (`rxt.sampling_noise`), so a seeded session gives the
    same tokens alone and in any batch, and the global RNG is untouched. ``return_log_probs`` records, for each
    chosen token, its log-probability under the model's plain softmax (temperature 1, no filtering): the
    distribution a policy-gradient trainer recomputes, so old and new log-probs are comparable.
    """

    max_new_tokens: int = 64
    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0
    seed: int | None = None
    return_log_probs: bool = False

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise ValueError(f"SamplingConfig.max_new_tokens={self.max_new_tokens} must be >= 1")
        if self.temperature < 0:
            raise ValueError(f"SamplingConfig.temperature={self.temperature} must be >= 0 (0 = greedy)")
        if self.top_k < 0:
            raise ValueError(f"SamplingConfig.top_k={self.top_k} must be >= 0 (0 = off)")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"SamplingConfig.top_p={self.top_p} must be in (0, 1]")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0

    def streams(self, batch: int = 1) -> list[SampleStream] | None:
        """The noise streams of a batch of ``batch`` rows sampled by this config (None when greedy): with a seed,
        row i's stream is ``SampleStream.seeded(seed, i)`` (so row 0 is what a runtime session with this seed
        draws); without one, the rows share one key from the global torch RNG and differ by row."""
        if self.greedy:
            return None
        if self.seed is not None:
            return [SampleStream.seeded(self.seed, row) for row in range(batch)]
        key = random_key()
        return [SampleStream.seeded(key, row) for row in range(batch)]


def filter_logits(logits: torch.Tensor, top_k: int = 0, top_p: float = 1.0) -> torch.Tensor:
    """Set logits outside the top-k / nucleus to -inf. (B, V) -> (B, V). The best token always survives."""
    if top_k > 0 and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        probs = sorted_logits.softmax(dim=-1)
        # Drop a token when the tokens ranked above it already hold top_p of the mass.
        drop_sorted = probs.cumsum(dim=-1) - probs >= top_p
        drop = drop_sorted.scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


def filter_rows(logits: torch.Tensor, top_k: torch.Tensor, top_p: torch.Tensor) -> torch.Tensor:
    """`filter_logits` with each row's own ``top_k`` (N,) and ``top_p`` (N,), in one pass: (N, V) -> (N, V).

    One descending sort serves both filters: the k-th largest value is read off it, and the nucleus is taken over
    the top-k survivors in the same order (the order `filter_logits` sorts them in, up to the order of ties).
    ``top_k`` 0 (or >= V) and ``top_p`` 1 leave a row as it is."""
    vocab = logits.shape[-1]
    sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
    k = torch.where((top_k > 0) & (top_k < vocab), top_k, torch.full_like(top_k, vocab))
    kth = sorted_logits.gather(-1, (k - 1)[:, None])
    dropped_k = sorted_logits < kth  # ties with the k-th value survive, as in filter_logits
    probs = sorted_logits.masked_fill(dropped_k, float("-inf")).softmax(dim=-1)
    # Drop a token when the tokens ranked above it already hold top_p of the mass (rows with top_p = 1 skip this:
    # their rounded cumulative sum can reach 1 before the last tokens).
    # (top_p in the logits' dtype: the comparison filter_logits makes with a Python float)
    dropped_p = (probs.cumsum(dim=-1) - probs >= top_p[:, None].to(probs.dtype)) & (top_p < 1.0)[:, None]
    drop_sorted = dropped_k | dropped_p
    drop = drop_sorted.scatter(-1, order, drop_sorted)
    return logits.masked_fill(drop, float("-inf"))


def sample_rows(logits: torch.Tensor, temperature: torch.Tensor, top_k: torch.Tensor, top_p: torch.Tensor,
                uniform: torch.Tensor, *, filtered: bool = True) -> torch.Tensor:
    """One token per row of ``logits`` (N, V), each row by its own temperature, top-k, top-p and uniform number
    ``uniform`` (N,) in [0, 1): inverse-CDF sampling from ``softmax(filter(logits / T))``, all rows at once.

    The cumulative distribution is summed in ``uniform``'s dtype (float64; float32 where the device has no
    float64) in vocabulary order; the token is the first whose cumulative mass exceeds ``u * total``, so a token
    of zero probability (filtered out) is never chosen and each kept token is chosen for a share of [0, 1) equal
    to its probability. ``filtered=False`` skips the sort when no row filters."""
    scaled = logits.float() / temperature[:, None].to(torch.float32)
    if filtered:
        scaled = filter_rows(scaled, top_k, top_p)
    cdf = scaled.to(uniform.dtype).softmax(dim=-1).cumsum(dim=-1)
    total = cdf[:, -1:]
    # u < 1, but u * total may round up to total; the largest value below it still picks a kept token
    target = torch.minimum(uniform[:, None] * total, torch.nextafter(total, torch.zeros_like(total)))
    return torch.searchsorted(cdf, target, right=True).squeeze(-1).clamp_max(logits.shape[-1] - 1)


Row = tuple[SamplingConfig, SampleStream | None]


def choose_rows_on_device(logits: torch.Tensor, rows: Sequence[Row]) -> tuple[torch.Tensor, torch.Tensor | None]:
    """One token per row of ``logits`` (N, V), each row with its own sampling settings and noise stream.

    Greedy rows take the argmax; every sampled row draws from its own `SampleStream` (one uniform per token,
    advanced here), so a seeded row gives the same tokens whatever else shares the batch. The per-row settings
    and uniforms travel to the device in one small copy and all rows are chosen in one batched pass
    (`sample_rows`); nothing waits for the device. Returns the tokens (N,) and, when any row asked for them, the
    chosen tokens' plain-softmax log-probs (N,) (temperature 1, unfiltered: what a policy-gradient trainer
    recomputes; rows that did not ask get a value too).
    """
    if logits.shape[0] != len(rows):
        raise ValueError(f"choose_rows_on_device: {logits.shape[0]} logit rows for {len(rows)} sampling rows")
    picked = logits.argmax(dim=-1)
    if any(not cfg.greedy for cfg, _ in rows):
        vocab = logits.shape[-1]
        table = []
        for i, (cfg, stream) in enumerate(rows):
            if cfg.greedy:
                table.append((1.0, 0.0, 1.0, 0.0, 0.0))
                continue
            if stream is None:
                raise ValueError(f"choose_rows_on_device: row {i} samples (temperature {cfg.temperature}) but has "
                                 "no SampleStream")
            table.append((cfg.temperature, float(min(cfg.top_k, vocab)), cfg.top_p, stream.next_uniform(), 1.0))
        # (5, N): T, top_k, top_p, u, sampled; float32 on MPS, which has no float64
        wide = torch.float32 if logits.device.type == "mps" else torch.float64
        params = torch.tensor(table, dtype=torch.float64).T.to(wide)
        if logits.device.type == "cuda":
            params = params.pin_memory()
        params = params.to(logits.device, non_blocking=True)
        filtered = any(not cfg.greedy and (cfg.top_k > 0 or cfg.top_p < 1.0) for cfg, _ in rows)
        sampled = sample_rows(logits, params[0], params[1].long(), params[2], params[3], filtered=filtered)
        picked = torch.where(params[4] > 0, sampled, picked)
    if not any(cfg.return_log_probs for cfg, _ in rows):
        return picked, None
    return picked, logits.float().log_softmax(dim=-1).gather(-1, picked[:, None]).squeeze(-1)


def choose_tokens(
    logits: torch.Tensor, cfg: SamplingConfig, streams: Sequence[SampleStream] | None = None
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Pick one token per row from ``logits`` (B, V) by one ``cfg``, row i drawing from ``streams[i]``
    (`SamplingConfig.streams`; ignored when greedy); returns (tokens (B,), log_probs (B,) or None)."""
    if cfg.greedy:
        rows: list[Row] = [(cfg, None)] * logits.shape[0]
    else:
        if streams is None or len(streams) != logits.shape[0]:
            got = "none" if streams is None else len(streams)
            raise ValueError(f"choose_tokens: {logits.shape[0]} sampled rows need as many SampleStreams, got {got}")
        rows = [(cfg, s) for s in streams]
    return choose_rows_on_device(logits, rows)

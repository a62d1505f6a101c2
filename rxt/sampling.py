"""Next-token choice: greedy, temperature, top-k and top-p (nucleus) sampling, seeded."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class SamplingConfig:
    """How to pick tokens.

    ``temperature=0`` is greedy. ``top_k=0`` and ``top_p=1.0`` disable those filters. ``seed`` makes sampling
    reproducible (a private generator; the global RNG is untouched). ``return_log_probs`` records, for each chosen
    token, its log-probability under the model's plain softmax (temperature 1, no filtering): the distribution a
    policy-gradient trainer recomputes, so old and new log-probs are comparable.
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

    def generator(self, device: torch.device) -> torch.Generator | None:
        if self.seed is None or self.greedy:
            return None
        return torch.Generator(device=device).manual_seed(self.seed)


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


def pick_tokens(logits: torch.Tensor, cfg: SamplingConfig, generator: torch.Generator | None = None) -> torch.Tensor:
    """One token per row of ``logits`` (B, V) by ``cfg`` (greedy, or filtered and sampled): tokens (B,)."""
    logits = logits.float()
    if cfg.greedy:
        return logits.argmax(dim=-1)
    filtered = filter_logits(logits / cfg.temperature, cfg.top_k, cfg.top_p)
    return torch.multinomial(filtered.softmax(dim=-1), 1, generator=generator).squeeze(-1)


def choose_tokens(
    logits: torch.Tensor, cfg: SamplingConfig, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Pick one token per row from ``logits`` (B, V); returns (tokens (B,), log_probs (B,) or None)."""
    logits = logits.float()
    tokens = pick_tokens(logits, cfg, generator)
    log_probs = None
    if cfg.return_log_probs:
        log_probs = logits.log_softmax(dim=-1).gather(-1, tokens[:, None]).squeeze(-1)
    return tokens, log_probs


def choose_rows_on_device(
    logits: torch.Tensor, rows: list[tuple[SamplingConfig, torch.Generator | None]]
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """One token per row of ``logits`` (N, V), each row with its own sampling settings and generator.

    Greedy rows share one argmax; a sampled row draws from its own generator on its own (1, V) logits, so a
    seeded row gives the same tokens whatever else shares the batch. Nothing waits for the device: returns the
    tokens (N,) and, when any row asked for them, the chosen tokens' plain-softmax log-probs (N,) (as
    `choose_tokens` records them; rows that did not ask get a value too).
    """
    if logits.shape[0] != len(rows):
        raise ValueError(f"choose_rows_on_device: {logits.shape[0]} logit rows for {len(rows)} sampling rows")
    picked = logits.argmax(dim=-1)
    for i, (cfg, generator) in enumerate(rows):
        if not cfg.greedy:  # tokens only: the log-probs of every row come from one batched pass below
            picked[i] = pick_tokens(logits[i : i + 1], cfg, generator)[0]
    if not any(cfg.return_log_probs for cfg, _ in rows):
        return picked, None
    return picked, logits.float().log_softmax(dim=-1).gather(-1, picked[:, None]).squeeze(-1)

"""Batched autoregressive generation on a preallocated KV cache.

Prefill runs the (right-padded) prompts once; each decode step then feeds one token per row. Rows stop
independently at ``eos_id``; finished rows are fed ``pad_id`` until every row is done. Memory cross-attention
keys/values (``memory``) are computed by the caller once per turn and reused by every step.

The same loop serves chat, serving and MRL rollouts: `decode_steps` yields each step so a caller can stream
tokens as they are produced; `generate` collects them.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch

from rxt.decoder import Decoder
from rxt.layers import MemoryKV
from rxt.sampling import SamplingConfig, choose_tokens


@dataclass
class DecodeStep:
    tokens: torch.Tensor  # (B,) token chosen this step (pad_id for rows already finished)
    log_probs: torch.Tensor | None  # (B,) log-prob of the chosen token (0 for finished rows)
    active: torch.Tensor  # (B,) bool: the row produced a real token this step (EOS included)
    finished: torch.Tensor  # (B,) bool: the row is done after this step


@dataclass
class GenerationResult:
    tokens: torch.Tensor  # (B, N) generated ids, pad_id after each row's end
    lengths: torch.Tensor  # (B,) generated tokens per row, EOS included
    log_probs: torch.Tensor | None  # (B, N), 0 past each row's end


@torch.no_grad()
def decode_steps(
    decoder: Decoder,
    input_ids: torch.Tensor,
    lengths: torch.Tensor | None,
    sampling: SamplingConfig,
    *,
    eos_id: int,
    pad_id: int,
    memory: list[MemoryKV | None] | None = None,
) -> Iterator[DecodeStep]:
    """Prefill ``input_ids`` (B, T, right-padded to per-row ``lengths``) and yield one `DecodeStep` per token."""
    batch, prompt_len = input_ids.shape
    device = input_ids.device
    if lengths is None:
        lengths = torch.full((batch,), prompt_len, dtype=torch.long, device=device)
    lengths = lengths.to(device)
    if bool((lengths < 1).any()) or bool((lengths > prompt_len).any()):
        raise ValueError(f"prompt lengths must be in 1..{prompt_len}; got {lengths.tolist()}")
    budget = decoder.cfg.max_seq_len
    if prompt_len + sampling.max_new_tokens > budget:
        raise ValueError(
            f"prompt of {prompt_len} tokens + max_new_tokens={sampling.max_new_tokens} exceeds "
            f"max_seq_len={budget}"
        )
    cache = decoder.new_cache(batch, prompt_len + sampling.max_new_tokens)
    valid = torch.arange(prompt_len, device=device)[None, :] < lengths[:, None]
    out = decoder(input_ids, attention_mask=valid, memory=memory, cache=cache, compute_logits=False)
    last_hidden = out.hidden[torch.arange(batch, device=device), lengths - 1]
    logits = decoder.lm_head(last_hidden)
    generator = sampling.generator(device)
    finished = torch.zeros(batch, dtype=torch.bool, device=device)
    for step in range(sampling.max_new_tokens):
        tokens, log_probs = choose_tokens(logits, sampling, generator)
        active = ~finished
        tokens = torch.where(active, tokens, torch.full_like(tokens, pad_id))
        if log_probs is not None:
            log_probs = torch.where(active, log_probs, torch.zeros_like(log_probs))
        finished = finished | (tokens == eos_id)
        yield DecodeStep(tokens=tokens, log_probs=log_probs, active=active, finished=finished.clone())
        if bool(finished.all()) or step == sampling.max_new_tokens - 1:
            return
        logits = decoder(tokens[:, None], memory=memory, cache=cache, validate=False).logits[:, -1]


def generate(
    decoder: Decoder,
    input_ids: torch.Tensor,
    lengths: torch.Tensor | None = None,
    sampling: SamplingConfig | None = None,
    *,
    eos_id: int,
    pad_id: int,
    memory: list[MemoryKV | None] | None = None,
) -> GenerationResult:
    """Run `decode_steps` to the end and collect the tokens (and log-probs) per row."""
    sampling = sampling or SamplingConfig()
    tokens, log_probs, counts = [], [], None
    for step in decode_steps(
        decoder, input_ids, lengths, sampling, eos_id=eos_id, pad_id=pad_id, memory=memory
    ):
        tokens.append(step.tokens)
        if step.log_probs is not None:
            log_probs.append(step.log_probs)
        counts = step.active.long() if counts is None else counts + step.active.long()
    return GenerationResult(
        tokens=torch.stack(tokens, dim=1),
        lengths=counts,
        log_probs=torch.stack(log_probs, dim=1) if log_probs else None,
    )

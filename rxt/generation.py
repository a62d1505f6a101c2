"""Batched autoregressive generation: a synchronous driver over `DecodeEngine`, the one decode path.

The prompts (right-padded to per-row ``lengths``) are prefilled into the slots of a `DecodeEngine` in one pass;
each step then feeds one token per row. Rows stop independently by the one stop rule (`rxt.stopping.StopRule`:
``eos_id`` or ``max_new_tokens``); finished rows are fed ``pad_id`` until every row is done, so the tokens a
seeded batch draws do not depend on when its other rows stop. Memory cross-attention keys/values (``memory``)
are computed by the caller once per turn and reused by every step.

Chat (`rxt.chat.ReactiveChat`), serving (`rxnn_runtime`) and MRL rollouts all decode through `DecodeEngine`;
`decode_steps` yields each step so a caller can stream tokens as they are produced; `generate` collects them.
Pass ``engine`` to reuse one engine (and its captured CUDA graphs) across calls.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch

from rxt.decode_engine import DecodeEngine
from rxt.decoder import Decoder
from rxt.layers import MemoryKV
from rxt.sampling import SamplingConfig, choose_tokens
from rxt.stopping import StopRule


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


def _prompt_rows(input_ids: torch.Tensor, lengths: torch.Tensor | None) -> list[torch.Tensor]:
    prompt_len = input_ids.shape[1]
    if lengths is None:
        return list(input_ids)
    host = lengths.tolist()
    if any(n < 1 or n > prompt_len for n in host):
        raise ValueError(f"prompt lengths must be in 1..{prompt_len}; got {host}")
    return [input_ids[i, :n] for i, n in enumerate(host)]


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
    stm: torch.Tensor | None = None,
    engine: DecodeEngine | None = None,
) -> Iterator[DecodeStep]:
    """Prefill ``input_ids`` (B, T, right-padded to per-row ``lengths``) and yield one `DecodeStep` per token.

    The rows read ``memory`` (per-layer K/V of batch B) or ``stm`` (L, B, S, D, projected in the prefill).
    ``engine`` must have at least B free slots; rows take slots 0..B-1 and are released at the end.
    """
    batch, prompt_len = input_ids.shape
    device = input_ids.device
    rows = _prompt_rows(input_ids, lengths)
    budget = decoder.cfg.max_seq_len
    if prompt_len + sampling.max_new_tokens > budget:
        raise ValueError(
            f"prompt of {prompt_len} tokens + max_new_tokens={sampling.max_new_tokens} exceeds "
            f"max_seq_len={budget}"
        )
    if engine is None:
        # A one-off engine: no graph capture (it would be thrown away with the engine).
        engine = DecodeEngine(decoder, max_slots=batch, capacity=min(budget, prompt_len + sampling.max_new_tokens + 1),
                              use_cuda_graphs=False)
    if engine.max_slots < batch or engine.num_live:
        raise ValueError(f"engine has {engine.max_slots} slots ({engine.num_live} live); {batch} free ones are needed")
    slots = list(range(batch))
    logits = engine.start_batch(slots, rows, stm=stm, memory=memory)
    streams = sampling.streams(batch)  # row i's noise: a pure function of (seed, i, token index)
    rule = StopRule(eos_id, sampling.max_new_tokens)
    finished = torch.zeros(batch, dtype=torch.bool, device=device)
    done = [False] * batch
    try:
        for step in range(sampling.max_new_tokens):
            # All rows are sampled together, each from its own stream (one uniform per row and step).
            tokens, log_probs = choose_tokens(logits[:batch], sampling, streams)
            tokens = tokens.to(device)
            active = ~finished
            tokens = torch.where(active, tokens, torch.full_like(tokens, pad_id))
            if log_probs is not None:
                log_probs = torch.where(active, log_probs.to(device), torch.zeros_like(log_probs, device=device))
            host = tokens.tolist()
            for i in slots:
                if not done[i]:
                    done[i] = rule.check(host[i], step + 1, engine.room(i)) is not None
            finished = torch.tensor(done, device=device)
            yield DecodeStep(tokens=tokens, log_probs=log_probs, active=active, finished=finished.clone())
            if all(done):
                return
            step_tokens = torch.full((engine.bucket(),), pad_id, dtype=torch.long, device=engine.device)
            step_tokens[:batch] = tokens
            logits = engine.step(step_tokens)
    finally:
        for i in slots:
            engine.release(i)


def generate(
    decoder: Decoder,
    input_ids: torch.Tensor,
    lengths: torch.Tensor | None = None,
    sampling: SamplingConfig | None = None,
    *,
    eos_id: int,
    pad_id: int,
    memory: list[MemoryKV | None] | None = None,
    stm: torch.Tensor | None = None,
    engine: DecodeEngine | None = None,
) -> GenerationResult:
    """Run `decode_steps` to the end and collect the tokens (and log-probs) per row."""
    sampling = sampling or SamplingConfig()
    tokens, log_probs, counts = [], [], None
    for step in decode_steps(
        decoder, input_ids, lengths, sampling, eos_id=eos_id, pad_id=pad_id, memory=memory, stm=stm, engine=engine
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

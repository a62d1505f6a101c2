"""Held-out recall of an RxT, measured the way the benchmark measures it: by generation, with the whole-word
rule (`rxt.recall.recall_hit`), never by teacher forcing.

For a batch of episodes: the history turns (all but the last) are teacher-forced into the STM one turn at a time
(``STM = update_memory(STM, interaction)``; rows whose history is shorter keep their STM), then the decoder
answers the last query greedily reading only that STM. ``reset_memory=True`` is the ablation: the decoder
reads the initial STM, so whatever it recalls it did not get from memory.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from rxt.generation import generate
from rxt.model import RxT
from rxt.recall import recall_hit
from rxt.sampling import SamplingConfig
from rxt.template import InteractionTemplate
from training.data.records import EpisodeRecord


def _padded(rows: Sequence[Sequence[int]], pad_id: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(1, max(len(r) for r in rows))
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, : len(row)] = torch.tensor(list(row), dtype=torch.long)
    lengths = torch.tensor([len(r) for r in rows], dtype=torch.long)
    return ids.to(device), lengths.to(device)


@torch.no_grad()
def memory_after_history(model: RxT, template: InteractionTemplate, episodes: Sequence[EpisodeRecord]) -> torch.Tensor:
    """The STM (L, B, S, D) after teacher-forcing every turn but the last of each episode."""
    device = next(model.parameters()).device
    max_len = model.config.max_seq_len
    stm = model.initial_memory(len(episodes)).to(device)
    histories = [episode.turns[:-1] for episode in episodes]
    for t in range(max((len(h) for h in histories), default=0)):
        rows = [template.interaction_ids(h[t].query, h[t].answer)[:max_len] if t < len(h) else [] for h in histories]
        ids, lengths = _padded(rows, template.tokenizer.pad_id, device)
        mask = torch.arange(ids.shape[1], device=device)[None, :] < lengths[:, None]
        new = model.update_memory(stm, ids, mask)
        stm = torch.where((lengths > 0)[None, :, None, None], new, stm)
    return stm


@torch.no_grad()
def generated_answers(model: RxT, tokenizer: Any, episodes: Sequence[EpisodeRecord], *, reset_memory: bool = False,
                      max_new_tokens: int = 24, batch_size: int = 64) -> list[str]:
    """The greedy answer to the last query of each episode, with its history in memory (or the initial STM)."""
    template = InteractionTemplate(tokenizer)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    answers: list[str] = []
    try:
        for start in range(0, len(episodes), batch_size):
            chunk = episodes[start : start + batch_size]
            if reset_memory:
                stm = model.initial_memory(len(chunk)).to(device)
            else:
                stm = memory_after_history(model, template, chunk)
            budget = model.config.max_seq_len - max_new_tokens
            prompts = [template.query_ids(episode.turns[-1].query)[-budget:] for episode in chunk]
            ids, lengths = _padded(prompts, tokenizer.pad_id, device)
            result = generate(model.decoder, ids, lengths, SamplingConfig(max_new_tokens=max_new_tokens),
                              eos_id=tokenizer.eos_id, pad_id=tokenizer.pad_id, memory=model.project_memory(stm))
            for row in range(len(chunk)):
                tokens = result.tokens[row, : int(result.lengths[row])].tolist()
                answers.append(tokenizer.decode([t for t in tokens if t != tokenizer.eos_id]))
    finally:
        model.train(was_training)
    return answers


def recall(model: RxT, tokenizer: Any, episodes: Sequence[EpisodeRecord], **kwargs: Any) -> float:
    """The fraction of episodes whose generated answer names ``metadata["fact_value"]`` (`recall_hit`)."""
    if not episodes:
        raise ValueError("recall needs at least one episode")
    answers = generated_answers(model, tokenizer, episodes, **kwargs)
    hits = [recall_hit(a, str(e.metadata["fact_value"])) for a, e in zip(answers, episodes, strict=True)]
    return sum(hits) / len(hits)


__all__ = ["generated_answers", "memory_after_history", "recall"]

"""Is the memory path used? Three numbers that tell a trained memory from an untrained one.

- **Residual gates** (`rxt.gates.ResidualGate`, one per memory layer): the gate value G each memory update
  applies, over the history turns of held-out episodes (mean, min, max per layer). An untrained model sits at
  its initial value (sigmoid(-2) = 0.12 for every input); a trained one moves away and varies with the input.
- **Read-attention entropy**: the entropy (nats) of the decoder's memory cross-attention over the S slots, at
  the answer tokens of the final question, per layer, against its maximum log(S). Near the maximum, the decoder
  reads the memory as a uniform average: it does not look anything up.
- **Write dependence**: the mean cosine similarity between the STMs written by two different episodes' first
  turns (per pair of episodes, over the flattened memory); close to 1, what gets written does not depend on
  what was said.

``diagnose(model, tokenizer, episodes)`` returns them as a JSON-ready dict; ``benchmarks/memory_diagnostics.py``
runs it over saved models, and the nano recipe writes it before and after the memory stages.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F

from rxt.model import RxT
from rxt.template import InteractionTemplate
from training.data.records import EpisodeRecord
from training.recall_eval import memory_after_history


def _summary(values: list[torch.Tensor]) -> dict[str, float]:
    flat = torch.cat([v.detach().float().reshape(-1) for v in values]) if values else torch.zeros(1)
    return {"mean": round(float(flat.mean()), 4), "min": round(float(flat.min()), 4),
            "max": round(float(flat.max()), 4), "std": round(float(flat.std()) if flat.numel() > 1 else 0.0, 4)}


@torch.no_grad()
def gate_values(model: RxT, template: InteractionTemplate, episodes: Sequence[EpisodeRecord]) -> list[dict[str, float]]:
    """Per memory layer: the G its residual gate applied over every history-turn update of ``episodes``."""
    gates = model.memory_attention.gate
    seen: list[list[torch.Tensor]] = [[] for _ in gates]

    def hook(index: int):
        def record(module, inputs, output):
            seen[index].append(module.gate_value(*inputs))
        return record

    handles = [gate.register_forward_hook(hook(i)) for i, gate in enumerate(gates)]
    try:
        memory_after_history(model, template, episodes)
    finally:
        for handle in handles:
            handle.remove()
    return [_summary(values) for values in seen]


@torch.no_grad()
def read_entropy(model: RxT, template: InteractionTemplate, episodes: Sequence[EpisodeRecord]) -> list[float | None]:
    """Per decoder layer: the mean entropy (nats) of the memory cross-attention over slots at the answer tokens
    of each episode's final turn (teacher-forced), with the history in memory; ``None`` for memory-free layers."""
    device = next(model.parameters()).device
    stm = memory_after_history(model, template, episodes)
    layers = model.decoder.layers
    sums = [0.0 for _ in layers]
    counts = [0 for _ in layers]
    captured: dict[int, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}

    def hook(index: int):
        def record(module, args, kwargs, output):
            captured[index] = (args[0], kwargs["positions"], kwargs["key_value"][0])
        return record

    handles = [layer.memory_cross_attn.register_forward_hook(hook(i), with_kwargs=True)
               for i, layer in enumerate(layers) if layer.has_memory]
    try:
        for row, episode in enumerate(episodes):
            final = episode.turns[-1]
            ids = template.interaction_ids(final.query, final.answer)[: model.config.max_seq_len]
            answer = template.answer_mask(torch.tensor(ids)).to(device)
            captured.clear()
            model(torch.tensor([ids], device=device), stm[:, row : row + 1])
            for index, (x, positions, keys) in captured.items():
                attn = layers[index].memory_cross_attn
                q = attn.project_query(x, positions)  # (1, H_q, T, d)
                k = keys.repeat_interleave(q.shape[1] // keys.shape[1], dim=1)
                probs = F.softmax((q @ k.transpose(-1, -2)).float() / math.sqrt(q.shape[-1]), dim=-1)
                entropy = -(probs * probs.clamp_min(1e-12).log()).sum(-1)  # (1, H_q, T)
                picked = entropy[..., answer]
                sums[index] += float(picked.sum())
                counts[index] += picked.numel()
    finally:
        for handle in handles:
            handle.remove()
    return [round(s / c, 4) if c else None for s, c in zip(sums, counts, strict=True)]


@torch.no_grad()
def write_cosine(model: RxT, template: InteractionTemplate, episodes: Sequence[EpisodeRecord]) -> float:
    """Mean cosine similarity between the STMs written by the first turns of consecutive pairs of episodes."""
    firsts = [EpisodeRecord(e.query, e.answer, (e.turns[0],)) for e in episodes]  # history = the first turn
    stm = memory_after_history(model, template, firsts)  # each history is exactly the first turn
    flat = stm.permute(1, 0, 2, 3).reshape(stm.shape[1], -1).float()
    if flat.shape[0] < 2:
        raise ValueError("write_cosine needs at least two episodes")
    return round(float(F.cosine_similarity(flat[:-1], flat[1:], dim=-1).mean()), 4)


def diagnose(model: RxT, tokenizer: Any, episodes: Sequence[EpisodeRecord]) -> dict[str, Any]:
    """Gate values, read-attention entropy and write dependence of ``model`` on ``episodes`` (JSON-ready)."""
    if len(episodes) < 2:
        raise ValueError("diagnose needs at least two episodes")
    template = InteractionTemplate(tokenizer)
    was_training = model.training
    model.eval()
    try:
        return {
            "gates": gate_values(model, template, episodes),
            "read_entropy": read_entropy(model, template, episodes),
            "read_entropy_max": round(math.log(model.config.stm_slots), 4),
            "write_cosine": write_cosine(model, template, episodes),
            "episodes": len(episodes),
        }
    finally:
        model.train(was_training)


__all__ = ["diagnose", "gate_values", "read_entropy", "write_cosine"]

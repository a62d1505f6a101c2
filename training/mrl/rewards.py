"""Rewards of collected MRL episodes, on token ids (any `training.rewards` callable).

For step k of an episode the reward input is: ``generated`` = the answer ids (no ``[EOS]``), ``reference`` = the
dataset answer, ``saved`` = the interaction written to memory just before the query (the first interaction
for k = 0) and ``first`` = the episode's first interaction. For the long-range strategy the episode's last step
(the question about the first interaction) is scored by ``last_step_reward`` when given (e.g. the same
`MemoryRetentionReward` in ``"long_range"`` mode); all other steps by ``reward``.

The reward input also carries each step's answer text (``StepLog.answer_text``, the runtime's decoding of the
answer ids, as the benchmark decodes its answers) and the fact value the step asks about (`step_fact_value`: the
episode's ``metadata["fact_value"]`` at its question turn, ``None`` at every other step and in episodes without
one), for the fact-value term of the reward; `value_hit_rate` is that term's mean over a collection's question
steps (the recall of the training answers), which the trainer logs.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from rxt.template import pad_batch
from training.mrl.episodes import EpisodeLog
from training.rewards import RewardInput
from training.rewards.value import fact_value_hits

RewardFn = Callable[[RewardInput], torch.Tensor]


def _pad(rows: Sequence[Sequence[int]], pad_id: int, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(1, max((len(r) for r in rows), default=0))
    ids, lengths = pad_batch(rows, pad_id, max_len=width)
    if device is None:
        return ids, lengths
    return ids.to(device, non_blocking=True), lengths.to(device, non_blocking=True)


def step_fact_value(log: EpisodeLog, k: int) -> str | None:
    """The fact value step ``k`` of ``log`` asks about: ``metadata["fact_value"]`` when the step is the episode's
    question turn (``metadata["question_turn"]`` counts the first interaction as turn 0, so step k is turn k + 1),
    else ``None`` (also for an episode without both keys, e.g. chitchat, or whose question was cut off)."""
    value, turn = log.metadata.get("fact_value"), log.metadata.get("question_turn")
    if not value or turn is None or int(turn) != k + 1:
        return None
    return str(value)


def value_hit_rate(logs: Sequence[EpisodeLog]) -> float | None:
    """The mean fact-value term over the question steps of ``logs`` (the fraction whose answer names the value),
    ``None`` when no step of ``logs`` asks a fact value."""
    rows = [(s.answer_text, step_fact_value(log, k)) for log in logs for k, s in enumerate(log.steps)]
    rows = [(text, value) for text, value in rows if value is not None]
    if not rows:
        return None
    hits, _ = fact_value_hits(*zip(*rows, strict=True))
    return float(hits.mean())


def reward_input(rows: Sequence[tuple[EpisodeLog, int]], pad_id: int, embed=None, device=None) -> RewardInput:
    """The reward inputs of ``rows`` (episode, step), padded; on ``device`` when given (the rewards then run there:
    TensorBLEU and the embedding cosine on the GPU, one call for all rows)."""
    gen = _pad([log.steps[k].answer_ids for log, k in rows], pad_id, device)
    ref = _pad([log.steps[k].reference_ids for log, k in rows], pad_id, device)
    saved = _pad([log.first_ids if k == 0 else log.steps[k - 1].memory_ids for log, k in rows], pad_id, device)
    first = _pad([log.first_ids for log, _ in rows], pad_id, device)
    return RewardInput(gen[0], gen[1], ref[0], ref[1], saved[0], saved[1], first[0], first[1], embed=embed,
                       generated_texts=[log.steps[k].answer_text for log, k in rows],
                       fact_values=[step_fact_value(log, k) for log, k in rows])


def compute_rewards(logs: Sequence[EpisodeLog], reward: RewardFn, *, pad_id: int,
                    last_step_reward: RewardFn | None = None, embed=None, device=None) -> list[float]:
    """Fill ``step.reward`` for every step of ``logs`` (in place); returns the rewards in step order. ``device``:
    where the rewards are computed (default: the host, where the ids are)."""
    groups: dict[int, list[tuple[EpisodeLog, int]]] = {0: [], 1: []}
    for log in logs:
        for k in range(len(log.steps)):
            special = last_step_reward is not None and log.strategy == "long_range" and k == len(log.steps) - 1
            groups[int(special)].append((log, k))
    for which, rows in groups.items():
        if not rows:
            continue
        fn = last_step_reward if which else reward
        values = fn(reward_input(rows, pad_id, embed, device)).detach().float().cpu().tolist()
        for (log, k), value in zip(rows, values):
            log.steps[k].reward = float(value)
    return [float(s.reward) for log in logs for s in log.steps]


__all__ = ["RewardFn", "compute_rewards", "reward_input", "step_fact_value", "value_hit_rate"]

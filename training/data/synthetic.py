"""Seeded synthetic memory dialogues: a fact is stated in turn 1 and asked about ``distance`` turns later.

Episode layout (``1 + distance + 1`` turns; ``EpisodeRecord.turns``)::

    turn 0            query states the fact ("My cat is called Miso."), answer acknowledges it
    turns 1..k        k = distance intermediate turns:
                        long_range  -> unrelated filler (general knowledge, small talk, arithmetic, and with
                                       probability ``distractor_prob`` a statement of a *different* fact)
                        cumulative  -> follow-ups about the same subject with new details ("Miso turned five")
    turn k + 1        question about the fact; the reference answer contains the fact value

``metadata``: ``fact_key``, ``fact_value``, ``distance`` (k), ``style``, ``split``, ``seed``, ``index``,
``question_turn`` (k + 1), so a benchmark can score exact-match recall per k with :func:`recall_hit`.

Held-out evaluation: the values of every fact type are partitioned deterministically (by the sha256 rank of
``"<key>|<value>"``: every :data:`EVAL_EVERY`-th value is ``eval``, the rest ``train``), and every value string is
unique across fact types, so the ``train`` and ``eval`` splits never share a fact (nor a value). Episode ``i`` is
drawn from its own RNG seeded by ``(seed, split, style, i)``: the same config always gives the same episodes, a
longer run extends a shorter one, and different seeds differ.
"""

from __future__ import annotations

import hashlib
import random
import re
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache

from training.data.records import EpisodeRecord, InteractionRecord
from training.data.synthetic_vocab import FACT_TYPES, FILLER_QA, GENERIC_ACKS, FactType

STYLES: tuple[str, ...] = ("long_range", "cumulative")
SPLITS: tuple[str, ...] = ("train", "eval")
EVAL_EVERY = 4
"""One value in ``EVAL_EVERY`` (by hash rank, per fact type) is held out for the ``eval`` split."""
BENCHMARK_DISTANCES: tuple[int, ...] = (1, 2, 4, 8, 16)


@dataclass(frozen=True)
class SyntheticDialogueConfig:
    """What to generate.

    Attributes:
        num_episodes: number of episodes.
        num_turns: intermediate turns between the statement and the question (the distance k) when ``distance``
            is ``None``.
        style: ``"long_range"`` or ``"cumulative"``.
        split: ``"train"`` or ``"eval"`` (disjoint fact values).
        seed: RNG seed.
        distance: ``None`` (use ``num_turns``), an int k (every episode has exactly k intermediate turns) or a
            tuple of ints cycled over episodes (episode i gets ``distance[i % len(distance)]``), e.g.
            :data:`BENCHMARK_DISTANCES`.
        distractor_prob: long-range only: chance that a filler turn states a different fact.
    """

    num_episodes: int = 1000
    num_turns: int = 4
    style: str = "long_range"
    split: str = "train"
    seed: int = 0
    distance: int | tuple[int, ...] | None = None
    distractor_prob: float = 0.25

    def __post_init__(self) -> None:
        for name in ("num_episodes", "num_turns", "seed"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise TypeError(f"{name} must be an int, got {type(value).__name__}")
        if self.num_episodes < 0:
            raise ValueError(f"num_episodes must be >= 0, got {self.num_episodes}")
        if self.num_turns < 0:
            raise ValueError(f"num_turns must be >= 0, got {self.num_turns}")
        if self.style not in STYLES:
            raise ValueError(f"style must be one of {STYLES}, got {self.style!r}")
        if self.split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {self.split!r}")
        if not 0.0 <= self.distractor_prob <= 1.0:
            raise ValueError(f"distractor_prob must be in [0, 1], got {self.distractor_prob}")
        if self.distance is not None:
            dist = (self.distance,) if isinstance(self.distance, int) else tuple(self.distance)
            if not dist or any(isinstance(d, bool) or not isinstance(d, int) or d < 0 for d in dist):
                raise ValueError(f"distance must be an int >= 0 or a non-empty tuple of them, got {self.distance!r}")
            object.__setattr__(self, "distance", dist if len(dist) > 1 else dist[0])

    def distance_of(self, index: int) -> int:
        """The number of intermediate turns of episode ``index``."""
        if self.distance is None:
            return self.num_turns
        if isinstance(self.distance, int):
            return self.distance
        return self.distance[index % len(self.distance)]


def _rank(key: str, value: str) -> str:
    return hashlib.sha256(f"{key}|{value}".encode()).hexdigest()


@cache
def _partition(key: str) -> dict[str, tuple[str, ...]]:
    fact = _FACTS_BY_KEY[key]
    ordered = sorted(fact.values, key=lambda v: _rank(key, v))
    return {
        "eval": tuple(sorted(v for i, v in enumerate(ordered) if i % EVAL_EVERY == 0)),
        "train": tuple(sorted(v for i, v in enumerate(ordered) if i % EVAL_EVERY != 0)),
    }


_FACTS_BY_KEY: dict[str, FactType] = {f.key: f for f in FACT_TYPES}


def fact_values(key: str, split: str) -> tuple[str, ...]:
    """The values of fact type ``key`` that belong to ``split`` (sorted)."""
    if key not in _FACTS_BY_KEY:
        raise ValueError(f"unknown fact key {key!r}; known: {sorted(_FACTS_BY_KEY)}")
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    return _partition(key)[split]


def _article(value: str) -> str:
    return ("an " if value[:1].lower() in "aeiou" else "a ") + value


def _fill(template: str, value: str) -> str:
    text = template.format(v=value, av=_article(value))
    return text[:1].upper() + text[1:]


def _statement(rng: random.Random, fact: FactType, value: str) -> InteractionRecord:
    query = _fill(rng.choice(fact.statements), value)
    answer = _fill(rng.choice(fact.acks + GENERIC_ACKS), value)
    return InteractionRecord(query, answer)


def _filler(rng: random.Random, split: str, exclude: str, distractor_prob: float) -> InteractionRecord:
    if rng.random() < distractor_prob:
        other = rng.choice([f for f in FACT_TYPES if f.key != exclude])
        return _statement(rng, other, rng.choice(fact_values(other.key, split)))
    kind = rng.random()
    if kind < 0.3:
        a, b = rng.randint(2, 99), rng.randint(2, 99)
        if rng.random() < 0.5:
            return InteractionRecord(f"What is {a} plus {b}?", f"{a} plus {b} is {a + b}.")
        a, b = a % 13 + 2, b % 13 + 2
        return InteractionRecord(f"What is {a} times {b}?", f"{a} times {b} is {a * b}.")
    query, answer = rng.choice(FILLER_QA)
    return InteractionRecord(query, answer)


def _details(rng: random.Random, fact: FactType, value: str, count: int) -> list[InteractionRecord]:
    out: list[InteractionRecord] = []
    pool: list[tuple[str, str]] = []
    for _ in range(count):
        if not pool:  # each detail once before any repeats
            pool = list(fact.details)
            rng.shuffle(pool)
        query, answer = pool.pop()
        out.append(InteractionRecord(_fill(query, value), _fill(answer, value)))
    return out


def generate_episode(config: SyntheticDialogueConfig, index: int) -> EpisodeRecord:
    """Episode ``index`` of ``config`` (independent of ``num_episodes``)."""
    rng = random.Random(f"synthetic:{config.seed}:{config.split}:{config.style}:{index}")
    fact = rng.choice(FACT_TYPES)
    value = rng.choice(fact_values(fact.key, config.split))
    distance = config.distance_of(index)
    first = _statement(rng, fact, value)
    if config.style == "long_range":
        middle = [_filler(rng, config.split, fact.key, config.distractor_prob) for _ in range(distance)]
    else:
        middle = _details(rng, fact, value, distance)
    question = InteractionRecord(_fill(rng.choice(fact.questions), value), _fill(rng.choice(fact.answers), value))
    metadata = {
        "source": "synthetic",
        "fact_key": fact.key,
        "fact_value": value,
        "distance": distance,
        "question_turn": distance + 1,
        "style": config.style,
        "split": config.split,
        "seed": config.seed,
        "index": index,
    }
    return EpisodeRecord(first.query, first.answer, (*middle, question), metadata)


def iter_episodes(config: SyntheticDialogueConfig) -> Iterator[EpisodeRecord]:
    """Episodes ``0 .. num_episodes - 1`` of ``config``, lazily."""
    for index in range(config.num_episodes):
        yield generate_episode(config, index)


def generate_episodes(config: SyntheticDialogueConfig) -> list[EpisodeRecord]:
    """All ``config.num_episodes`` episodes, as a list."""
    return list(iter_episodes(config))


def _normalise(text: str) -> str:
    return " ".join(re.sub(r"[^\w\s-]", " ", text.lower()).split())


def recall_hit(generated: str, fact_value: str) -> bool:
    """Exact-match recall: ``fact_value`` occurs in ``generated`` as whole words (case and punctuation ignored)."""
    value = _normalise(fact_value)
    return bool(value) and re.search(rf"(?<![\w-]){re.escape(value)}(?![\w-])", _normalise(generated)) is not None


__all__ = [
    "BENCHMARK_DISTANCES",
    "EVAL_EVERY",
    "SPLITS",
    "STYLES",
    "SyntheticDialogueConfig",
    "fact_values",
    "generate_episode",
    "generate_episodes",
    "iter_episodes",
    "recall_hit",
]

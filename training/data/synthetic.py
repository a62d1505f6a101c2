"""Seeded synthetic memory dialogues that can only be solved by copying: a fact is stated, ``distance`` turns
later it is asked about, and its value was made up for this episode.

Episode layout (``lead + 1 + distance + 1`` turns; ``EpisodeRecord.turns``)::

    turns 0..lead-1   statements of distractor facts (0 turns unless ``max_lead``)
    turn  lead        the target fact is stated ("My cat is called Velmor."); the answer acknowledges it, often
                      repeating the value ("Velmor, got it.")
    k turns           k = distance intermediate turns; the other distractor facts are stated in some of them:
                        long_range  -> unrelated filler (general knowledge, small talk, arithmetic)
                        cumulative  -> follow-ups about the target that repeat its value ("Velmor turned five")
    last turn         the question about the target; the reference answer contains its value

Every value is generated per episode (:mod:`training.data.synthetic_values`: made-up names, codes, numbers,
passphrases), never drawn from a closed list, so a model cannot recite "the" value of a fact type: it must copy.
An episode states ``num_facts`` facts (2-4 by default, as many as fit) whose types share one group (a dog's name beside the cat's,
a door code beside the room number): the distractors make the model bind value to key.

**No question without its statement.** A question only ever follows the statement of its fact in the same
episode. For the single-sequence record kinds (stage 1-2 texts and interactions, :func:`synthetic_records`), each
question is merged with the statements before it into one query ("My cat is called Velmor. My dog is called Tosh.
What is my cat called?"), so the decoder first learns to copy in context; memory-aware stages read the episodes.

**Held-out values.** Values of the ``eval`` split are built only from atoms (words, codes, numbers) whose hash
puts them in ``eval``, and ``train`` values only from the others (`synthetic_values.atom_split`): no evaluation
value, nor any of its words, can occur in training data, for any seed or episode count.

``metadata``: ``fact_key``, ``fact_value``, ``distance`` (k), ``question_turn``, ``facts`` (``[key, value, turn]``
of every stated fact), ``style``, ``split``, ``seed``, ``index``, so a benchmark can score recall per k with
:func:`recall_hit`. Episode ``i`` is drawn from its own RNG seeded by ``(seed, split, style, i)``: the same config
always gives the same episodes, a longer run extends a shorter one, and different seeds differ.
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from rxt.recall import recall_hit
from training.data.records import EpisodeRecord, InteractionRecord
from training.data.synthetic_values import EVAL_EVERY, SPLITS, generate_value
from training.data.synthetic_vocab import FACT_TYPES, FILLER_QA, GENERIC_ACKS, FactType

STYLES: tuple[str, ...] = ("long_range", "cumulative")
FORMS: tuple[str, ...] = ("dialogue", "in_context")
BENCHMARK_DISTANCES: tuple[int, ...] = (1, 2, 4, 8, 16)
GROUPS: tuple[str, ...] = tuple(dict.fromkeys(f.group for f in FACT_TYPES))
_BY_GROUP: dict[str, tuple[FactType, ...]] = {g: tuple(f for f in FACT_TYPES if f.group == g) for g in GROUPS}
_BY_KEY: dict[str, FactType] = {f.key: f for f in FACT_TYPES}
_MAX_FACTS = min(len(types) for types in _BY_GROUP.values())


def _distances(value: int | Sequence[int] | None) -> int | tuple[int, ...] | None:
    if value is None:
        return None
    dist = (value,) if isinstance(value, int) and not isinstance(value, bool) else tuple(value)
    if not dist or any(isinstance(d, bool) or not isinstance(d, int) or d < 0 for d in dist):
        raise ValueError(f"distance must be an int >= 0 or a non-empty list of them, got {value!r}")
    return dist if len(dist) > 1 else dist[0]


@dataclass(frozen=True)
class SyntheticDialogueConfig:
    """What to generate.

    Attributes:
        num_episodes: number of episodes.
        num_turns: the distance k (intermediate turns between the statement and the question) when ``distance``
            is ``None``.
        style: ``"long_range"`` or ``"cumulative"``.
        split: ``"train"`` or ``"eval"`` (values from disjoint generator spaces).
        seed: RNG seed.
        distance: ``None`` (use ``num_turns``), an int k, or a tuple of ints cycled over episodes (episode i gets
            ``distance[i % len(distance)]``), e.g. :data:`BENCHMARK_DISTANCES` or ``(1, 2)`` for a curriculum
            phase "k <= 2".
        num_facts: facts stated per episode, ``[min, max]`` (drawn uniformly) or one int: the target and
            ``num_facts - 1`` distractors of the same group, at most ``distance + max_lead`` of them (the places
            they can take).
        max_lead: at most this many distractor statements come before the target's (each episode draws 0 or 1;
            the episode then has ``lead + distance + 2`` turns). 0, the default, keeps every episode at
            ``distance + 2`` turns with the target stated first (what MRL's step counts assume); the recipe's
            training data uses 1, so the target is not always the first fact.
        groups: the fact groups to draw from (`GROUPS`); ``None`` = all.
        form: ``"dialogue"`` (the multi-turn episode above) or ``"in_context"``: each episode is the single
            interaction of `in_context_interactions` that asks the question, its statements in the same query
            (the copy task without memory, for the first steps of a memory-aware stage).
        chain: facts asked about per episode, one after another: each segment (its statements, ``distance``
            turns, its question) starts after the previous one's question, so a fact is also stated and asked
            after an earlier one was answered, as in a conversation (``metadata["questions"]``: every segment's
            ``[key, value, turn]``; ``fact_key``/``fact_value``/``question_turn`` are the last one's). 1 = one
            question at the end, as before.
    """

    num_episodes: int = 1000
    num_turns: int = 4
    style: str = "long_range"
    split: str = "train"
    seed: int = 0
    distance: int | tuple[int, ...] | None = None
    num_facts: int | tuple[int, int] = (2, 4)
    max_lead: int = 0
    groups: tuple[str, ...] | None = None
    form: str = "dialogue"
    chain: int = 1

    def __post_init__(self) -> None:
        for name in ("num_episodes", "num_turns", "seed", "max_lead", "chain"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise TypeError(f"{name} must be an int, got {type(value).__name__}")
        for name in ("num_episodes", "num_turns", "max_lead"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.chain < 1:
            raise ValueError(f"chain must be >= 1, got {self.chain}")
        if self.style not in STYLES:
            raise ValueError(f"style must be one of {STYLES}, got {self.style!r}")
        if self.split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {self.split!r}")
        if self.form not in FORMS:
            raise ValueError(f"form must be one of {FORMS}, got {self.form!r}")
        object.__setattr__(self, "distance", _distances(self.distance))
        facts = self.num_facts
        bounds = (facts, facts) if isinstance(facts, int) and not isinstance(facts, bool) else tuple(facts)
        if (len(bounds) != 2 or any(isinstance(b, bool) or not isinstance(b, int) for b in bounds)
                or not 1 <= bounds[0] <= bounds[1] <= _MAX_FACTS):
            raise ValueError(f"num_facts must be an int or [min, max] with 1 <= min <= max <= {_MAX_FACTS}, "
                             f"got {facts!r}")
        object.__setattr__(self, "num_facts", bounds)
        if self.groups is not None:
            groups = (self.groups,) if isinstance(self.groups, str) else tuple(self.groups)
            unknown = [g for g in groups if g not in GROUPS]
            if not groups or unknown:
                raise ValueError(f"groups must be a non-empty list of {GROUPS}, got {self.groups!r}")
            object.__setattr__(self, "groups", groups)

    def distance_of(self, index: int) -> int:
        """The number of intermediate turns of episode ``index``."""
        if self.distance is None:
            return self.num_turns
        if isinstance(self.distance, int):
            return self.distance
        return self.distance[index % len(self.distance)]


def _fill(template: str, value: str) -> str:
    # A sentence starts with a capital, except where it starts with the value itself: "kaipel-laiga." is copied
    # as stated, never turned into "Kaipel-laiga." (a case change is a second task beside the copy, and a
    # lower-case value's capitalised form tokenises differently).
    text = template.format(v=value)
    return text if template.startswith("{v}") else text[:1].upper() + text[1:]


def _statement(rng: random.Random, fact: FactType, value: str) -> InteractionRecord:
    # Most acknowledgements repeat the value: a copy inside one interaction, the easiest one to learn.
    acks = fact.acks if rng.random() < 0.75 else GENERIC_ACKS
    return InteractionRecord(_fill(rng.choice(fact.statements), value), _fill(rng.choice(acks), value))


def _filler(rng: random.Random) -> InteractionRecord:
    if rng.random() < 0.3:
        a, b = rng.randint(2, 99), rng.randint(2, 99)
        if rng.random() < 0.5:
            return InteractionRecord(f"What is {a} plus {b}?", f"{a} plus {b} is {a + b}.")
        a, b = a % 13 + 2, b % 13 + 2
        return InteractionRecord(f"What is {a} times {b}?", f"{a} times {b} is {a * b}.")
    query, answer = rng.choice(FILLER_QA)
    return InteractionRecord(query, answer)


def _detail(rng: random.Random, fact: FactType, value: str) -> InteractionRecord:
    query, answer = rng.choice(fact.details)
    return InteractionRecord(_fill(query, value), _fill(answer, value))


def _segment(config: SyntheticDialogueConfig, rng: random.Random, distance: int, offset: int,
             used_groups: Sequence[str] = ()) -> tuple[list[InteractionRecord], list[list], FactType, str]:
    """One fact's turns (distractor statements, the target's statement, ``distance`` turns, its question), the
    facts stated (``[key, value, turn]``, turns counted from ``offset``), the target and its value. The group is
    one not in ``used_groups`` while any is left, so a chained episode never states one fact type twice."""
    groups = config.groups or GROUPS
    group = rng.choice([g for g in groups if g not in used_groups] or groups)
    count = rng.randint(*config.num_facts)
    facts = rng.sample(_BY_GROUP[group], count)
    values: list[str] = []
    for fact in facts:  # distinct values: a distractor never repeats the target's value
        value = generate_value(fact.kind, rng, config.split)
        while value.lower() in {v.lower() for v in values}:
            value = generate_value(fact.kind, rng, config.split)
        values.append(value)
    target, value = facts[0], values[0]
    # Distractors take intermediate turns (random positions, in order) or, up to `max_lead`, come before the
    # target; an episode states no more facts than those places hold (k = 0 and max_lead = 0: the target only).
    distractors = list(zip(facts[1:], values[1:], strict=True))[: distance + config.max_lead]
    lead = min(config.max_lead, len(distractors), rng.randint(0, 1))
    inside = min(len(distractors) - lead, distance)
    lead = len(distractors) - inside
    before, after = distractors[:lead], distractors[lead:]
    positions = sorted(rng.sample(range(distance), inside))
    turns: list[InteractionRecord] = [_statement(rng, f, v) for f, v in before]
    stated = [[f.key, v, offset + i] for i, (f, v) in enumerate(before)]
    stated.append([target.key, value, offset + len(turns)])
    turns.append(_statement(rng, target, value))
    queue = iter(after)
    for step in range(distance):
        if step in positions:
            fact, other = next(queue)
            stated.append([fact.key, other, offset + len(turns)])
            turns.append(_statement(rng, fact, other))
        elif config.style == "cumulative":
            turns.append(_detail(rng, target, value))
        else:
            turns.append(_filler(rng))
    turns.append(InteractionRecord(_fill(rng.choice(target.questions), value),
                                   _fill(rng.choice(target.answers), value)))
    return turns, stated, target, value


def generate_episode(config: SyntheticDialogueConfig, index: int) -> EpisodeRecord:
    """Episode ``index`` of ``config`` (independent of ``num_episodes``)."""
    rng = random.Random(f"synthetic:{config.seed}:{config.split}:{config.style}:{index}")
    distance = config.distance_of(index)
    turns: list[InteractionRecord] = []
    stated: list[list] = []
    questions: list[list] = []
    for _ in range(config.chain):  # chain = 1: the RNG is drawn exactly as before chaining existed
        used = [fact_type(key).group for key, _, _ in questions]
        segment, facts, target, value = _segment(config, rng, distance, len(turns), used)
        turns.extend(segment)
        stated.extend(facts)
        questions.append([target.key, value, len(turns) - 1])
    metadata = {
        "source": "synthetic",
        "fact_key": target.key,
        "fact_value": value,
        "distance": distance,
        "question_turn": len(turns) - 1,
        "facts": stated,
        "style": config.style,
        "split": config.split,
        "seed": config.seed,
        "index": index,
    }
    if config.chain > 1:
        metadata["questions"] = questions  # every segment's question: [key, value, turn]; the last is the one above
    episode = EpisodeRecord(turns[0].query, turns[0].answer, tuple(turns[1:]), metadata)
    if config.form == "in_context":
        question = in_context_interactions(episode)[metadata["question_turn"]]
        facts = [[key, value, 0] for key, value, _ in stated]  # all stated in the one query
        metadata = {**metadata, "question_turn": 0, "facts": facts, "form": "in_context"}
        metadata.pop("questions", None)
        return EpisodeRecord(question.query, question.answer, (), metadata)
    return episode


def iter_episodes(config: SyntheticDialogueConfig) -> Iterator[EpisodeRecord]:
    """Episodes ``0 .. num_episodes - 1`` of ``config``, lazily."""
    for index in range(config.num_episodes):
        yield generate_episode(config, index)


def generate_episodes(config: SyntheticDialogueConfig) -> list[EpisodeRecord]:
    """All ``config.num_episodes`` episodes, as a list."""
    return list(iter_episodes(config))


def in_context_interactions(episode: EpisodeRecord) -> list[InteractionRecord]:
    """The turns of ``episode`` as single interactions, each question merged with the statements before it into
    one query: every turn that states or elaborates a fact stays as it is, and no question is left without
    its statement in the same sequence (a chained episode: every segment's question)."""
    turns = episode.turns
    meta = episode.metadata
    asked = {int(turn) for _, _, turn in meta.get("questions", ())} or {int(meta.get("question_turn", len(turns) - 1))}
    statements = sorted(int(turn) for _, _, turn in meta.get("facts", ()))
    out = []
    for i, turn in enumerate(turns):
        if i in asked:
            context = " ".join(turns[j].query for j in statements if j < i)
            turn = InteractionRecord(f"{context} {turn.query}".strip(), turn.answer, turn.think)
        out.append(turn)
    return out


def synthetic_records(config: SyntheticDialogueConfig, record_kind: str) -> list[EpisodeRecord | InteractionRecord]:
    """The records a ``synthetic`` data source gives: episodes for ``record_kind == "episode"``; otherwise each
    episode's `in_context_interactions` (the loaders turn them into texts)."""
    episodes = generate_episodes(config)
    if record_kind == "episode":
        return list(episodes)
    return [turn for episode in episodes for turn in in_context_interactions(episode)]


def fact_type(key: str) -> FactType:
    """The fact type named ``key``."""
    if key not in _BY_KEY:
        raise ValueError(f"unknown fact key {key!r}; known: {sorted(_BY_KEY)}")
    return _BY_KEY[key]


__all__ = [
    "BENCHMARK_DISTANCES",
    "EVAL_EVERY",
    "FORMS",
    "GROUPS",
    "SPLITS",
    "STYLES",
    "SyntheticDialogueConfig",
    "fact_type",
    "generate_episode",
    "generate_episodes",
    "in_context_interactions",
    "iter_episodes",
    "recall_hit",
    "synthetic_records",
]

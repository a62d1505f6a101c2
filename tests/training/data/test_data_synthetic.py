"""Synthetic memory dialogues: determinism, held-out facts, distances, recall answers."""

from __future__ import annotations

import collections
import re

import pytest

from training.data.synthetic import (
    BENCHMARK_DISTANCES,
    SyntheticDialogueConfig,
    fact_values,
    generate_episode,
    generate_episodes,
    recall_hit,
)
from training.data.synthetic_vocab import FACT_TYPES, FILLER_QA


def test_vocabulary_is_rich_and_values_unique():
    assert len(FACT_TYPES) >= 30
    values = [v.lower() for f in FACT_TYPES for v in f.values]
    assert len(values) == len(set(values)), [v for v, n in collections.Counter(values).items() if n > 1]
    for fact in FACT_TYPES:
        assert fact_values(fact.key, "train") and fact_values(fact.key, "eval"), fact.key


def test_no_value_contains_another():
    values = [f" {v.lower()} " for f in FACT_TYPES for v in f.values]
    assert not [(a, b) for a in values for b in values if a != b and b in a]


def test_filler_and_templates_never_mention_a_fact_value():
    parts = [q + " " + a for q, a in FILLER_QA]
    for fact in FACT_TYPES:
        templates = (*fact.statements, *fact.questions, *fact.answers, *fact.acks, *(x for d in fact.details for x in d))
        parts += [t.replace("{v}", " ").replace("{av}", " ") for t in templates]
    text = " ".join(parts).lower()
    for fact in FACT_TYPES:
        for value in fact.values:
            assert not re.search(rf"\b{re.escape(value.lower())}\b", text), value


@pytest.mark.parametrize("style", ["long_range", "cumulative"])
def test_deterministic_per_seed_and_seeds_differ(style):
    config = SyntheticDialogueConfig(num_episodes=50, style=style, seed=7)
    assert generate_episodes(config) == generate_episodes(config)
    other = generate_episodes(SyntheticDialogueConfig(num_episodes=50, style=style, seed=8))
    assert other != generate_episodes(config)
    longer = generate_episodes(SyntheticDialogueConfig(num_episodes=60, style=style, seed=7))
    assert longer[:50] == generate_episodes(config)


def test_train_and_eval_share_no_facts():
    seen = {}
    for split in ("train", "eval"):
        facts, values = set(), set()
        for style in ("long_range", "cumulative"):
            for ep in generate_episodes(SyntheticDialogueConfig(num_episodes=2500, style=style, split=split, seed=1)):
                facts.add((ep.metadata["fact_key"], ep.metadata["fact_value"]))
                values.add(ep.metadata["fact_value"].lower())
        seen[split] = (facts, values)
    assert len(seen["train"][0]) > 300 and len(seen["eval"][0]) > 100
    assert not seen["train"][0] & seen["eval"][0]
    assert not seen["train"][1] & seen["eval"][1]


def test_eval_distractors_come_from_eval_values():
    train_values = sorted({v.lower() for f in FACT_TYPES for v in fact_values(f.key, "train")}, key=len)
    pattern = re.compile(r"(?<![\w-])(" + "|".join(re.escape(v) for v in reversed(train_values)) + r")(?![\w-])")
    config = SyntheticDialogueConfig(num_episodes=200, split="eval", distance=8, distractor_prob=1.0)
    for ep in generate_episodes(config):
        for turn in ep.turns:
            text = (turn.query + " " + turn.answer).lower()
            assert not pattern.search(text), (pattern.search(text), turn)


@pytest.mark.parametrize("style", ["long_range", "cumulative"])
@pytest.mark.parametrize("k", BENCHMARK_DISTANCES)
def test_distance_is_exact_and_answer_holds_the_fact(style, k):
    for ep in generate_episodes(SyntheticDialogueConfig(num_episodes=20, style=style, distance=k, seed=k)):
        meta = ep.metadata
        assert meta["distance"] == k and len(ep.turns) == k + 2 and meta["question_turn"] == k + 1
        assert recall_hit(ep.query, meta["fact_value"])
        final = ep.turns[-1]
        assert recall_hit(final.answer, meta["fact_value"])
        assert not recall_hit(final.query, meta["fact_value"])
        if style == "cumulative":
            assert all(recall_hit(t.query, meta["fact_value"]) for t in ep.turns[1:-1])


def test_distance_cycle_and_num_turns():
    eps = generate_episodes(SyntheticDialogueConfig(num_episodes=10, distance=BENCHMARK_DISTANCES))
    assert [e.metadata["distance"] for e in eps] == [1, 2, 4, 8, 16, 1, 2, 4, 8, 16]
    assert generate_episode(SyntheticDialogueConfig(num_turns=3), 0).metadata["distance"] == 3


def test_bad_config_names_field():
    with pytest.raises(ValueError, match="style"):
        SyntheticDialogueConfig(style="random")
    with pytest.raises(ValueError, match="split"):
        SyntheticDialogueConfig(split="test")
    with pytest.raises(ValueError, match="distance"):
        SyntheticDialogueConfig(distance=-1)


def test_recall_hit():
    assert recall_hit("Your cat is called Miso.", "Miso")
    assert recall_hit("it is OLIVE green!", "olive green")
    assert not recall_hit("Misoshiru is soup", "Miso")
    assert not recall_hit("copper-falconry", "copper-falcon")

"""Synthetic memory dialogues: open-vocabulary values, held-out values never in training data, no question
without its statement, distances, distractors, determinism."""

from __future__ import annotations

import re

import pytest

from training.data.synthetic import (
    BENCHMARK_DISTANCES,
    GROUPS,
    SyntheticDialogueConfig,
    fact_type,
    generate_episode,
    generate_episodes,
    in_context_interactions,
    recall_hit,
    synthetic_records,
)
from training.data.synthetic_values import (
    RESERVED_WORDS,
    VALUE_KINDS,
    atom_split,
    generate_value,
    value_atoms,
    value_split,
)
from training.data.synthetic_vocab import FACT_TYPES
from training.stages.data_config import DataSource, load_sources

_WORDS = re.compile(r"[\w-]+")


def _words(text: str) -> set[str]:
    """Lower-cased words of ``text`` (as `recall_hit` sees them: a hyphen joins words), and the parts of
    hyphenated words as the generator builds them (`value_atoms`: passphrase parts; a code stays whole)."""
    out: set[str] = set()
    for word in _WORDS.findall(text.lower()):
        out.add(word)
        out.update(value_atoms(word))
    return out


def _training_configs(seed: int) -> list[SyntheticDialogueConfig]:
    return [SyntheticDialogueConfig(num_episodes=800, style=style, distance=BENCHMARK_DISTANCES, seed=seed,
                                    num_facts=(1, 4))
            for style in ("long_range", "cumulative")]


def test_eval_values_never_occur_in_training_data():
    train_words: set[str] = set()
    for config in _training_configs(seed=3):
        for episode in generate_episodes(config):
            for turn in episode.turns:
                train_words |= _words(f"{turn.query} {turn.answer}")
        for record in synthetic_records(config, "text"):
            train_words |= _words(record.query + " " + record.answer)
    eval_values: set[str] = set()
    for style in ("long_range", "cumulative"):
        config = SyntheticDialogueConfig(num_episodes=800, style=style, split="eval", distance=BENCHMARK_DISTANCES,
                                         seed=1234)
        for episode in generate_episodes(config):
            eval_values |= {str(value) for _, value, _ in episode.metadata["facts"]}
    assert len(eval_values) > 1500  # an open vocabulary, not a closed list
    leaked = [v for v in eval_values if _words(v) & train_words]
    assert not leaked, leaked[:10]
    # the partition itself: every value is made of atoms of its own split only
    assert all(value_split(v) == "eval" for v in eval_values)


@pytest.mark.parametrize("kind", sorted(VALUE_KINDS))
@pytest.mark.parametrize("split", ["train", "eval"])
def test_values_are_open_and_belong_to_their_split(kind, split):
    import random

    rng = random.Random(f"{kind}:{split}")
    values = [generate_value(kind, rng, split) for _ in range(300)]
    assert len(set(values)) > 250, values[:20]  # practically never repeats
    for value in values:
        atoms = value_atoms(value)
        assert atoms and all(atom_split(a) == split for a in atoms), value
        assert not {a.lower() for a in atoms} & RESERVED_WORDS, value


def test_train_values_are_train_and_distinct_within_an_episode():
    for config in _training_configs(seed=9):
        for episode in generate_episodes(config)[:300]:
            values = [str(v).lower() for _, v, _ in episode.metadata["facts"]]
            assert len(values) == len(set(values))
            assert all(value_split(v) == "train" for v in values)


def _question_owner() -> dict[str, str]:
    return {q: f.key for f in FACT_TYPES for q in f.questions}


def test_every_question_follows_its_statement_in_the_episode():
    for config in _training_configs(seed=5):
        for episode in generate_episodes(config):
            meta = episode.metadata
            turns = episode.turns
            facts = {key: (value, turn) for key, value, turn in meta["facts"]}
            value, stated_at = facts[meta["fact_key"]]
            assert value == meta["fact_value"]
            assert meta["question_turn"] == len(turns) - 1
            assert meta["question_turn"] - stated_at - 1 == meta["distance"]
            assert recall_hit(turns[stated_at].query, value)
            assert not any(recall_hit(t.query + " " + t.answer, value) for t in turns[:stated_at])
            question = turns[-1]
            assert not recall_hit(question.query, value) and recall_hit(question.answer, value)
            # no other turn asks about a fact
            assert not [t for t in turns[:-1] if t.query in _question_owner()]


@pytest.mark.parametrize("kind", ["text", "interaction"])
def test_single_sequence_records_never_hold_a_question_without_its_statement(kind):
    owner = _question_owner()
    source = DataSource(kind="synthetic", synthetic={"num_episodes": 400, "distance": [0, 1, 2, 4], "seed": 2})
    asked = 0
    records = load_sources([source], kind)
    episodes = generate_episodes(source.synthetic_config())
    values = {}
    for episode in episodes:
        for key, value, _ in episode.metadata["facts"]:
            values.setdefault(key, set()).add(value)
    for record in records:
        text = record.text if kind == "text" else f"{record.query} {record.answer}"
        for question, key in owner.items():
            at = text.find(question)
            if at < 0:
                continue
            asked += 1
            before, after = text[:at], text[at + len(question):]
            answered = [v for v in values[key] if recall_hit(after, v)]
            assert answered, text
            assert all(recall_hit(before, v) for v in answered), text
    assert asked >= 400


def test_in_context_interactions_merge_the_statements_into_the_question():
    episode = generate_episode(SyntheticDialogueConfig(distance=2, num_facts=3, seed=4), 0)
    records = in_context_interactions(episode)
    assert len(records) == len(episode.turns)
    final = records[episode.metadata["question_turn"]]
    assert final.query.endswith(episode.turns[-1].query)
    for _, value, _ in episode.metadata["facts"]:
        assert recall_hit(final.query, value)


@pytest.mark.parametrize("style", ["long_range", "cumulative"])
def test_distractors_share_the_group(style):
    config = SyntheticDialogueConfig(num_episodes=200, style=style, distance=(1, 4, 8), num_facts=(2, 4))
    for episode in generate_episodes(config):
        facts = episode.metadata["facts"]
        assert 2 <= len(facts) <= 4
        keys = [key for key, _, _ in facts]
        assert len(set(keys)) == len(keys)
        assert len({fact_type(key).group for key in keys}) == 1
        if style == "cumulative":
            value = episode.metadata["fact_value"]
            stated = {turn for _, _, turn in facts}
            middle = [t for i, t in enumerate(episode.turns[:-1]) if i not in stated]
            assert all(recall_hit(t.query, value) for t in middle)


@pytest.mark.parametrize("style", ["long_range", "cumulative"])
def test_deterministic_per_seed_and_seeds_differ(style):
    config = SyntheticDialogueConfig(num_episodes=50, style=style, seed=7)
    assert generate_episodes(config) == generate_episodes(config)
    assert generate_episodes(SyntheticDialogueConfig(num_episodes=50, style=style, seed=8)) != generate_episodes(config)
    longer = generate_episodes(SyntheticDialogueConfig(num_episodes=60, style=style, seed=7))
    assert longer[:50] == generate_episodes(config)


def test_distance_cycle_lengths_and_groups():
    eps = generate_episodes(SyntheticDialogueConfig(num_episodes=10, distance=BENCHMARK_DISTANCES, num_facts=1))
    assert [e.metadata["distance"] for e in eps] == [1, 2, 4, 8, 16, 1, 2, 4, 8, 16]
    assert all(len(e.turns) == e.metadata["distance"] + 2 for e in eps)
    assert generate_episode(SyntheticDialogueConfig(num_turns=3), 0).metadata["distance"] == 3
    for e in generate_episodes(SyntheticDialogueConfig(num_episodes=50, distance=(0, 1, 16), num_facts=4)):
        k = e.metadata["distance"]
        assert len(e.turns) == k + 2 and e.metadata["facts"][0][0] == e.metadata["fact_key"]  # target first
        assert len(e.metadata["facts"]) == min(4, k + 1)  # as many distractors as intermediate turns hold
    led = generate_episodes(SyntheticDialogueConfig(num_episodes=60, distance=(0, 2, 16), num_facts=4, max_lead=1))
    assert all(len(e.turns) <= e.metadata["distance"] + 3 for e in led)
    assert any(e.metadata["facts"][0][0] != e.metadata["fact_key"] for e in led)  # not always stated first
    only = generate_episodes(SyntheticDialogueConfig(num_episodes=30, groups=("pet",)))
    assert {fact_type(e.metadata["fact_key"]).group for e in only} == {"pet"}
    assert set(GROUPS) == {f.group for f in FACT_TYPES}


def test_bad_config_names_field():
    with pytest.raises(ValueError, match="style"):
        SyntheticDialogueConfig(style="random")
    with pytest.raises(ValueError, match="split"):
        SyntheticDialogueConfig(split="test")
    with pytest.raises(ValueError, match="distance"):
        SyntheticDialogueConfig(distance=-1)
    with pytest.raises(ValueError, match="num_facts"):
        SyntheticDialogueConfig(num_facts=(3, 2))
    with pytest.raises(ValueError, match="num_facts"):
        SyntheticDialogueConfig(num_facts=9)
    with pytest.raises(ValueError, match="groups"):
        SyntheticDialogueConfig(groups=("colours",))
    with pytest.raises(ValueError, match="kind"):
        generate_value("colour", None, "train")


def test_in_context_form_is_one_interaction_with_its_statements():
    config = SyntheticDialogueConfig(num_episodes=50, distance=(0, 1, 4), num_facts=(1, 3), form="in_context")
    dialogues = generate_episodes(SyntheticDialogueConfig(num_episodes=50, distance=(0, 1, 4), num_facts=(1, 3)))
    for episode, dialogue in zip(generate_episodes(config), dialogues, strict=True):
        assert len(episode.turns) == 1 and episode.metadata["question_turn"] == 0
        assert episode.query.endswith(dialogue.turns[-1].query) and episode.answer == dialogue.turns[-1].answer
        assert all(recall_hit(episode.query, value) for _, value, _ in episode.metadata["facts"])
    assert synthetic_records(config, "interaction") == [e.turns[0] for e in generate_episodes(config)]
    with pytest.raises(ValueError, match="form"):
        SyntheticDialogueConfig(form="chat")


def test_a_sentence_that_starts_with_the_value_keeps_its_case():
    # "kaipel-laiga." is copied as stated: capitalising it would add a case change to the copy
    from training.data.synthetic import _fill

    assert _fill("{v}, noted.", "kaipel-laiga") == "kaipel-laiga, noted."
    assert _fill("my code is {v}.", "kaipel-laiga") == "My code is kaipel-laiga."


@pytest.mark.parametrize("style", ["long_range", "cumulative"])
def test_chained_episodes_ask_each_fact_after_its_statement_and_after_the_previous_answer(style):
    """``chain``: segments one after another, each with its own group; every question follows its statement and
    the previous segment's question, and the last one is the episode's fact_key / fact_value / question_turn."""
    owner = _question_owner()
    config = SyntheticDialogueConfig(num_episodes=300, distance=BENCHMARK_DISTANCES, chain=3, style=style, seed=9,
                                     max_lead=1)
    for episode in generate_episodes(config):
        meta, turns = episode.metadata, episode.turns
        questions = meta["questions"]
        assert len(questions) == 3 and questions[-1] == [meta["fact_key"], meta["fact_value"], meta["question_turn"]]
        assert meta["question_turn"] == len(turns) - 1
        groups = [fact_type(key).group for key, _, _ in questions]
        assert len(set(groups)) == 3  # no fact type stated twice with two values
        facts = {key: (value, turn) for key, value, turn in meta["facts"]}
        previous = -1
        for key, value, turn in questions:
            assert turns[turn].query in owner and owner[turns[turn].query] == key
            stated_value, stated_at = facts[key]
            assert stated_value == value and previous < stated_at < turn
            assert turn - stated_at - 1 == meta["distance"]
            assert recall_hit(turns[turn].answer, value) and not recall_hit(turns[turn].query, value)
            previous = turn
        asked = {turn for _, _, turn in questions}
        assert not [t for i, t in enumerate(turns) if i not in asked and t.query in owner]


def test_chain_one_is_the_episode_of_before_and_a_chain_starts_with_it():
    one = generate_episode(SyntheticDialogueConfig(distance=2, split="eval", seed=1234), 7)
    two = generate_episode(SyntheticDialogueConfig(distance=2, split="eval", seed=1234, chain=2), 7)
    assert "questions" not in one.metadata
    n = len(one.turns)
    assert two.turns[:n] == one.turns and two.metadata["questions"][0][:2] == [one.metadata["fact_key"],
                                                                               one.metadata["fact_value"]]
    merged = in_context_interactions(two)
    for _key, value, turn in two.metadata["questions"]:  # every question carries its statement in its query
        assert recall_hit(merged[turn].query, value) and recall_hit(merged[turn].answer, value)
    with pytest.raises(ValueError, match="chain must be >= 1"):
        SyntheticDialogueConfig(chain=0)

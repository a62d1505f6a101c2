"""Packaged corpora adapters (offline)."""

from __future__ import annotations

import pytest

from training.data.adapters import chatterbot_interactions, chitchat_episodes, chitchat_interactions
from training.data.records import EpisodeRecord, InteractionRecord


def test_chitchat_episodes():
    episodes = chitchat_episodes(max_turns=8, min_turns=2)
    assert len(episodes) >= 1000
    assert all(isinstance(e, EpisodeRecord) and 2 <= len(e.turns) <= 8 for e in episodes)
    assert all(t.query.strip() and t.answer.strip() for e in episodes[:200] for t in e.turns)
    assert chitchat_episodes(limit=5) == episodes[:5]
    assert all(len(e.turns) <= 3 for e in chitchat_episodes(max_turns=3, limit=50))


def test_chitchat_and_chatterbot_interactions():
    pairs = chitchat_interactions(limit=100)
    assert len(pairs) == 100 and all(isinstance(p, InteractionRecord) for p in pairs)
    bot = chatterbot_interactions()
    assert len(bot) > 1000
    assert InteractionRecord("Hello", "Hi") in chatterbot_interactions(categories=["greetings"])



def test_chitchat_held_out_split_is_disjoint_from_training():
    """No training read of chitchat, whatever its limit, sees a held-out (eval) conversation."""
    from training.data.adapters import CHITCHAT_HELD_OUT

    train_ids = {e.metadata["conversation_id"] for e in chitchat_episodes(limit=10**6)}
    held_out_ids = {e.metadata["conversation_id"] for e in chitchat_episodes(split="eval")}
    assert 0 < len(held_out_ids) <= CHITCHAT_HELD_OUT
    assert not train_ids & held_out_ids
    train_pairs, held_out_pairs = chitchat_interactions(), chitchat_interactions(split="eval")
    everything = chitchat_interactions(limit=10**6) + held_out_pairs
    assert len(train_pairs) + len(held_out_pairs) == len(everything) and held_out_pairs[-1] == everything[-1]


def test_chitchat_unknown_split_names_the_field():
    with pytest.raises(ValueError, match="split"):
        chitchat_episodes(split="test")


def test_chitchat_source_reads_the_train_split_unless_asked():
    """The stateless baseline's chitchat source (limit 50,000 episodes, more than the corpus) once read the
    held-out conversations the benchmark scores; a source reads the train split unless it asks for "eval"."""
    from training.config import ConfigError
    from training.stages.data_config import DataSource, load_sources

    held_out_ids = {e.metadata["conversation_id"] for e in chitchat_episodes(split="eval")}
    wide = load_sources([DataSource(kind="chitchat", limit=50000)], "episode")
    assert wide and not {e.metadata["conversation_id"] for e in wide} & held_out_ids
    asked = load_sources([DataSource(kind="chitchat", split="eval")], "episode")
    assert {e.metadata["conversation_id"] for e in asked} == held_out_ids
    with pytest.raises(ConfigError, match="'split'"):
        DataSource(kind="chitchat", split="validation")

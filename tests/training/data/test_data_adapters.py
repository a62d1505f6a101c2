"""Packaged corpora adapters (offline)."""

from __future__ import annotations

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

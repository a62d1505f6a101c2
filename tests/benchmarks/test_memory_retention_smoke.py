"""Smoke test of `benchmarks/memory_retention.py` on an untrained tiny RxT and a tiny stateless DecoderLM."""

from __future__ import annotations

import json

import pytest
import torch

from rxt.classic import DecoderLM
from rxt.config import RxTConfig, TransformerConfig
from rxt.model import RxT
from rxt.tokenizer import RxTokenizer

DISTANCES = ["1", "2", "4", "8", "16"]


def test_memory_retention_smoke(tmp_path, monkeypatch, load_script):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    torch.manual_seed(0)
    tokenizer = RxTokenizer.default()
    rxt_dir = tmp_path / "rxt"
    RxT(RxTConfig.preset("tiny", vocab_size=tokenizer.vocab_size)).save_pretrained(rxt_dir)
    tokenizer.save_pretrained(rxt_dir)
    base_dir = tmp_path / "baseline"
    DecoderLM(TransformerConfig(vocab_size=tokenizer.vocab_size, dim=32, num_layers=2, num_heads=4, max_seq_len=96,
                                ffn_hidden_dim=64)).save_pretrained(base_dir)
    out = tmp_path / "results" / "memory_retention.json"

    code = load_script("benchmarks/memory_retention.py").main([
        "--rxt", f"stage4={rxt_dir}", "--baseline", str(base_dir), "--episodes-per-k", "2", "--chitchat", "2",
        "--max-new-tokens", "6", "--device", "cpu", "--out", str(out),
    ])

    assert code == 0
    doc = json.loads(out.read_text())
    assert doc["benchmark"] == "memory_retention"
    assert doc["device"].startswith("cpu") and doc["versions"]["torch"] == torch.__version__
    assert "memory_retention.py" in doc["command"]
    systems = doc["systems"]
    assert set(systems) == {"stage4", "stage4/memory_reset", "baseline", "baseline/no_history"}
    assert systems["stage4/memory_reset"]["ablation_of"] == "stage4"
    assert systems["stage4/memory_reset"]["memory_reset_every_turn"] is True
    assert systems["baseline"]["reads_history"] is True
    for result in systems.values():
        assert list(result["recall"]) == DISTANCES
        assert all(0.0 <= v <= 1.0 for v in result["recall"].values())
        assert all(0.0 <= v <= 10.0 for v in result["reward"].values())
        assert result["episodes_per_k"] == dict.fromkeys(DISTANCES, 2)
        for k, recall in result["recall"].items():  # the misses listed are the episodes not recalled
            misses = result["misses"].get(k, [])
            assert len(misses) == round((1.0 - recall) * 2) and not any(m["hit"] for m in misses)
        after = result["after_a_question"]
        assert list(after["recall"]) == DISTANCES and all(0.0 <= v <= 1.0 for v in after["recall"].values())
        unseen = result["unseen_phrasing"]
        assert list(unseen["recall"]) == DISTANCES and len(unseen["phrasings"]) == 2
        assert all(0.0 <= v <= 1.0 for v in unseen["recall"].values())
        chat = result["chitchat"]
        assert chat["conversations"] == 2 and chat["answer_tokens"] > 0
        assert chat["answer_ppl"] > 1.0 and 0.0 <= chat["answer_acc"] <= 1.0
    # an untrained model scores the same answer tokens whether or not it reads the history / memory
    assert systems["stage4"]["chitchat"]["answer_tokens"] == systems["stage4/memory_reset"]["chitchat"]["answer_tokens"]
    png = out.with_suffix(".png")
    assert png.is_file() and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_unseen_phrasings_are_never_generated(load_script):
    from training.data.synthetic import SyntheticDialogueConfig, generate_episodes
    from training.data.synthetic_vocab import FACT_TYPES

    bench = load_script("benchmarks/memory_retention.py")
    stems = [p.split("{subject}")[0] for p in bench.UNSEEN_PHRASINGS]
    templates = [q for f in FACT_TYPES for q in f.questions]
    assert not [q for q in templates for stem in stems if stem.strip() and stem.strip() in q]
    episodes = generate_episodes(SyntheticDialogueConfig(num_episodes=40, distance=(1, 2), split="eval", seed=3))
    for i, episode in enumerate(episodes):
        changed = bench.unseen_phrasing(episode, i)
        assert changed.turns[:-1] == episode.turns[:-1] and changed.turns[-1].answer == episode.turns[-1].answer
        assert changed.turns[-1].query not in templates
        assert changed.turns[-1].query.startswith(stems[i % 2])
        first = episode.turns[bench.statement_turn(episode)]
        assert episode.metadata["fact_value"] in first.query


def test_merge_adds_the_systems_of_an_earlier_call(tmp_path, monkeypatch, load_script):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    torch.manual_seed(0)
    tokenizer = RxTokenizer.default()
    RxT(RxTConfig.preset("tiny", vocab_size=tokenizer.vocab_size)).save_pretrained(tmp_path / "rxt")
    DecoderLM(TransformerConfig(vocab_size=tokenizer.vocab_size, dim=32, num_layers=1, num_heads=4, max_seq_len=96,
                                ffn_hidden_dim=64)).save_pretrained(tmp_path / "lm")
    bench = load_script("benchmarks/memory_retention.py")
    common = ["--episodes-per-k", "1", "--chitchat", "0", "--max-new-tokens", "4", "--device", "cpu",
              "--distances", "1", "2"]
    first = tmp_path / "baseline.json"
    assert bench.main(["--baseline", f"base={tmp_path / 'lm'}", *common, "--out", str(first)]) == 0
    merged = tmp_path / "all.json"
    assert bench.main(["--rxt", f"smat={tmp_path / 'rxt'}", *common, "--merge", str(first), "--out", str(merged)]) == 0
    systems = json.loads(merged.read_text())["systems"]
    assert set(systems) == {"smat", "smat/memory_reset", "base", "base/no_history"}
    assert systems["base"]["merged_from"]["file"] == str(first)
    with pytest.raises(SystemExit, match="differ"):
        bench.main(["--rxt", str(tmp_path / "rxt"), *common[:-3], "--distances", "1", "--merge", str(first),
                    "--out", str(tmp_path / "x.json")])


def test_batched_answers_equal_one_episode_at_a_time(load_script):
    from training.data.synthetic import SyntheticDialogueConfig, generate_episodes

    bench = load_script("benchmarks/memory_retention.py")
    torch.manual_seed(1)
    tokenizer = RxTokenizer.default()
    model = RxT(RxTConfig.preset("tiny", vocab_size=tokenizer.vocab_size)).eval()
    episodes = generate_episodes(SyntheticDialogueConfig(num_episodes=6, distance=(0, 1, 3), seed=5))
    lm = DecoderLM(TransformerConfig(vocab_size=tokenizer.vocab_size, dim=32, num_layers=2, num_heads=4,
                                     max_seq_len=96, ffn_hidden_dim=64)).eval()
    systems = [bench.System("rxt", "rxt", "-", model, tokenizer, use_memory=flag) for flag in (True, False)]
    systems += [bench.System("lm", "stateless", "-", lm, tokenizer, use_history=flag) for flag in (True, False)]
    for system in systems:
        batched = system.answers(episodes, 6)
        single = []
        for episode in episodes:
            state = system.initial_state()
            for turn in episode.turns[:-1]:
                state = system.advance(state, turn)
            single.append(tokenizer.decode(system.answer(state, episode.turns[-1].query, 6)))
        assert batched == single

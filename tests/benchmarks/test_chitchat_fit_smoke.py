"""Smoke test of `benchmarks/chitchat_fit.py` on an untrained tiny RxT and a tiny stateless DecoderLM."""

from __future__ import annotations

import json

import pytest
import torch

from rxt.classic import DecoderLM
from rxt.config import RxTConfig, TransformerConfig
from rxt.model import RxT
from rxt.tokenizer import RxTokenizer


def test_chitchat_fit_scores_three_disjoint_splits(tmp_path, monkeypatch, load_script):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    torch.manual_seed(0)
    tokenizer = RxTokenizer.default()
    rxt_dir, base_dir = tmp_path / "rxt", tmp_path / "baseline"
    RxT(RxTConfig.preset("tiny", vocab_size=tokenizer.vocab_size)).save_pretrained(rxt_dir)
    tokenizer.save_pretrained(rxt_dir)
    DecoderLM(TransformerConfig(vocab_size=tokenizer.vocab_size, dim=32, num_layers=2, num_heads=4, max_seq_len=96,
                                ffn_hidden_dim=64)).save_pretrained(base_dir)
    out = tmp_path / "chitchat_fit.json"
    script = load_script("benchmarks/chitchat_fit.py")

    assert script.main(["--rxt", f"r={rxt_dir}", "--baseline", f"b={base_dir}", "--conversations", "2",
                        "--benchmark", "2", "--device", "cpu", "--out", str(out)]) == 0

    doc = json.loads(out.read_text())
    assert doc["benchmark"] == "chitchat_fit" and "chitchat_fit.py" in doc["command"]
    assert set(doc["systems"]) == {"r", "b"}  # no ablations: each model once
    for entry in doc["systems"].values():
        for split in ("train", "held_out", "benchmark"):
            assert entry[split]["conversations"] == 2 and entry[split]["answer_tokens"] > 0
            assert entry[split]["answer_ppl"] > 1
        assert entry["held_out_over_train_ppl"] == pytest.approx(entry["held_out"]["answer_ppl"]
                                                                 / entry["train"]["answer_ppl"])
    sets = script.splits(2, 2)  # the splits never share a conversation
    ids = {name: {e.metadata["conversation_id"] for e in episodes} for name, episodes in sets.items()}
    assert not ids["train"] & ids["held_out"] and not ids["held_out"] & ids["benchmark"]
    assert not ids["train"] & ids["benchmark"]


def test_chitchat_fit_names_the_bad_argument(load_script, capsys):
    script = load_script("benchmarks/chitchat_fit.py")
    with pytest.raises(SystemExit):
        script.main(["--rxt", "x", "--conversations", "0"])
    assert "--conversations (0)" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        script.main([])
    assert "at least one --rxt or --baseline" in capsys.readouterr().err

"""training.memory_diagnostics: gate values, read-attention entropy and write dependence, checked against
values known in closed form."""

from __future__ import annotations

import math

import pytest
import torch

from rxt.config import RxTConfig
from rxt.model import RxT
from rxt.tokenizer import RxTokenizer
from training.data.synthetic import SyntheticDialogueConfig, generate_episodes
from training.memory_diagnostics import diagnose


@pytest.fixture
def setup():
    torch.manual_seed(0)
    tokenizer = RxTokenizer.default()
    model = RxT(RxTConfig.preset("tiny", vocab_size=tokenizer.vocab_size))
    episodes = generate_episodes(SyntheticDialogueConfig(num_episodes=6, distance=(1, 2), seed=0))
    return model, tokenizer, episodes


def test_untrained_gates_sit_at_their_initial_value(setup):
    model, tokenizer, episodes = setup
    doc = diagnose(model, tokenizer, episodes)
    initial = 1 / (1 + math.exp(2.0))  # sigmoid(-2): the elementwise gate's weight starts at 0
    assert len(doc["gates"]) == model.config.num_layers
    for layer in doc["gates"]:
        assert layer["mean"] == pytest.approx(initial, abs=1e-4) and layer["std"] < 1e-4
    assert doc["read_entropy_max"] == pytest.approx(math.log(model.config.stm_slots), abs=1e-4)
    assert all(0.0 < e <= doc["read_entropy_max"] + 1e-4 for e in doc["read_entropy"])
    assert -1.0 <= doc["write_cosine"] <= 1.0 and doc["episodes"] == 6


def test_gate_and_entropy_follow_the_weights(setup):
    model, tokenizer, episodes = setup
    with torch.no_grad():
        for gate in model.memory_attention.gate:
            gate.bias.fill_(0.0)  # G = sigmoid(0) = 0.5 whatever the input
        for layer in model.decoder.layers:
            q_proj = layer.memory_cross_attn.q_proj
            q_proj.weight.zero_()  # all scores 0: uniform reads, entropy log(S)
            if q_proj.bias is not None:
                q_proj.bias.zero_()
    doc = diagnose(model, tokenizer, episodes)
    assert all(layer["mean"] == pytest.approx(0.5, abs=1e-4) for layer in doc["gates"])
    assert all(e == pytest.approx(math.log(model.config.stm_slots), abs=1e-3) for e in doc["read_entropy"])
    with pytest.raises(ValueError, match="two episodes"):
        diagnose(model, tokenizer, episodes[:1])


def test_benchmark_script_writes_json(tmp_path, load_script):
    import json

    torch.manual_seed(0)
    tokenizer = RxTokenizer.default()
    RxT(RxTConfig.preset("tiny", vocab_size=tokenizer.vocab_size)).save_pretrained(tmp_path / "m")
    out = tmp_path / "diag.json"
    assert load_script("benchmarks/memory_diagnostics.py").main(
        ["--rxt", f"before={tmp_path / 'm'}", "--episodes", "3", "--device", "cpu", "--out", str(out)]) == 0
    doc = json.loads(out.read_text())
    assert set(doc["models"]) == {"before"} and len(doc["models"]["before"]["gates"]) == 2

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from rxt.classic import DecoderLM, EncoderLM
from rxt.config import RxTConfig, TransformerConfig
from rxt.hub import CheckpointMismatchError
from rxt.model import RxT


def test_rxt_round_trip_gives_identical_outputs(tmp_path):
    torch.manual_seed(0)
    model = RxT(RxTConfig.preset("tiny", memory_attention_variant="self-interlayer", num_experts=2)).eval()
    model.save_pretrained(tmp_path)
    loaded = RxT.from_pretrained(tmp_path)
    assert loaded.config == model.config
    ids = torch.randint(0, 128, (2, 9))
    stm = model.initial_memory(2)
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids, stm).logits, model(ids, stm).logits, atol=0, rtol=0)
        torch.testing.assert_close(loaded.update_memory(stm, ids), model.update_memory(stm, ids), atol=0, rtol=0)
    # The shared embedding is stored once and re-linked: the loaded modules share it again.
    assert loaded.encoder.embedding.weight is loaded.decoder.embedding.weight is loaded.decoder.lm_head.weight
    assert not list(tmp_path.glob(".tmp-*"))  # nothing half-written left behind


@pytest.mark.parametrize("cls", [DecoderLM, EncoderLM])
def test_classic_round_trip(tmp_path, cls):
    model = cls(TransformerConfig.preset("tiny")).eval()
    model.save_pretrained(tmp_path)
    loaded = cls.from_pretrained(tmp_path)
    ids = torch.randint(0, 128, (1, 5))
    with torch.no_grad():
        a, b = model(ids), loaded(ids)
    torch.testing.assert_close(getattr(a, "logits", a), getattr(b, "logits", b), atol=0, rtol=0)


def test_missing_and_extra_keys_are_named(tmp_path):
    RxT(RxTConfig.preset("tiny")).save_pretrained(tmp_path)
    weights = tmp_path / "model.safetensors"
    tensors = load_file(weights)
    tensors.pop("memory_attention.gate.0.bias" if "memory_attention.gate.0.bias" in tensors else sorted(tensors)[-1])
    removed = sorted(set(load_file(weights)) - set(tensors))[0]
    tensors["decoder.unexpected.weight"] = torch.zeros(1)
    save_file(tensors, weights, metadata={"aliases": "{}"})
    with pytest.raises(CheckpointMismatchError) as info:
        RxT.from_pretrained(tmp_path)
    assert removed in str(info.value) and "decoder.unexpected.weight" in str(info.value)


def test_config_mismatch_names_shapes(tmp_path):
    RxT(RxTConfig.preset("tiny")).save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    config["stm_slots"] = 16
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointMismatchError, match=r"stm.initial: checkpoint \(2, 8, 32\) vs model \(2, 16, 32\)"):
        RxT.from_pretrained(tmp_path)


def test_unknown_config_field_and_wrong_model_type(tmp_path):
    RxT(RxTConfig.preset("tiny")).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="holds a RxT, not a DecoderLM"):
        DecoderLM.from_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    config["bogus"] = 1
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=r"unknown field\(s\) \['bogus'\]"):
        RxT.from_pretrained(tmp_path)


def test_offline_hub_id_fails_clearly(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(FileNotFoundError, match="could not fetch 'someone/nothing-here'"):
        RxT.from_pretrained("someone/nothing-here")

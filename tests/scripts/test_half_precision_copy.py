"""scripts/half_precision_copy.py: a bf16/fp16 copy of a save_pretrained directory that loads back as fp32 and
keeps the files beside the weights."""

from __future__ import annotations

import pytest
import torch

from rxt.classic import DecoderLM
from rxt.config import RxTConfig, TransformerConfig
from rxt.model import RxT


@pytest.mark.parametrize("dtype", ["bf16", "fp16"])
def test_copy_is_half_the_size_and_loads_close(tmp_path, dtype, load_script):
    script = load_script("scripts/half_precision_copy.py")
    torch.manual_seed(0)
    model = RxT(RxTConfig.preset("tiny", vocab_size=300))
    model.save_pretrained(tmp_path / "src")
    (tmp_path / "src" / "tokenizer.json").write_text("{}")
    (tmp_path / "src" / "critic.pt").write_bytes(b"training-only")
    assert script.main([str(tmp_path / "src"), str(tmp_path / "dst"), "--dtype", dtype]) == 0
    dst = tmp_path / "dst"
    assert (dst / "tokenizer.json").read_text() == "{}" and not (dst / "critic.pt").exists()
    src_bytes = (tmp_path / "src" / "model.safetensors").stat().st_size
    assert (dst / "model.safetensors").stat().st_size < 0.6 * src_bytes
    loaded = RxT.from_pretrained(dst, load_tokenizer=False)  # the tokenizer.json above is a stand-in
    tol = 1e-2 if dtype == "bf16" else 1e-3
    for (name, a), b in zip(model.state_dict().items(), loaded.state_dict().values()):
        assert b.dtype == a.dtype, name  # loads back in the model's own dtype
        torch.testing.assert_close(b, a, rtol=tol, atol=tol)


def test_decoder_lm_and_bad_input(tmp_path, capsys, load_script):
    script = load_script("scripts/half_precision_copy.py")
    DecoderLM(TransformerConfig(vocab_size=64, dim=32, num_layers=1, num_heads=4, ffn_hidden_dim=64)).save_pretrained(
        tmp_path / "lm")
    assert script.main([str(tmp_path / "lm"), str(tmp_path / "lm16")]) == 0
    DecoderLM.from_pretrained(tmp_path / "lm16")
    assert script.main([str(tmp_path / "nothing"), str(tmp_path / "out")]) == 2
    assert "config.json" in capsys.readouterr().err

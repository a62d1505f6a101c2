"""Model/tokenizer loading for the stages, and the MLM head's save/load."""

import pytest
import torch

from rxt.config import RxTConfig
from rxt.model import RxT
from rxt.tokenizer import RxTokenizer
from training.config import ConfigError
from training.heads import MLM_HEAD_FILE, MLMHead
from training.model_loading import load_model_and_tokenizer, mlm_head_for

VOCAB = RxTokenizer.default().vocab_size


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("model") / "m"
    model = RxT(RxTConfig.preset("tiny", vocab_size=VOCAB))
    model.save_pretrained(path)
    return path, model


def test_preset_takes_vocab_from_tokenizer():
    model, tok = load_model_and_tokenizer("tiny", None, {})
    assert model.config.vocab_size == tok.vocab_size == VOCAB
    assert model.config.dim == RxTConfig.preset("tiny").dim
    model, _ = load_model_and_tokenizer("tiny", None, {"stm_slots": 4})
    assert model.config.stm_slots == 4


def test_saved_model_round_trip(saved):
    path, original = saved
    model, tok = load_model_and_tokenizer(str(path), None, {})
    assert tok.vocab_size == VOCAB
    for (name, a), (_, b) in zip(original.state_dict().items(), model.state_dict().items()):
        assert torch.equal(a, b), name


def test_saved_model_uses_its_own_tokenizer_json(saved, tmp_path):
    path, _ = saved
    RxTokenizer.default().save_pretrained(path)
    try:
        _, tok = load_model_and_tokenizer(str(path), None, {})
        assert tok.vocab_size == VOCAB
    finally:
        (path / "tokenizer.json").unlink()


def test_vocab_mismatch_names_both_sizes_and_key(tmp_path):
    small = tmp_path / "small"
    RxT(RxTConfig.preset("tiny")).save_pretrained(small)  # vocab 128 < the default tokenizer's 8192
    with pytest.raises(ConfigError) as info:
        load_model_and_tokenizer(str(small), None, {})
    msg = str(info.value)
    assert "'tokenizer'" in msg and "128" in msg and str(VOCAB) in msg


def test_missing_paths_name_key_and_path(tmp_path):
    missing = tmp_path / "nope"
    with pytest.raises(ConfigError, match="'model'") as info:
        load_model_and_tokenizer(str(missing), None, {})
    assert "nope" in str(info.value)
    with pytest.raises(ConfigError, match="'tokenizer'.*tok_missing"):
        load_model_and_tokenizer("tiny", str(tmp_path / "tok_missing"), {})
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ConfigError, match="'model'.*config.json"):
        load_model_and_tokenizer(str(empty), None, {})


def test_bad_overrides_name_the_key():
    with pytest.raises(ConfigError, match="model_overrides.*not_a_field"):
        load_model_and_tokenizer("tiny", None, {"not_a_field": 1})
    with pytest.raises(ConfigError, match="model_overrides"):
        load_model_and_tokenizer("tiny", None, {"stm_slots": 0})


@pytest.mark.parametrize("tied", [True, False])
def test_mlm_head_save_load(tmp_path, tied):
    torch.manual_seed(0)
    model = RxT(RxTConfig.preset("tiny"))
    head = MLMHead(32, 128, tie_to=model.embedding if tied else None)
    with torch.no_grad():
        head.norm.weight.uniform_(0.5, 1.5)
    head.save(tmp_path)
    assert (tmp_path / MLM_HEAD_FILE).is_file()
    loaded = MLMHead.load(tmp_path, embedding=model.embedding)
    assert loaded.tied == tied
    if tied:
        assert loaded.proj.weight is model.embedding.weight
    x = torch.randn(2, 5, 32)
    torch.testing.assert_close(loaded(x), head(x))
    assert mlm_head_for(model, tmp_path, tie=not tied).tied == tied  # a saved head wins over `tie`


def test_tied_head_needs_embedding(tmp_path):
    model = RxT(RxTConfig.preset("tiny"))
    MLMHead(32, 128, tie_to=model.embedding).save(tmp_path)
    with pytest.raises(ValueError, match="embedding"):
        MLMHead.load(tmp_path)

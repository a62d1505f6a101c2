"""Models on the Hugging Face surface: ModelHubMixin, the keyword arguments users pass, a push to a recording Hub
and a load back by repo id from a local Hub cache (offline), the model card and the atomic save."""

from __future__ import annotations

import json
import socket
from importlib.resources import files

import huggingface_hub
import pytest
import torch
from hub_fixtures import RecordingHubApi, add_snapshot
from huggingface_hub import ModelHubMixin

from rxt.classic import DecoderLM, EncoderLM
from rxt.config import RxTConfig, TransformerConfig
from rxt.model import RxT
from rxt.resolve import ModelNotFoundError
from rxt.tokenizer import RxTokenizer
from training.tokenizer_training import TokenizerTrainingConfig, train_tokenizer

CORPUS = ["hello there, how are you?", "I am fine, thank you very much.", "what is your favourite food?"] * 5


@pytest.fixture(scope="module")
def tok() -> RxTokenizer:
    # 300 ids: not the packaged tokenizer (8192), so loading the wrong one would show
    return train_tokenizer(CORPUS, TokenizerTrainingConfig(kind="byte_bpe", vocab_size=300, min_frequency=1))


def _model(vocab: int = 300, seed: int = 0) -> RxT:
    torch.manual_seed(seed)
    return RxT(RxTConfig.preset("tiny", vocab_size=vocab)).eval()


def _logits(model: RxT, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(ids.to(next(model.parameters()).device), model.initial_memory(ids.shape[0])).logits.float()


@pytest.fixture
def hub(monkeypatch):
    RecordingHubApi.reset()
    monkeypatch.setattr(huggingface_hub, "HfApi", RecordingHubApi)
    return RecordingHubApi


def test_models_are_model_hub_mixins_and_config_names_architecture_and_dtype(tmp_path):
    for model in (_model(), DecoderLM(TransformerConfig.preset("tiny")), EncoderLM(TransformerConfig.preset("tiny"))):
        assert isinstance(model, ModelHubMixin)
    model = _model()
    model.save_pretrained(tmp_path / "fp32")
    config = json.loads((tmp_path / "fp32" / "config.json").read_text())
    assert config["architectures"] == ["RxT"] and config["torch_dtype"] == "float32"
    model.save_pretrained(tmp_path / "bf16", torch_dtype=torch.bfloat16)
    assert json.loads((tmp_path / "bf16" / "config.json").read_text())["torch_dtype"] == "bfloat16"
    packaged = json.loads((files("rxt") / "assets" / "default_model" / "config.json").read_text())
    assert packaged["torch_dtype"] == "bfloat16" and packaged["architectures"] == ["RxT"]


def test_push_records_files_and_loads_back_by_repo_id_from_the_cache(tmp_path, tok, hub, monkeypatch):
    run = tmp_path / "runs" / "4_smat"
    model = _model()
    model.save_pretrained(run / "final", tokenizer=tok)
    metrics = {"train": [{"step": 30, "loss": 1.25, "answer_acc": 0.5}],
               "eval": [{"step": 30, "val_loss": 1.5, "val_answer_acc": 0.4375}], "step": 30, "tokens_seen": 960,
               "stop_reason": None}
    (run / "metrics.json").write_text(json.dumps(metrics))
    loaded_local = RxT.from_pretrained(run / "final")
    assert loaded_local.tokenizer.to_str() == tok.to_str()

    url = loaded_local.push_to_hub("org/tiny-rxt", commit_message="first upload", private=True)
    assert url.startswith("https://hub.invalid/org/tiny-rxt")
    upload = hub.uploads[-1]
    assert upload["commit_message"] == "first upload" and hub.repos["org/tiny-rxt"]["private"] is True
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
            "special_tokens_map.json", "README.md"} <= set(upload["files"])
    files = hub.repos["org/tiny-rxt"]["branches"]["main"]
    card = files["README.md"].decode()
    assert "license: apache-2.0" in card and "not affiliated with Reactive AI" in card
    assert "val_answer_acc | 0.4375" in card and "4_smat" in card  # the stage and its metrics from metrics.json
    assert f"{model.num_parameters():,} parameters" in card

    cache = tmp_path / "hub-cache"
    add_snapshot(cache, "org/tiny-rxt", files)
    monkeypatch.chdir(tmp_path)
    loaded = RxT.from_pretrained("org/tiny-rxt", cache_dir=cache)
    ids = torch.randint(0, 300, (2, 7))
    torch.testing.assert_close(_logits(loaded, ids), _logits(model, ids), atol=0, rtol=0)
    assert loaded.tokenizer is not None and loaded.tokenizer.to_str() == tok.to_str()  # its own, not the default
    assert RxTokenizer.from_pretrained("org/tiny-rxt", cache_dir=cache).to_str() == tok.to_str()


def test_push_without_a_tokenizer_is_an_error_and_save_can_push(tmp_path, tok, hub):
    with pytest.raises(ValueError, match="has no tokenizer"):
        _model().push_to_hub("org/x")
    _model().save_pretrained(tmp_path / "m", tokenizer=tok, push_to_hub=True, repo_id="org/saved",
                             commit_message="from save_pretrained", private=False)
    assert hub.uploads[-1]["repo_id"] == "org/saved" and hub.uploads[-1]["commit_message"] == "from save_pretrained"
    assert "tokenizer.json" in hub.uploads[-1]["files"] and not (tmp_path / "m" / "README.md").exists()


def test_revision_picks_a_snapshot_and_token_is_accepted(tmp_path, tok):
    cache = tmp_path / "cache"
    first, second = _model(seed=0), _model(seed=1)
    first.save_pretrained(tmp_path / "a", tokenizer=tok)
    second.save_pretrained(tmp_path / "b", tokenizer=tok)
    commit_a = add_snapshot(cache, "org/m", tmp_path / "a", ref="main")
    commit_b = add_snapshot(cache, "org/m", tmp_path / "b", ref="v2")
    ids = torch.randint(0, 300, (1, 5))
    main = RxT.from_pretrained("org/m", cache_dir=cache, token="hf_not_used_offline")
    by_hash = RxT.from_pretrained("org/m", cache_dir=cache, revision=commit_b)
    by_tag = RxT.from_pretrained("org/m", cache_dir=cache, revision="v2")
    pinned_a = RxT.from_pretrained("org/m", cache_dir=cache, revision=commit_a)
    torch.testing.assert_close(_logits(main, ids), _logits(first, ids), atol=0, rtol=0)
    torch.testing.assert_close(_logits(pinned_a, ids), _logits(first, ids), atol=0, rtol=0)
    for model in (by_hash, by_tag):
        torch.testing.assert_close(_logits(model, ids), _logits(second, ids), atol=0, rtol=0)
    assert not torch.equal(_logits(first, ids), _logits(second, ids))
    with pytest.raises(ModelNotFoundError, match="at revision 'v3'"):
        RxT.from_pretrained("org/m", cache_dir=cache, revision="v3")


def test_local_files_only_never_touches_the_network(tmp_path, tok, monkeypatch):
    cache = tmp_path / "cache"
    _model().save_pretrained(tmp_path / "m", tokenizer=tok)
    add_snapshot(cache, "org/m", tmp_path / "m")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)  # online, as far as the Hub knows

    def no_network(*args, **kwargs):
        raise AssertionError("the network was touched")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(socket, "create_connection", no_network)
    model = RxT.from_pretrained("org/m", cache_dir=cache, local_files_only=True)
    assert model.tokenizer.vocab_size == 300
    with pytest.raises(ModelNotFoundError, match="could not fetch 'org/other'"):
        RxT.from_pretrained("org/other", cache_dir=cache, local_files_only=True)


@pytest.mark.parametrize("spec", [torch.bfloat16, "bfloat16", "bf16", "float16", "auto"])
def test_torch_dtype_changes_the_dtype(tmp_path, spec):
    model = _model()
    model.save_pretrained(tmp_path, torch_dtype=torch.bfloat16 if spec == "auto" else None)
    loaded = RxT.from_pretrained(tmp_path, torch_dtype=spec)
    expected = torch.float16 if spec == "float16" else torch.bfloat16
    assert {p.dtype for p in loaded.parameters()} == {expected}
    assert {p.dtype for p in RxT.from_pretrained(tmp_path).parameters()} == {torch.float32}  # default: float32
    with pytest.raises(ValueError, match="torch_dtype='int8' is not one of"):
        RxT.from_pretrained(tmp_path, torch_dtype="int8")


def test_device_map(tmp_path):
    _model().save_pretrained(tmp_path)
    for spec in (None, "cpu", torch.device("cpu")):
        assert next(RxT.from_pretrained(tmp_path, device_map=spec).parameters()).device.type == "cpu"
    with pytest.raises(ValueError, match="not supported: an RxT runs on one device"):
        RxT.from_pretrained(tmp_path, device_map={"": 0})
    with pytest.raises(ValueError, match="'mps' is not supported"):
        RxT.from_pretrained(tmp_path, device_map="mps")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="torch.cuda.is_available"):
            RxT.from_pretrained(tmp_path, device_map="cuda")
    with pytest.raises(TypeError, match="unexpected keyword argument"):
        RxT.from_pretrained(tmp_path, trust_remote_code=True)


def test_safe_serialization_false_writes_a_torch_file_and_loads_equal(tmp_path):
    model = _model()
    model.save_pretrained(tmp_path, safe_serialization=True)
    model.save_pretrained(tmp_path, safe_serialization=False)
    assert (tmp_path / "pytorch_model.bin").is_file() and not (tmp_path / "model.safetensors").exists()
    loaded = RxT.from_pretrained(tmp_path, force_download=True)  # force_download: accepted, a local dir has nothing to fetch
    ids = torch.randint(0, 300, (1, 6))
    torch.testing.assert_close(_logits(loaded, ids), _logits(model, ids), atol=0, rtol=0)
    assert loaded.encoder.embedding.weight is loaded.decoder.embedding.weight


def test_save_into_a_new_directory_is_one_rename(tmp_path, monkeypatch):
    import rxt.hub

    target = tmp_path / "out" / "model"
    calls = []
    real_rename = rxt.hub.os.rename
    monkeypatch.setattr(rxt.hub.os, "rename", lambda a, b: (calls.append((a, b)), real_rename(a, b)))
    _model().save_pretrained(target)
    assert len(calls) == 1 and calls[0][1] == target
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["model"]

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(rxt.hub, "save_file", broken)
    with pytest.raises(OSError, match="disk full"):
        _model().save_pretrained(tmp_path / "out" / "other")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["model"]  # nothing half-written left


def test_a_tokenizer_larger_than_the_model_is_an_error(tmp_path, tok):
    model = RxT(RxTConfig.preset("tiny", vocab_size=128))
    with pytest.raises(ValueError, match="the tokenizer has 300 ids but the model's vocab_size is 128"):
        model.save_pretrained(tmp_path, tokenizer=tok)
    model.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="300 ids but the model's vocab_size is 128"):
        RxT.from_pretrained(tmp_path)


def test_resolver_errors_say_not_a_directory_and_not_a_hub_id(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs").mkdir()
    (tmp_path / "weights.bin").write_bytes(b"")
    for value, why in (("runs/nosuch", "no such path"), ("./nosuch", "no such path"),
                       ("a/b/c", "no such path"), ("weights.bin", "it is a file")):
        with pytest.raises(ModelNotFoundError) as info:
            RxT.from_pretrained(value)
        message = str(info.value)
        assert f"'{value}' is not a directory ({why}) and not a Hub repo id" in message, message
        assert ("'runs/' is a local directory" in message) == (value == "runs/nosuch"), message


@pytest.mark.parametrize("cls", [DecoderLM, EncoderLM])
def test_classic_models_take_the_same_keywords(tmp_path, cls, tok, hub):
    model = cls(TransformerConfig.preset("tiny", vocab_size=300)).eval()
    model.save_pretrained(tmp_path / "m", tokenizer=tok)
    loaded = cls.from_pretrained(tmp_path / "m", torch_dtype="bfloat16", device_map="cpu")
    assert {p.dtype for p in loaded.parameters()} == {torch.bfloat16}
    assert loaded.tokenizer.vocab_size == 300
    loaded.push_to_hub("org/classic", commit_message="c")
    card = hub.repos["org/classic"]["branches"]["main"]["README.md"].decode()
    assert f"`{cls.__name__}`" in card and "No training metrics were found" in card

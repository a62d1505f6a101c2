"""Stage 1 (joint LM pre-training): the loss goes down, final/ loads, the decoder's memory path is detached,
and bad configs fail before training, naming the key."""

import json

import pytest
import torch
from torch_threads import one_thread

from rxt.config import RxTConfig
from rxt.model import RxT
from rxt.tokenizer import RxTokenizer
from training.config import ConfigError, load_config
from training.heads import MLMHead
from training.metrics import causal_lm_loss
from training.stages import STAGES, get_stage
from training.stages.joint_lm import JointLMConfig, JointLMModel, run_stage

DATA = [{"kind": "synthetic", "limit": 160, "synthetic": {"num_episodes": 40, "num_turns": 2, "seed": 3}}]



def joint_config(output_dir, **overrides):
    raw = {
        "train": {"max_steps": 30, "batch_size": 8, "warmup_steps": 2, "lr": 3e-3, "device": "cpu",
                  "output_dir": str(output_dir), "log_every": 1, "keep_last": 1, "seed": 0},
        "model": "tiny", "data": DATA, "max_len": 48, "val_fraction": 0.1,
    }
    raw.update(overrides)
    return raw


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("joint")
    with one_thread():
        final = run_stage(load_config(joint_config(out), JointLMConfig))
    return out, final


def test_loss_goes_down(trained):
    out, _ = trained
    history = json.loads((out / "metrics.json").read_text())
    losses = [e["loss"] for e in history["train"]]
    assert len(losses) == 30
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    assert last < first - 0.5, (first, last)
    mlm = [e["mlm_loss"] for e in history["train"]]
    assert sum(mlm[-5:]) < sum(mlm[:5])
    # decoder metrics are labelled as peeking
    assert "ar_acc_peek" in history["train"][-1] and "ar_acc" not in history["train"][-1]
    assert "val_ar_ppl_peek" in history["eval"][-1]


def test_final_dir_loads(trained):
    _, final = trained
    assert final.name == "final"
    model = RxT.from_pretrained(final)
    tok = RxTokenizer.from_pretrained(final)
    assert model.config.vocab_size == tok.vocab_size
    head = MLMHead.load(final, embedding=model.embedding)
    assert head.vocab_size == model.config.vocab_size


def test_decoder_memory_is_detached_and_noise_only_in_training():
    torch.manual_seed(0)
    rxt = RxT(RxTConfig.preset("tiny"))
    model = JointLMModel(rxt, MLMHead(32, 128, tie_to=rxt.embedding), encoder_noise_std=0.5)
    ids = torch.randint(10, 128, (2, 12))
    mask = torch.ones(2, 12, dtype=torch.bool)
    mask[1, 8:] = False
    logits, _ = model(ids, mask, ids)
    causal_lm_loss(logits, ids.masked_fill(~mask, -100)).backward()
    for name, p in rxt.encoder.layers.named_parameters():
        assert p.grad is None, f"decoder loss reached encoder parameter {name}"
    assert any(p.grad is not None for p in rxt.decoder.layers.parameters())
    model.eval()
    a, _ = model(ids, mask, ids)
    b, _ = model(ids, mask, ids)
    assert torch.equal(a, b)
    model.train()
    c, _ = model(ids, mask, ids)
    assert not torch.equal(a, c)


def test_peek_dropout_zeroes_whole_rows_or_documents_in_training_only():
    torch.manual_seed(0)
    rxt = RxT(RxTConfig.preset("tiny"))
    model = JointLMModel(rxt, MLMHead(32, 128, tie_to=rxt.embedding), peek_dropout=0.5)
    memory = torch.randn(2, 64, 12, 32) + 3.0  # (L, B, T, D), no exact zeros
    dropped = model.drop_peek(memory)
    zero_rows = (dropped == 0).all(dim=(0, 2, 3))
    assert 10 < int(zero_rows.sum()) < 54  # about half of 64 rows
    assert torch.equal(dropped[:, ~zero_rows], memory[:, ~zero_rows])  # the others untouched
    doc = torch.tensor([[0] * 5 + [1] * 4 + [2] * 2 + [-1]]).repeat(64, 1)  # packed: 3 documents and a pad
    dropped = model.drop_peek(memory, doc)
    zero = (dropped == 0).all(dim=(0, 3))  # (B, T)
    for d in (0, 1, 2):  # a document keeps or loses all its positions
        cols = zero[:, doc[0] == d]
        assert torch.equal(cols.all(dim=1), cols.any(dim=1))
    assert zero[:, :11].any() and not zero[:, :11].all()
    model.eval()
    assert torch.equal(model.drop_peek(memory, doc), memory)


def test_a_dropped_peek_carries_nothing_of_the_encoder_input():
    # with every document dropped, the decoder's logits do not depend on what the encoder read
    torch.manual_seed(0)
    rxt = RxT(RxTConfig.preset("tiny"))
    model = JointLMModel(rxt, MLMHead(32, 128, tie_to=rxt.embedding), peek_dropout=0.999999).train()
    ids = torch.randint(10, 128, (3, 12))
    mask = torch.ones(3, 12, dtype=torch.bool)
    a, _ = model(ids, mask, ids)
    b, _ = model(ids, mask, torch.randint(10, 128, (3, 12)))
    torch.testing.assert_close(a, b, rtol=0, atol=1e-6)
    model.peek_dropout = 0.0
    c, _ = model(ids, mask, torch.randint(10, 128, (3, 12)))
    assert not torch.allclose(a, c, atol=1e-3)  # without dropout the peek does reach the decoder


def test_registry():
    assert list(STAGES)[:2] == ["joint", "sft"]
    assert get_stage("joint").CONFIG_CLASS is JointLMConfig
    with pytest.raises(ValueError, match="known stages: joint, sft"):
        get_stage("nope")


@pytest.mark.parametrize(
    ("change", "key"),
    [
        ({"mlm_wieght": 1.0}, "mlm_wieght"),
        ({"max_len": "long"}, "max_len"),
        ({"train": {"lr": "fast"}}, "train.lr"),
        ({"data": [{"kind": "csv"}]}, "data[0].kind"),
        ({"data": [{"kind": "jsonl"}]}, "path"),
        ({"data": [{"kind": "synthetic", "synthetic": {"num_episode": 3}}]}, "synthetic.num_episode"),
        ({"encoder_noise_std": -1.0}, "encoder_noise_std"),
        ({"peek_dropout": 1.0}, "peek_dropout"),
    ],
)
def test_bad_config_names_the_key(tmp_path, change, key):
    with pytest.raises(ConfigError) as info:
        load_config(joint_config(tmp_path / "out", **change), JointLMConfig)
    assert key in str(info.value)


def test_bad_inputs_fail_before_training(tmp_path):
    out = tmp_path / "out"
    cases = [
        ({"data": [{"kind": "jsonl", "path": str(tmp_path / "missing.jsonl")}]}, "data[0].path"),
        ({"max_len": 500}, "max_len"),
        ({"tokenizer": str(tmp_path / "no_tokenizer")}, "tokenizer"),
        ({"model": str(tmp_path / "no_model")}, "model"),
    ]
    small = tmp_path / "small_model"
    RxT(RxTConfig.preset("tiny")).save_pretrained(small)  # vocab 128: smaller than the tokenizer
    cases.append(({"model": str(small)}, "tokenizer"))
    for change, key in cases:
        config = load_config(joint_config(out, **change), JointLMConfig)
        with pytest.raises(ConfigError) as info:
            run_stage(config)
        assert f"'{key}'" in str(info.value), str(info.value)
        assert not out.exists(), f"{key}: output written before the error"


def test_resume_continues_from_the_last_checkpoint(tmp_path):
    out = tmp_path / "resume"
    short = joint_config(out, val_fraction=0.0)
    short["train"] = {**short["train"], "max_steps": 3, "warmup_steps": 1}
    with one_thread():
        run_stage(load_config(short, JointLMConfig))
        longer = {**short, "train": {**short["train"], "max_steps": 5}}
        run_stage(load_config(longer, JointLMConfig), resume=True)
    history = json.loads((out / "metrics.json").read_text())
    assert history["step"] == 5
    assert [e["step"] for e in history["train"]] == [1, 2, 3, 4, 5]

"""Stage 2 (interaction SFT): starts from stage 1's final/, the loss goes down, answer-only labels, honest
(no-peek) answer metrics in evaluation, bad config fails before training."""

import json

import pytest
import torch
from torch_threads import one_thread

from rxt.model import RxT
from rxt.tokenizer import RxTokenizer
from training.config import ConfigError, load_config
from training.data.records import InteractionRecord
from training.heads import MLMHead
from training.stages.joint_lm import JointLMConfig
from training.stages.joint_lm import run_stage as run_joint
from training.stages.sft import MaskedInteractionDataset, SFTConfig, query_part, run_stage

TRAIN = {"batch_size": 8, "warmup_steps": 2, "lr": 3e-3, "device": "cpu", "log_every": 1, "keep_last": 1,
         "seed": 0}
DATA = [{"kind": "synthetic", "limit": 160, "synthetic": {"num_episodes": 40, "num_turns": 2, "seed": 5}}]



def sft_config(output_dir, model, **overrides):
    raw = {"train": {**TRAIN, "max_steps": 30, "output_dir": str(output_dir)}, "model": str(model), "data": DATA,
           "max_len": 48, "val_fraction": 0.1}
    raw.update(overrides)
    return raw


@pytest.fixture(scope="module")
def joint_final(tmp_path_factory):
    out = tmp_path_factory.mktemp("joint")
    cfg = {"train": {**TRAIN, "max_steps": 4, "output_dir": str(out)}, "model": "tiny", "data": DATA, "max_len": 48}
    with one_thread():
        return run_joint(load_config(cfg, JointLMConfig))


@pytest.fixture(scope="module")
def trained(tmp_path_factory, joint_final):
    out = tmp_path_factory.mktemp("sft")
    with one_thread():
        final = run_stage(load_config(sft_config(out, joint_final), SFTConfig))
    return out, final


def test_loss_goes_down_and_answer_metrics_are_reported(trained):
    out, _ = trained
    history = json.loads((out / "metrics.json").read_text())
    losses = [e["loss"] for e in history["train"]]
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    assert last < first - 0.5, (first, last)
    evaluation = history["eval"][-1]
    for key in ("val_answer_acc", "val_answer_ppl", "val_answer_loss", "val_answer_acc_peek", "val_mlm_acc"):
        assert key in evaluation
    assert 0.0 <= evaluation["val_answer_acc"] <= 1.0
    assert evaluation["val_answer_ppl"] > 1.0


def test_final_dir_loads_and_head_carried_over(trained, joint_final):
    _, final = trained
    model = RxT.from_pretrained(final)
    assert RxTokenizer.from_pretrained(final).vocab_size == model.config.vocab_size
    head = MLMHead.load(final, embedding=model.embedding)
    joint_head = MLMHead.load(joint_final, embedding=RxT.from_pretrained(joint_final).embedding)
    assert head.tied and not torch.equal(head.norm.weight, joint_head.norm.weight)  # trained further


def test_dataset_labels_answers_only_and_masks_whole_interaction():
    tok = RxTokenizer.default()
    ds = MaskedInteractionDataset([InteractionRecord("where do you live?", "in a small town by the sea")], tok,
                                  max_len=48, mask_prob=0.5, seed=0)
    item = ds[0]
    ids, labels = item["input_ids"], item["labels"]
    a_pos = int((ids == tok.answer_id).nonzero()[0])
    assert (labels[: a_pos + 1] == -100).all() and (labels[a_pos + 1 :] != -100).all()
    masked = item["mlm_labels"] != -100
    assert masked[: a_pos].any() or masked[a_pos:].any()
    assert torch.equal(item["mlm_labels"][masked], ids[masked])
    assert not masked[[0, 1, a_pos, len(ids) - 1]].any()  # specials are never MLM targets


def test_query_part_hides_the_answer():
    tok = RxTokenizer.default()
    ds = MaskedInteractionDataset([InteractionRecord("hi", "hello"), InteractionRecord("how are you", "fine")],
                                  tok, max_len=48)
    from training.data.datasets import collate_lm

    batch = collate_lm([ds[0], ds[1]], tok.pad_id)
    q = query_part(batch["input_ids"], batch["attention_mask"], tok.answer_id)
    for b in range(2):
        a_pos = int((batch["input_ids"][b] == tok.answer_id).nonzero()[0])
        assert q[b, : a_pos + 1].all() and not q[b, a_pos + 1 :].any()


def test_bad_config_fails_before_training(tmp_path, joint_final):
    with pytest.raises(ConfigError, match="'train.batch_size'"):
        load_config(sft_config(tmp_path / "o", joint_final, train={"batch_size": "8"}), SFTConfig)
    with pytest.raises(ConfigError, match="unknown config key.*'answer_only'"):
        load_config(sft_config(tmp_path / "o", joint_final, answer_only=True), SFTConfig)
    config = load_config(sft_config(tmp_path / "o", tmp_path / "missing_final"), SFTConfig)
    with pytest.raises(ConfigError, match="'model'.*missing_final"):
        run_stage(config)
    tiny_tok = tmp_path / "tok"
    tiny_tok.mkdir()
    (tiny_tok / "tokenizer.json").write_text("{}")
    config = load_config(sft_config(tmp_path / "o", joint_final, tokenizer=str(tiny_tok)), SFTConfig)
    with pytest.raises(ConfigError, match="'tokenizer'"):
        run_stage(config)
    assert not (tmp_path / "o").exists()

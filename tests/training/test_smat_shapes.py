"""SMAT at fixed step shapes (``shape_buckets``) and compiled: padding to the buckets leaves the loss unchanged,
the compiled parts give the eager loss and gradients, and the settings are checked."""

from __future__ import annotations

import pytest
import torch

from rxt.config import RxTConfig
from rxt.model import RxT
from rxt.tokenizer import RxTokenizer
from training.config import ConfigError, TrainConfig
from training.data.datasets import EpisodeDataset, collate_episodes
from training.data.synthetic import SyntheticDialogueConfig, generate_episodes
from training.stages.smat import (
    SMATObjective,
    SMATStageConfig,
    SMATTrainer,
    compile_chain,
    compile_objective,
    compiled_parts,
)
from training.stages.smat_batched import DecodeSteps, answer_loss, decoder_hidden, stack_episode_turns

MAX_TURNS, MAX_LEN = 4, 64


@pytest.fixture(scope="module")
def tok():
    return RxTokenizer.default()


@pytest.fixture(scope="module")
def dataset(tok):
    episodes = generate_episodes(SyntheticDialogueConfig(num_episodes=12, distance=[0, 1, 2], seed=3))
    return EpisodeDataset(episodes, tok, MAX_LEN, MAX_TURNS)


def _trainer(tmp_path, tok, dataset, *, buckets, compile_=False, seed=0, turn_buckets=()):
    torch.manual_seed(seed)
    model = RxT(RxTConfig.preset("tiny", vocab_size=tok.vocab_size)).double()
    config = SMATStageConfig(
        train=TrainConfig(lr=1e-3, max_steps=1, warmup_steps=0, batch_size=6, device="cpu", precision="fp32",
                          output_dir=str(tmp_path), keep_last=0, compile=compile_),
        max_len=MAX_LEN, max_turns=MAX_TURNS, bptt_depth=MAX_TURNS, shape_buckets=buckets,
        turn_buckets=list(turn_buckets),
        unfreeze_schedule=[[0, ["memory", "rest"]]])
    return SMATTrainer(model, config, dataset, tokenizer=tok)


def _loss_and_grads(trainer, batch):
    objective = trainer.unwrapped_model
    objective.zero_grad(set_to_none=True)
    loss = objective(batch)["loss"]
    loss.backward()
    grads = {n: p.grad.clone() for n, p in objective.named_parameters() if p.grad is not None}
    return loss.detach(), grads


def _assert_same_loss_and_grads(plain, ref, fixed, padded):
    """The padded batch on ``fixed`` gives the plain batch's loss and gradients on ``plain`` (float64)."""
    loss_ref, grads_ref = _loss_and_grads(plain, ref)
    loss_pad, grads_pad = _loss_and_grads(fixed, padded)
    torch.testing.assert_close(loss_pad, loss_ref, rtol=0, atol=1e-12)
    assert grads_ref.keys() == grads_pad.keys()
    for name, g in grads_ref.items():
        torch.testing.assert_close(grads_pad[name], g, rtol=0, atol=1e-12, msg=name)


def test_bucketed_batches_have_fixed_shapes_and_the_same_loss(tmp_path, tok, dataset):
    plain = _trainer(tmp_path / "a", tok, dataset, buckets=[])
    fixed = _trainer(tmp_path / "b", tok, dataset, buckets=[16, 32])
    samples = [dataset[i] for i in range(6)]
    ref = plain.collate(samples)
    padded = fixed.collate(samples)
    longest = ref["input_ids"].shape[2]
    assert padded["input_ids"].shape[0] == MAX_TURNS
    assert padded["input_ids"].shape[2] == next(w for w in (16, 32, MAX_LEN) if w >= longest)
    assert padded["num_tokens"] == ref["num_tokens"]
    _assert_same_loss_and_grads(plain, ref, fixed, padded)


def test_turn_buckets_pad_to_the_smallest_bucket_and_keep_the_loss(tmp_path, tok, dataset):
    plain = _trainer(tmp_path / "a", tok, dataset, buckets=[])
    samples = [ep for ep in (dataset[i] for i in range(len(dataset))) if len(ep) < MAX_TURNS][:6]
    ref = plain.collate(samples)
    turns = ref["input_ids"].shape[0]
    assert 1 < turns < MAX_TURNS  # the bucket below max_turns is used
    fixed = _trainer(tmp_path / "b", tok, dataset, buckets=[32], turn_buckets=[1, turns])
    padded = fixed.collate(samples)
    assert padded["input_ids"].shape[0] == turns and padded["input_ids"].shape[2] in (32, MAX_LEN)
    short = _trainer(tmp_path / "c", tok, dataset, buckets=[32], turn_buckets=[1])  # past the buckets: max_turns
    assert short.collate(samples)["input_ids"].shape[0] == MAX_TURNS
    _assert_same_loss_and_grads(plain, ref, fixed, padded)


def test_compiled_step_matches_eager_loss_and_gradients(tmp_path, tok, dataset, monkeypatch):
    monkeypatch.setattr(SMATTrainer, "compile_backend", "aot_eager")  # dynamo + AOT autograd, no codegen on CPU
    trainer = _trainer(tmp_path, tok, dataset, buckets=[32], compile_=True)
    assert all(part._compiled_call_impl is not None for part in trainer._compiled_parts())
    assert trainer.unwrapped_model.steps.hidden is not decoder_hidden  # the decoder half compiled too
    batch = trainer.collate([dataset[i] for i in range(6)])
    loss_c, grads_c = _loss_and_grads(trainer, batch)
    trainer.uncompile_model()
    assert all(part._compiled_call_impl is None for part in trainer._compiled_parts())
    assert trainer.unwrapped_model.steps == DecodeSteps()
    loss_e, grads_e = _loss_and_grads(trainer, batch)
    torch.testing.assert_close(loss_c, loss_e, rtol=0, atol=1e-10)
    assert grads_e and grads_e.keys() <= grads_c.keys()
    for name in grads_c.keys() - grads_e.keys():  # AOT autograd returns zeros where eager autograd leaves None
        assert not grads_c[name].any(), name
    for name, g in grads_e.items():
        torch.testing.assert_close(grads_c[name], g, rtol=0, atol=1e-10, msg=name)


def test_auto_compile_only_with_buckets(tmp_path, tok, dataset):
    assert not _trainer(tmp_path / "a", tok, dataset, buckets=[]).auto_compile
    assert _trainer(tmp_path / "b", tok, dataset, buckets=[32]).auto_compile


@pytest.mark.parametrize("fields, message", [
    (dict(shape_buckets=[32], max_turns=None), "max_turns"),
    (dict(shape_buckets=[32, 16], max_turns=4), "shape_buckets"),
    (dict(shape_buckets=[1], max_turns=4), "shape_buckets"),
    (dict(shape_buckets=[128], max_turns=4, max_len=64), "max_len=64"),
    (dict(turn_buckets=[2], max_turns=4), "turn_buckets"),
    (dict(shape_buckets=[32], turn_buckets=[3, 2], max_turns=4), "turn_buckets"),
    (dict(shape_buckets=[32], turn_buckets=[0, 2], max_turns=4), "turn_buckets"),
    (dict(shape_buckets=[32], turn_buckets=[2, 5], max_turns=4), "max_turns=4"),
    (dict(dynamic_compile="all"), "dynamic_compile"),
])
def test_bad_shape_buckets_name_the_field(fields, message):
    with pytest.raises(ConfigError, match=message):
        SMATStageConfig(**fields)


def test_compiled_answer_loss_serves_every_answer_count():
    """The compiled loss (`DecodeSteps.compiled`) traces the answer count K as dynamic: batches with different K
    reuse one graph (static K would recompile at every batch), with the eager values and gradients."""
    import torch._dynamo.utils as dynamo_utils

    torch._dynamo.reset()
    steps = DecodeSteps.compiled("aot_eager")
    g = torch.Generator().manual_seed(0)
    hidden = torch.randn(6, 9, 16, generator=g, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(50, 16, generator=g, dtype=torch.float64, requires_grad=True)
    before = dynamo_utils.counters["stats"]["unique_graphs"]
    for count in (5, 11, 17):
        index = torch.randperm(6 * 8, generator=g)[:count]
        targets = torch.randint(0, 50, (count,), generator=g)
        results = []
        for loss in (steps.loss, answer_loss):
            ce, correct = loss(hidden, weight, index, targets)
            results.append((ce.detach(), int(correct), torch.autograd.grad(ce, (hidden, weight))))
        (ce, correct, grads), (ce_ref, correct_ref, grads_ref) = results
        torch.testing.assert_close(ce, ce_ref, rtol=0, atol=1e-12)
        assert correct == correct_ref
        for got, want in zip(grads, grads_ref, strict=True):
            torch.testing.assert_close(got, want, rtol=0, atol=1e-12)
    assert dynamo_utils.counters["stats"]["unique_graphs"] - before == 1


@pytest.mark.parametrize("mode", ["chain", "step"])
def test_dynamic_compile_matches_eager_at_every_shape(tok, dataset, mode):
    """``dynamic_compile``: the memory-attention update alone (chain) or every part (step), compiled with automatic
    dynamic shapes (aot_eager here), gives the eager loss and gradients for batches of different sizes and widths,
    without a graph per shape."""
    import torch._dynamo.utils as dynamo_utils

    torch._dynamo.reset()
    torch.manual_seed(0)
    model = RxT(RxTConfig.preset("tiny", vocab_size=tok.vocab_size)).double()
    objective = SMATObjective(model, MAX_TURNS)
    batches = [stack_episode_turns(collate_episodes([dataset[i] for i in rows], tok.pad_id), tok.pad_id)
               for rows in (range(0, 4), range(4, 8), range(8, 12), range(0, 3), range(3, 6), range(6, 9))]
    shapes = {tuple(b["input_ids"].shape[1:]) for b in batches}  # (episodes, width): what the update sees
    assert len(shapes) >= 4
    eager = []
    for batch in batches:
        objective.zero_grad(set_to_none=True)
        loss = objective(batch)["loss"]
        loss.backward()
        eager.append((loss.detach(), {n: p.grad.clone() for n, p in objective.named_parameters() if p.grad is not None}))
    if mode == "chain":
        compile_chain(objective, "aot_eager")
    else:
        compile_objective(objective, "aot_eager", dynamic=True)
    before = dynamo_utils.counters["stats"]["unique_graphs"]
    for batch, (loss_ref, grads_ref) in zip(batches, eager, strict=True):
        objective.zero_grad(set_to_none=True)
        loss = objective(batch)["loss"]
        loss.backward()
        torch.testing.assert_close(loss.detach(), loss_ref, rtol=0, atol=1e-10)
        for name, g in grads_ref.items():
            torch.testing.assert_close(objective.get_parameter(name).grad, g, rtol=0, atol=1e-10, msg=name)
    # the update with and without a gradient into the STM (the first turn, a detached segment start): static at
    # first, then dynamic in the width, then in the batch size; not two per shape. The other parts, with "step":
    # static, then dynamic, each (the loss: dynamic in its answer count from the start)
    graphs = dynamo_utils.counters["stats"]["unique_graphs"] - before
    assert graphs <= (6 if mode == "chain" else 13), (graphs, shapes)
    for part in compiled_parts(objective):
        part._compiled_call_impl = None

"""The restructured SMAT step (`training.stages.smat_batched`) against the per-turn loop it replaces:
same loss, token count and gradients (float64, tiny model), for several truncated-BPTT depths, with ended
episodes and turns of different widths in the batch; and the host-side answer-position listing."""

from __future__ import annotations

import pytest
import torch

from rxt.config import RxTConfig
from rxt.grouped_sdpa import expand_masked_gqa
from rxt.model import RxT
from rxt.tokenizer import RxTokenizer
from training.data.datasets import IGNORE_INDEX, EpisodeDataset, collate_episodes
from training.data.synthetic import SyntheticDialogueConfig, generate_episodes
from training.stages.smat import SMATObjective
from training.stages.smat_batched import stack_episode_turns, unstack_episode_turns


@pytest.fixture(scope="module")
def tok():
    return RxTokenizer.default()


@pytest.fixture(scope="module")
def batch(tok):
    # episodes of different turn counts: some rows end early (inactive turns), turn widths differ
    eps = generate_episodes(SyntheticDialogueConfig(num_episodes=3, num_turns=3, seed=1)) + \
        generate_episodes(SyntheticDialogueConfig(num_episodes=2, num_turns=1, seed=2))
    ds = EpisodeDataset(eps, tok, 64)
    return collate_episodes([ds[i] for i in range(len(ds))], pad_id=tok.pad_id)


def _run(objective, turns):
    objective.model.zero_grad(set_to_none=True)
    out = objective(turns)
    out["loss"].backward()
    grads = {n: p.grad.detach().clone() for n, p in objective.model.named_parameters() if p.grad is not None}
    return out, grads


@pytest.mark.parametrize("expand", [False, True], ids=["enable_gqa", "expanded_heads"])
@pytest.mark.parametrize("depth", [0, 1, 2, 4])
def test_restructured_step_equals_the_per_turn_loop(tok, batch, depth, expand):
    """Also with masked grouped-query calls expanding their heads (`expand_masked_gqa`, as the trainer runs the
    step); the stacked batch is right-padded, so its decoder runs causal without a mask, the loop with one."""
    assert len(batch) >= 3 and not bool(batch[-1]["active"].all())  # the case with ended episodes is covered
    assert len({t["input_ids"].shape[1] for t in batch}) > 1  # and turns of different widths
    stacked = stack_episode_turns(batch, tok.pad_id)
    assert stacked["right_padded"] and not bool(stacked["attention_mask"].all())  # padding the decoder ignores
    torch.manual_seed(0)
    model = RxT(RxTConfig.preset("tiny", vocab_size=tok.vocab_size)).double()
    ref, ref_grads = _run(SMATObjective(model, depth, reference=True), batch)
    with expand_masked_gqa(expand):
        new, new_grads = _run(SMATObjective(model, depth), stacked)
    assert int(new["tokens"]) == int(ref["tokens"]) > 0
    assert int(new["correct"]) == int(ref["correct"])
    torch.testing.assert_close(new["loss"], ref["loss"], rtol=0, atol=1e-10)
    assert set(new_grads) == set(ref_grads)
    for name, g in ref_grads.items():
        torch.testing.assert_close(new_grads[name], g, rtol=1e-8, atol=1e-10, msg=name)
    if depth == 0:
        assert all(not n.startswith(("memory_attention", "encoder")) for n in new_grads)


def test_all_active_turns_skip_the_keep_and_change_nothing(tok, batch):
    """``all_active`` (host-side) says which turns have every row live; the step skips their keep-the-old-STM
    `where` and gives bit-identical loss and gradients to the step that keeps every `where`."""
    stacked = stack_episode_turns(batch, tok.pad_id)
    assert stacked["all_active"] == tuple(bool(a.all()) for a in stacked["active"])
    assert True in stacked["all_active"] and False in stacked["all_active"]  # both cases in the batch
    torch.manual_seed(0)
    model = RxT(RxTConfig.preset("tiny", vocab_size=tok.vocab_size)).double()
    skip, skip_grads = _run(SMATObjective(model, 2), stacked)
    keep, keep_grads = _run(SMATObjective(model, 2), {k: v for k, v in stacked.items() if k != "all_active"})
    assert torch.equal(skip["loss"], keep["loss"]) and set(skip_grads) == set(keep_grads)
    for name, g in keep_grads.items():
        assert torch.equal(skip_grads[name], g), name


def test_right_padding_is_checked_on_the_host_and_a_left_padded_batch_keeps_its_mask(tok, batch):
    """``right_padded`` is False when a real token follows padding; the step then passes the decoder its mask (the
    causal-only decoder would let the first real tokens read the padding before them: another loss)."""
    left = [{k: (v.flip(1) if k in ("input_ids", "attention_mask", "labels") else v) for k, v in turn.items()}
            for turn in batch]  # left padding (the reversed tokens: another valid sequence under the same mask)
    stacked = stack_episode_turns(left, tok.pad_id)
    assert not stacked["right_padded"] and stack_episode_turns(batch, tok.pad_id)["right_padded"]
    torch.manual_seed(0)
    model = RxT(RxTConfig.preset("tiny", vocab_size=tok.vocab_size)).double()
    masked, _ = _run(SMATObjective(model, 2), stacked)
    unflagged, _ = _run(SMATObjective(model, 2), {k: v for k, v in stacked.items() if k != "right_padded"})
    wrong, _ = _run(SMATObjective(model, 2), {**stacked, "right_padded": True})
    assert torch.equal(masked["loss"], unflagged["loss"])  # a batch without the key keeps the mask too
    assert abs(float(wrong["loss"]) - float(masked["loss"])) > 1e-6


def test_stacking_lists_answer_positions_on_the_host(tok, batch):
    stacked = stack_episode_turns(batch, tok.pad_id)
    n, b, _ = stacked["input_ids"].shape
    assert (n, b) == (len(batch), batch[0]["input_ids"].shape[0])
    grid = stacked["labels"].reshape(-1)
    assert stacked["num_tokens"] == int((grid != IGNORE_INDEX).sum()) == stacked["target_index"].numel()
    assert torch.equal(grid[stacked["target_index"]], stacked["targets"])
    # inactive rows carry no target; round trip gives the loop's turns back (padded to one width)
    assert not bool((stacked["labels"][~stacked["active"]] != IGNORE_INDEX).any())
    back = unstack_episode_turns(stacked)
    for t, turn in enumerate(batch):
        w = turn["input_ids"].shape[1]
        live = stacked["active"][t]
        assert torch.equal(back[t]["input_ids"][:, :w], turn["input_ids"])
        assert torch.equal(back[t]["labels"][live, :w], turn["labels"][live])


def test_bucketing_keeps_a_permutation_and_groups_similar_episodes():
    from training.stages.smat_batched import bucketed_permutation

    g = torch.Generator().manual_seed(0)
    n = 96
    keys = [(int(torch.randint(1, 18, (1,), generator=g)), int(torch.randint(5, 200, (1,), generator=g)))
            for _ in range(n)]
    perm = torch.randperm(n, generator=g)
    out = bucketed_permutation(perm, keys, step_samples=8, window=4, generator=torch.Generator().manual_seed(1))
    assert sorted(out.tolist()) == list(range(n))  # still a permutation
    batches = [out[i : i + 8].tolist() for i in range(0, n, 8)]
    spread = sum(max(keys[i][0] for i in b) - min(keys[i][0] for i in b) for b in batches) / len(batches)
    random_spread = sum(max(keys[i][0] for i in perm[k : k + 8].tolist()) - min(keys[i][0] for i in perm[k : k + 8].tolist())
                        for k in range(0, n, 8)) / len(batches)
    assert spread < random_spread / 2
    # each window of 4 batches holds the same entries as the unbucketed permutation's window
    for w in range(0, n, 32):
        assert sorted(out[w : w + 32].tolist()) == sorted(perm[w : w + 32].tolist())

"""IMPO at static shapes (`training.mrl.impo_static`): padded minibatches and the flat loss equal the eager path."""

from __future__ import annotations

import copy
import dataclasses

import pytest
import test_impo as base  # same folder: pytest puts it on sys.path
import torch

from training.data.synthetic import SyntheticDialogueConfig, generate_episodes
from training.mrl.impo import impo_loss, policy_pass, token_log_probs
from training.mrl.impo_static import (
    flat_old_log_probs,
    pad_minibatch,
    pad_reference,
    pad_rows,
    static_impo_loss,
    static_shape,
)

_float64_moved_policy, learner_for, tiny_model = base._float64_moved_policy, base.learner_for, base.tiny_model


@pytest.fixture(scope="module")
def logs(tok):  # test_impo's episodes: 5 episodes of 2 steps, collected through the runtime
    episodes = generate_episodes(SyntheticDialogueConfig(num_episodes=5, num_turns=1, seed=0))
    return base.collect(tiny_model(tok), tok, episodes)


def _logs64(logs):
    return [dataclasses.replace(log, stm_initial=log.stm_initial.double(),
                                steps=[dataclasses.replace(s, stm_before=s.stm_before.double()) for s in log.steps])
            for log in logs]


def test_padded_flat_loss_equals_the_eager_loss_float64(tok, logs):
    """float64 toy, a policy moved off its reference, ratios that are not 1: every minibatch padded to its bucket
    shape (wider ids, padding rows, padding action entries) gives the eager loss (1e-12), every statistic, and
    every parameter's gradient (1e-10; the same parameters get none)."""
    _, learner, items, batches = _float64_moved_policy(tok, logs, 4, entropy_coef=0.05)
    cfg = learner.cfg  # (length_bucket 32, action_bucket 8)
    shape = static_shape(batches, cfg, learner.policy.config.max_seq_len)
    adv, returns = torch.randn(len(items), dtype=torch.float64), torch.randn(len(items), dtype=torch.float64)
    refs = learner.reference_log_dists(batches)
    params = learner.parameters()
    padded_rows = padded_entries = 0
    for b, mb in enumerate(batches):
        smb = pad_minibatch(mb, shape, tok.pad_id)
        rows, entries = smb.seq_ids.shape[0], smb.action_rows.shape[0]
        assert smb.shape_key == (4, shape.mem, shape.seq, shape.critic, shape.actions)  # one shape per update
        assert shape.seq % 32 == 0 and shape.mem % 32 == 0 and entries % (4 * 8) == 0
        padded_rows += rows - mb.seq_ids.shape[0]
        padded_entries += entries - mb.action_targets.shape[0]
        with torch.no_grad():
            old_b = token_log_probs(policy_pass(learner.policy, mb)[1], mb)
        old_b = old_b + 0.3 * torch.randn_like(old_b) * mb.action_mask  # some ratios clipped
        adv_b, ret_b = adv[mb.index], returns[mb.index]
        loss, stats = impo_loss(learner.policy, learner.reference, learner.critic, mb, old_b, adv_b, ret_b, cfg,
                                reference_log_dist=refs[b], validate=False)
        got_loss, got_stats = static_impo_loss(learner.policy, learner.critic, smb,
                                               flat_old_log_probs(old_b, mb, entries), pad_rows(adv_b, rows),
                                               pad_rows(ret_b, rows), cfg, pad_reference(refs[b], entries))
        assert got_loss.dtype == torch.float64 and float(stats["kl"]) > 1e-6 and float(stats["clip_fraction"]) > 0
        torch.testing.assert_close(got_loss, loss, rtol=1e-12, atol=1e-12)
        for key in ("policy_loss", "entropy", "kl", "memory_reg", "value_loss", "stm_change", "ratio_mean"):
            torch.testing.assert_close(got_stats[key], stats[key], rtol=1e-12, atol=1e-12, msg=key)
        # the eager path divides two integer counts, a float32 quotient: the same count of clipped tokens
        assert round(float(got_stats["clip_fraction"]) * len(mb.action_targets)) == int(
            ((stats["ratio"] - 1).abs() > cfg.clip_eps).sum())
        torch.testing.assert_close(got_stats["clip_fraction"].float(), stats["clip_fraction"], rtol=1e-6, atol=0)
        base.assert_same_gradients(got_loss, loss, params)
    assert padded_rows > 0 and padded_entries > 0  # the padding was exercised


@pytest.mark.parametrize("merge", [True, False])
def test_static_update_moves_the_weights_as_the_eager_update_float64(tok, logs, merge):
    """A whole float64 update (2 epochs, shuffled minibatches, padded rows) at static shapes: the same statistics
    (1e-9) and the same weights afterwards (1e-9) as the eager update, every transition seen in both, and the
    first optimizer step's ratio exactly 1 (its old log-probs from a pass on its own padded tensors)."""
    results = []
    for static in (False, True):
        _, learner, _, _ = _float64_moved_policy(tok, logs, 3, static_shapes=static, merge_old_log_probs=merge)
        stats = learner.update(_logs64(logs))
        results.append((stats, [p.detach().clone() for p in learner.parameters()], learner.seen,
                        learner.first_ratio_exact))
    (eager, eager_params, eager_seen, _), (static, static_params, static_seen, exact) = results
    assert exact is True and static_seen == eager_seen
    assert eager.keys() == static.keys() and eager["kl"] > 1e-6
    for key in eager:  # (the eager clip fraction is a float32 quotient of two counts)
        rel = 1e-6 if key == "clip_fraction" else 1e-9
        assert static[key] == pytest.approx(eager[key], rel=rel, abs=1e-12), key
    for a, b in zip(static_params, eager_params, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)


def test_static_update_float32_learns_as_the_eager_one(tok, logs):
    """float32 toy, the trainer's dtype: both paths' updates agree to float32 rounding."""
    model = tiny_model(tok)
    moved = []
    for static in (False, True):
        learner = learner_for(copy.deepcopy(model), tok, static_shapes=static)
        moved.append(learner.update(logs))
    for key in moved[0]:
        assert moved[1][key] == pytest.approx(moved[0][key], rel=1e-4, abs=1e-6), key


def test_bucket_settings_must_be_positive():
    from training.mrl.impo import IMPOConfig

    for name in ("length_bucket", "action_bucket", "max_graphs"):
        with pytest.raises(ValueError, match=f"IMPOConfig.{name}=0"):
            IMPOConfig(**{name: 0})


def test_update_graphs_default_to_the_collection_graphs_on_cuda_only():
    from training.mrl.curriculum import MRLConfig

    default = MRLConfig()
    assert default.cuda_graphs is True and default.update_cuda_graphs is None
    assert default.impo_config("cuda").cuda_graphs is True  # a CUDA trainer: graphed update
    assert default.impo_config("cpu").cuda_graphs is False and default.impo_config().cuda_graphs is False
    assert MRLConfig(cuda_graphs=False).impo_config("cuda").cuda_graphs is False
    assert MRLConfig(update_cuda_graphs=False).impo_config("cuda").cuda_graphs is False
    assert MRLConfig(update_cuda_graphs=True).impo_config("cpu").cuda_graphs is True  # static shapes, eager

"""IMPO on episodes collected through the runtime: ratio 1 at the start, every step trained, replay, files."""

from __future__ import annotations

import copy
import dataclasses
import math
import random

import msgpack
import pytest
import torch
import torch.nn.functional as F

from rxnn_runtime.messages import GenerationOptions
from rxnn_runtime.reactive_model import ReactiveModel
from rxt.config import RxTConfig
from rxt.encoder_stacked import encoders_stackable
from rxt.model import RxT
from training.config import TrainConfig
from training.data.synthetic import SyntheticDialogueConfig, generate_episodes
from training.mrl.critic import Critic
from training.mrl.curriculum import CurriculumStage, MRLConfig
from training.mrl.episodes import EpisodeLogError, collect_episodes, load_episode_logs, save_episode_logs
from training.mrl.impo import (
    IMPOConfig,
    IMPOLearner,
    Transition,
    advantages_and_returns,
    impo_loss,
    make_minibatches,
    memory_regularisation,
    policy_pass,
    policy_value_pass,
    token_log_probs,
    transitions,
)
from training.mrl.rewards import compute_rewards
from training.mrl.trainer import MRLTrainer
from training.rewards import MemoryRetentionReward
from training.stages.mrl import train_from_logs

REWARD = MemoryRetentionReward(cosine_weight=0.0, length_weight=0.1)


def collect(model, tok, episodes, *, teacher_forcing=True, max_steps=None, batch=4, seed=0, reset_prob=1.0):
    reactive = ReactiveModel(model, tok, max_batch_size=batch, use_cuda_graphs=False)
    try:
        logs = collect_episodes(reactive, episodes, options=GenerationOptions(max_new_tokens=6, temperature=1.0),
                                teacher_forcing=teacher_forcing, reset_prob=reset_prob,
                                generator=random.Random(seed), max_steps=max_steps)
        reactive.wait_idle()
    finally:
        reactive.dispose()
    compute_rewards(logs, REWARD, pad_id=tok.pad_id)
    return logs


def tiny_model(tok, seed=0):
    torch.manual_seed(seed)
    return RxT(RxTConfig.preset("tiny", vocab_size=tok.vocab_size))


@pytest.fixture(scope="module")
def logs(tok):
    episodes = generate_episodes(SyntheticDialogueConfig(num_episodes=5, num_turns=1, seed=0))
    return collect(tiny_model(tok), tok, episodes)


def learner_for(model, tok, **cfg):
    critic = Critic.from_model(model)
    opt = torch.optim.AdamW([*model.parameters(), *critic.parameters()], lr=1e-3)
    reference = copy.deepcopy(model)
    return IMPOLearner(model, critic, opt, IMPOConfig(**{"minibatch_size": 4, **cfg}), reference=reference,
                       pad_id=tok.pad_id)


def test_collection_logs_steps_through_the_runtime(logs):
    assert len(logs) == 5 and all(len(log.steps) == 2 for log in logs)
    for log in logs:
        for k, step in enumerate(log.steps):
            assert len(step.runtime_log_probs) == len(step.action_ids) >= 1
            assert step.stm_before.shape == step.stm_after.shape == log.stm_initial.shape
            assert not torch.equal(step.stm_before, step.stm_after)
            if k > 0:
                assert torch.equal(step.stm_before, log.steps[k - 1].stm_after)
            assert step.reward is not None


def test_first_update_epoch_ratio_is_exactly_one(tok, logs):
    # one old-log-prob pass per minibatch (the default merges all but the first step's: see the merged test)
    learner = learner_for(tiny_model(tok), tok, merge_old_log_probs=False)
    _, batches, old, adv, returns = learner.prepare(logs)
    for b, mb in enumerate(batches):  # the policy has not changed: same function, same tensors -> ratio 1
        loss, stats = impo_loss(learner.policy, learner.reference, learner.critic, mb, old[b], adv[mb.index],
                                returns[mb.index], learner.cfg)
        assert torch.equal(stats["log_probs"], old[b])
        assert torch.equal(stats["ratio"], torch.ones_like(stats["ratio"]))
        assert loss.requires_grad
    learner.update(logs)
    assert learner.first_ratio_exact is True


def test_old_log_probs_match_runtime_distribution(tok, logs):
    """The recomputed old log-probs are the runtime's plain-softmax ones (up to kernel differences)."""
    learner = learner_for(tiny_model(tok), tok, minibatch_size=64)
    items, batches, old, _, _ = learner.prepare(logs)
    mb = batches[0]
    for row, t in enumerate(items):
        step = logs[t.episode].steps[t.step]
        got = old[0][row][mb.action_mask[row]]
        torch.testing.assert_close(got, torch.tensor(step.runtime_log_probs), atol=2e-4, rtol=1e-4)


def test_every_episode_and_step_enters_the_update(tok):
    episodes = generate_episodes(SyntheticDialogueConfig(num_episodes=5, distance=(0, 1, 2), seed=3))
    model = tiny_model(tok)
    logs = collect(model, tok, episodes, batch=2)
    expected = sorted((e, k) for e, log in enumerate(logs) for k in range(len(log.steps)))
    assert [len(log.steps) for log in logs] == [1, 2, 3, 1, 2]
    learner = learner_for(model, tok, ppo_epochs=2, minibatch_size=3)
    stats = learner.update(logs)
    assert stats["transitions"] == len(expected) == 9
    assert len(learner.seen) == 2
    for seen in learner.seen:
        assert sorted(seen) == expected  # the last episode (4) and its last step (1) included, none twice


def test_memory_regularisation_by_hand(tok, logs):
    model = tiny_model(tok)
    learner = learner_for(model, tok, memory_reg_coef=0.3)
    _, batches, _, _, _ = learner.prepare(logs)
    mb = batches[0]
    stm, _ = policy_pass(model, mb)
    got = memory_regularisation(stm, mb.prev_stm, mb.steps, 0.3)
    by_hand = sum(math.sqrt(int(mb.steps[i]) + 1) * 0.3 * F.mse_loss(stm[:, i], mb.prev_stm[:, i])
                  for i in range(stm.shape[1])) / stm.shape[1]
    torch.testing.assert_close(got, by_hand)
    assert got.requires_grad  # STM_k is recomputed with gradient through update_memory
    single = memory_regularisation(stm[:, 1:2], mb.prev_stm[:, 1:2], mb.steps[1:2], 0.3)
    torch.testing.assert_close(single, math.sqrt(int(mb.steps[1]) + 1) * 0.3 * F.mse_loss(stm[:, 1], mb.prev_stm[:, 1]))
    grads = torch.autograd.grad(got, [p for p in model.memory_attention.parameters() if p.requires_grad],
                                allow_unused=True)
    assert any(g is not None and g.abs().sum() > 0 for g in grads)


@pytest.mark.parametrize("teacher_forcing", [True, False])
def test_teacher_forcing_writes_the_reference_answer(tok, teacher_forcing):
    model = tiny_model(tok)
    episodes = generate_episodes(SyntheticDialogueConfig(num_episodes=3, num_turns=1, seed=1))
    logs = collect(model, tok, episodes, teacher_forcing=teacher_forcing)
    for log, record in zip(logs, episodes):
        for step, turn in zip(log.steps, record.interactions):
            ids = [*step.prompt_ids, *(tok.encode(turn.answer) if teacher_forcing else step.answer_ids), tok.eos_id]
            assert step.memory_ids == ids
            with torch.no_grad():
                expected = model.update_memory(step.stm_before[:, None], torch.tensor([ids]))[:, 0]
            torch.testing.assert_close(step.stm_after, expected, atol=1e-5, rtol=1e-5)


def test_replay_from_file_gives_the_same_update(tok, logs, tmp_path):
    path = save_episode_logs(tmp_path / "episodes.msgpack", logs)
    cfg = MRLConfig(train=TrainConfig(lr=1e-3, warmup_steps=0, device="cpu", output_dir=str(tmp_path / "a")),
                    batch_episodes=len(logs), unfreeze_schedule=[(0, ["memory", "rest"])], minibatch_size=4)
    live = MRLTrainer(cfg, model=tiny_model(tok), tokenizer=tok)
    live.update(logs)
    live.close()
    cfg_b = copy.deepcopy(cfg)
    cfg_b.train.output_dir = str(tmp_path / "b")
    offline = MRLTrainer(cfg_b, model=tiny_model(tok), tokenizer=tok)
    final = train_from_logs(cfg_b, [path], trainer=offline)
    assert (final / "model.safetensors").is_file()
    changed = False
    for (name, a), b in zip(live.policy.state_dict().items(), offline.policy.state_dict().values()):
        assert torch.equal(a, b), name
        changed |= not torch.equal(a, tiny_model(tok).state_dict()[name])
    assert changed
    for a, b in zip(live.critic.state_dict().values(), offline.critic.state_dict().values()):
        assert torch.equal(a, b)


def test_episode_file_round_trip(logs, tmp_path):
    path = save_episode_logs(tmp_path / "e.msgpack", logs)
    back = load_episode_logs(path)
    assert len(back) == len(logs)
    for a, b in zip(logs, back):
        assert a.first_ids == b.first_ids and a.metadata == b.metadata and torch.equal(a.stm_initial, b.stm_initial)
        for s, t in zip(a.steps, b.steps):
            assert s.action_ids == t.action_ids and s.reward == t.reward and s.runtime_log_probs == t.runtime_log_probs
            assert torch.equal(s.stm_before, t.stm_before) and torch.equal(s.stm_after, t.stm_after)
    assert not list(tmp_path.glob("*.tmp"))


def test_bad_episode_files_name_the_record(logs, tmp_path):
    path = save_episode_logs(tmp_path / "e.msgpack", logs)
    data = path.read_bytes()
    truncated = tmp_path / "truncated.msgpack"
    truncated.write_bytes(data[: len(data) - 100])
    with pytest.raises(EpisodeLogError, match=r"truncated: record 4 of 5"):
        load_episode_logs(truncated)

    unpacker = msgpack.Unpacker(raw=False)
    unpacker.feed(data)
    header, *records = list(unpacker)

    def write(name, recs, head=header):
        p = tmp_path / name
        p.write_bytes(b"".join(msgpack.packb(r, use_bin_type=True) for r in [head, *recs]))
        return p

    missing = copy.deepcopy(records)
    del missing[2]["steps"][1]["action_ids"]
    with pytest.raises(EpisodeLogError, match=r"record 2\.steps\[1\]: missing field 'action_ids'"):
        load_episode_logs(write("missing.msgpack", missing))
    wrong_type = copy.deepcopy(records)
    wrong_type[3]["first_ids"] = "not ids"
    with pytest.raises(EpisodeLogError, match=r"record 3\.first_ids: expected a list of int token ids"):
        load_episode_logs(write("type.msgpack", wrong_type))
    bad_tensor = copy.deepcopy(records)
    bad_tensor[1]["steps"][0]["stm_after"]["data"] = b"\x00" * 7
    with pytest.raises(EpisodeLogError, match=r"record 1\.steps\[0\]\.stm_after: data has 7 bytes"):
        load_episode_logs(write("tensor.msgpack", bad_tensor))
    with pytest.raises(EpisodeLogError, match="header: field 'format'"):
        load_episode_logs(write("header.msgpack", records, {"format": "something else"}))
    unknown = copy.deepcopy(records)
    unknown[0]["extra"] = 1
    with pytest.raises(EpisodeLogError, match=r"record 0: unknown field 'extra'"):
        load_episode_logs(write("unknown.msgpack", unknown))


def test_random_resets_carry_memory_over(tok):
    episodes = generate_episodes(SyntheticDialogueConfig(num_episodes=6, num_turns=0, seed=2))
    logs = collect(tiny_model(tok), tok, episodes, batch=2, reset_prob=0.0)
    assert [log.reset for log in logs] == [True, True, False, False, False, False]
    for prev, log in zip(logs, logs[2:]):
        assert torch.equal(log.stm_initial, prev.steps[-1].stm_after)


def test_config_rejects_bad_schedules():
    from training.config import ConfigError

    with pytest.raises(ConfigError, match="unfreeze_schedule"):
        MRLConfig(unfreeze_schedule=[(0, ["encoder"])])
    with pytest.raises(ConfigError, match="reset_prob_schedule"):
        MRLConfig(reset_prob_schedule=[(1, 0.5)])
    with pytest.raises(ConfigError, match="steps"):
        CurriculumStage(steps=0)
    with pytest.raises(ConfigError, match="reward"):
        MRLConfig(reward={"nope": 1})


def test_advantages_plain_and_gae_by_hand():
    def t(e, k, r, last):
        return Transition(e, k, torch.zeros(1), [], [], [], r, last)

    items = [t(0, 0, 1.0, False), t(0, 1, 2.0, True), t(1, 0, 0.5, True)]
    values = torch.tensor([0.2, 0.4, 0.1])
    adv, ret = advantages_and_returns(items, values, IMPOConfig(normalize_advantages=False))
    torch.testing.assert_close(adv, torch.tensor([0.8, 1.6, 0.4]))
    torch.testing.assert_close(ret, torch.tensor([1.0, 2.0, 0.5]))
    g, lam = 0.9, 0.5
    adv, ret = advantages_and_returns(items, values, IMPOConfig(normalize_advantages=False, use_gae=True, gamma=g,
                                                                gae_lambda=lam))
    d1 = 2.0 - 0.4
    d0 = 1.0 + g * 0.4 - 0.2
    torch.testing.assert_close(adv, torch.tensor([d0 + g * lam * d1, d1, 0.5 - 0.1]))
    torch.testing.assert_close(ret, adv + values)


def test_update_statistics_read_back_once_match_per_minibatch_floats(tok, logs):
    """The statistics summed on the device equal the per-minibatch Python floats they replace (same order, both
    in double precision), and the weights move exactly as the loop by hand moves them."""
    model = tiny_model(tok)
    # the loop by hand runs the reference per minibatch (inside impo_loss): so does the learner here, bit for bit
    # (merged no-grad passes are checked against per-minibatch ones in float64 below)
    learner = learner_for(copy.deepcopy(model), tok, minibatch_size=3, ppo_epochs=2, merged_batch=1)
    by_hand = learner_for(copy.deepcopy(model), tok, minibatch_size=3, ppo_epochs=2, merged_batch=1)
    stats = learner.update(logs)
    _, batches, old, adv, returns = by_hand.prepare(logs)
    totals: dict[str, float] = {}
    count = 0
    for epoch in range(2):
        order = torch.randperm(len(batches), generator=torch.Generator().manual_seed(epoch)).tolist()
        for b in order:
            mb = batches[b]
            loss, st = impo_loss(by_hand.policy, by_hand.reference, by_hand.critic, mb, old[b], adv[mb.index],
                                 returns[mb.index], by_hand.cfg)
            by_hand.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(by_hand.parameters(), by_hand.cfg.max_grad_norm)
            by_hand.optimizer.step()
            for key, value in st.items():
                if key not in ("log_probs", "ratio"):
                    totals[key] = totals.get(key, 0.0) + float(value)
            totals["loss"] = totals.get("loss", 0.0) + float(loss.detach())
            count += 1
    assert len(batches) > 1 and count == 2 * len(batches)
    for key, total in totals.items():
        assert stats[key] == total / count, key
    for a, b in zip(learner.policy.parameters(), by_hand.policy.parameters(), strict=True):
        assert torch.equal(a, b)


def _previous_loss(policy, reference, critic, mb, old, adv, returns, cfg):
    """The IMPO loss as it was computed before the LM head ran at the action positions only and before the
    reference's distributions were computed once per update: full (B, T-1, V) distributions, reference inside."""
    def wide(t):  # float32 at least (a float64 toy stays float64, as in the loss)
        return t if t.dtype in (torch.float32, torch.float64) else t.float()

    stm = policy.update_memory(mb.prev_stm, mb.mem_ids, mb.mem_mask)
    log_dist = F.log_softmax(wide(policy(mb.seq_ids, stm, mb.seq_mask).logits[:, :-1]), dim=-1)
    mask = mb.action_mask
    new = log_dist.gather(-1, mb.targets[..., None]).squeeze(-1).masked_fill(~mask, 0.0)
    ratio = torch.exp(new - old)
    a = adv[:, None]
    surrogate = torch.min(ratio * a, ratio.clamp(1 - cfg.clip_eps, 1 + cfg.clip_eps) * a)

    def row_mean(v):
        return ((v * mask).sum(-1) / mask.sum(-1).clamp_min(1.0)).mean()

    probs = log_dist.exp()
    with torch.no_grad():
        ref_stm = reference.update_memory(mb.prev_stm, mb.mem_ids, mb.mem_mask)
        ref = F.log_softmax(wide(reference(mb.seq_ids, ref_stm, mb.seq_mask).logits[:, :-1]), dim=-1)
    kl = row_mean((probs * (log_dist - ref)).sum(-1))
    entropy = row_mean(-(probs * log_dist).sum(-1))
    mem = memory_regularisation(stm, mb.prev_stm, mb.steps, cfg.memory_reg_coef)
    value_loss = F.mse_loss(wide(critic(mb.critic_ids, mb.critic_mask)), returns)
    return -row_mean(surrogate) - cfg.entropy_coef * entropy + cfg.kl_coef * kl + mem + cfg.value_coef * value_loss


def assert_same_gradients(loss, expected, params):
    """Every parameter's gradient of ``loss`` equals ``expected``'s (float64: 1e-10), and the same parameters get
    none; returns ``expected``'s gradients."""
    got = torch.autograd.grad(loss, params, allow_unused=True)
    want = torch.autograd.grad(expected, params, allow_unused=True)
    for g, w in zip(got, want, strict=True):
        assert (g is None) == (w is None)
        if g is not None:
            torch.testing.assert_close(g, w, rtol=1e-10, atol=1e-12)
    return want


def _float64_moved_policy(tok, logs, minibatch_size: int, **cfg):
    """A float64 toy learner whose policy has moved off its reference (a KL term that is not zero), its
    transitions and their float64 minibatches: ``(model, learner, items, batches)``."""
    model = tiny_model(tok).double()
    learner = learner_for(model, tok, minibatch_size=minibatch_size, kl_coef=0.3, **cfg)
    learner.critic.double()
    torch.manual_seed(9)
    with torch.no_grad():
        for p in learner.policy.parameters():
            p.add_(0.01 * torch.randn_like(p))
    items = transitions(logs)
    batches = [dataclasses.replace(mb, prev_stm=mb.prev_stm.double())
               for mb in make_minibatches(items, minibatch_size, tok.pad_id, learner.critic)]
    return model, learner, items, batches


def test_loss_with_reference_computed_once_equals_the_previous_path_float64(tok, logs):
    """float64 toy: the loss (action-position LM head, reference distributions cached once per update, no id
    checks in the epochs) equals the previous full-distribution loss with the reference pass inside, and so do
    its gradients, also after the policy has moved away from the reference."""
    _, learner, items, batches = _float64_moved_policy(tok, logs, 4, entropy_coef=0.05)
    adv, returns = torch.randn(len(items), dtype=torch.float64), torch.randn(len(items), dtype=torch.float64)
    refs = learner.reference_log_dists(batches)
    params = learner.parameters()
    assert len(batches) > 1
    for b, mb in enumerate(batches):
        with torch.no_grad():
            old_b = token_log_probs(policy_pass(learner.policy, mb)[1], mb)
        old_b = old_b + 0.01 * torch.randn_like(old_b) * mb.action_mask  # ratios that are not 1 (some clipped)
        adv_b, ret_b = adv[mb.index], returns[mb.index]
        loss, stats = impo_loss(learner.policy, learner.reference, learner.critic, mb, old_b, adv_b, ret_b,
                                learner.cfg, reference_log_dist=refs[b], validate=False)
        expected = _previous_loss(learner.policy, learner.reference, learner.critic, mb, old_b, adv_b, ret_b,
                                  learner.cfg)
        assert loss.dtype == torch.float64 and float(stats["kl"]) > 1e-6
        torch.testing.assert_close(loss, expected, rtol=1e-12, atol=1e-12)
        assert_same_gradients(loss, expected, params)


def test_bad_token_ids_are_refused_on_the_host_naming_the_minibatch(tok, logs):
    """Ids are checked once per update, before they reach the device (the passes skip their own checks)."""
    bad = copy.deepcopy(logs)
    bad[4].steps[1].action_ids = [*bad[4].steps[1].action_ids[:-1], tok.vocab_size + 5]
    learner = learner_for(tiny_model(tok), tok, minibatch_size=4)
    # transitions in order: 5 episodes x 2 steps, so episode 4's step 1 is transition 9, in minibatch 2 (8..9)
    with pytest.raises(ValueError, match=r"IMPO minibatch 2 \(transitions 8..9\): prompt \+ action ids contains "
                                         rf"token id {tok.vocab_size + 5}"):
        learner.update(bad)


def test_seen_holds_the_latest_update_only(tok, logs):
    learner = learner_for(tiny_model(tok), tok, ppo_epochs=2, minibatch_size=4)
    learner.update(logs)
    learner.update(logs[:2])
    assert len(learner.seen) == 2  # the second update's two epochs, not four
    assert all(sorted(seen) == [(e, k) for e in range(2) for k in range(2)] for seen in learner.seen)


def test_merged_no_grad_passes_equal_one_per_minibatch_float64(tok, logs):
    """float64 toy: the reference's distributions and the critic's pre-update values from merged minibatches (one
    pass over several, right-padded) equal one pass per minibatch, and so does a whole update (its statistics)."""
    results = []
    for merged_batch in (1, 1_000):
        model, learner, _, batches = _float64_moved_policy(tok, logs, 3, merged_batch=merged_batch)
        assert len(batches) > 2 and len({mb.seq_ids.shape[1] for mb in batches}) > 1  # merging pads
        refs = learner.reference_log_dists(batches)
        refs.append(learner.prepare(logs)[3])  # the advantages, from the critic's pre-update values
        assert [r.shape for r in refs[:-1]] == [(len(mb.action_targets), model.config.vocab_size) for mb in batches]
        logs64 = [dataclasses.replace(log, stm_initial=log.stm_initial.double(),
                                      steps=[dataclasses.replace(s, stm_before=s.stm_before.double())
                                             for s in log.steps]) for log in logs]
        results.append((refs, learner.update(logs64)))
    (refs_one, stats_one), (refs_merged, stats_merged) = results
    for a, b in zip(refs_one, refs_merged, strict=True):
        torch.testing.assert_close(b, a, rtol=0, atol=1e-12)
    assert stats_one.keys() == stats_merged.keys() and stats_one["kl"] > 1e-6
    for key in stats_one:
        assert stats_merged[key] == pytest.approx(stats_one[key], rel=1e-9, abs=1e-12), key


def test_old_log_probs_merged_equal_one_pass_per_minibatch_float64(tok, logs):
    """float64 toy: the old log-probs from merged passes equal one pass per minibatch (1e-12), the minibatch the
    first optimizer step visits comes from a pass of its own, bit for bit that step's, and the first step's
    ratio is exactly 1 with merging on."""
    _, learner, _, batches = _float64_moved_policy(tok, logs, 3, merged_batch=1_000)
    assert len(batches) > 2 and len({mb.seq_ids.shape[1] for mb in batches}) > 1  # merging pads
    with torch.no_grad():
        alone = [token_log_probs(policy_pass(learner.policy, mb, validate=False)[1], mb) for mb in batches]
        step_pass = policy_value_pass(learner.policy, learner.critic, batches[first := learner.epoch_order(
            len(batches), 0)[0]], validate=False)[1]  # what the optimizer step's pass computes
    merged = learner.old_log_probs(batches, exact=first)
    assert torch.equal(merged[first], token_log_probs(step_pass, batches[first]))
    for b, (a, m) in enumerate(zip(alone, merged, strict=True)):
        assert m.shape == a.shape, b
        torch.testing.assert_close(m, a, rtol=0, atol=1e-12)
        assert torch.equal(m != 0, batches[b].action_mask)  # zero outside the action, as one pass gives
    learner = learner_for(tiny_model(tok), tok, minibatch_size=2, merged_batch=1_000)
    learner.update(logs)
    assert learner.first_ratio_exact is True


def test_stacked_encoders_equal_one_after_the_other_float64(tok, logs):
    """float64 toy: with the policy's and the critic's encoders as one stacked pass (`IMPOConfig.stack_encoders`,
    the default) the loss of every minibatch equals the two passes one after the other (1e-12), and so does every
    parameter's gradient (1e-10; a parameter no term reads, the policy encoder's final norm, gets none in both),
    and a whole update moves the weights as the unstacked one does."""
    _, learner, items, batches = _float64_moved_policy(tok, logs, 3, entropy_coef=0.05)
    assert encoders_stackable([learner.policy.encoder, learner.critic.encoder])
    assert len({(mb.mem_ids.shape[1], mb.critic_ids.shape[1]) for mb in batches}) > 1
    assert any(mb.mem_ids.shape[1] != mb.critic_ids.shape[1] for mb in batches)  # the narrower is padded
    adv, returns = torch.randn(len(items), dtype=torch.float64), torch.randn(len(items), dtype=torch.float64)
    refs = learner.reference_log_dists(batches)
    params = learner.parameters()
    unstacked = dataclasses.replace(learner.cfg, stack_encoders=False)
    for b, mb in enumerate(batches):
        with torch.no_grad():
            old_b = token_log_probs(policy_pass(learner.policy, mb)[1], mb)
        old_b = old_b + 0.01 * torch.randn_like(old_b) * mb.action_mask
        results = [impo_loss(learner.policy, learner.reference, learner.critic, mb, old_b, adv[mb.index],
                             returns[mb.index], cfg, reference_log_dist=refs[b])
                   for cfg in (learner.cfg, unstacked)]
        (loss, stats), (expected, expected_stats) = results
        torch.testing.assert_close(loss, expected, rtol=1e-12, atol=1e-12)
        assert float(expected_stats["value_loss"]) > 0 and float(stats["memory_reg"]) > 0
        want = assert_same_gradients(loss, expected, params)
        assert sum(g is None for g in want) >= 1  # the policy encoder's final norm
    logs64 = [dataclasses.replace(log, stm_initial=log.stm_initial.double(),
                                  steps=[dataclasses.replace(s, stm_before=s.stm_before.double()) for s in log.steps])
              for log in logs]
    moved = []
    for stack in (True, False):
        _, other, _, _ = _float64_moved_policy(tok, logs, 3, stack_encoders=stack)
        moved.append((other.update(logs64), [p.detach().clone() for p in other.parameters()]))
    (stats_a, params_a), (stats_b, params_b) = moved
    for key in stats_a:
        assert stats_a[key] == pytest.approx(stats_b[key], rel=1e-9, abs=1e-12), key
    for a, b in zip(params_a, params_b, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)


def test_merged_batch_must_be_positive():
    with pytest.raises(ValueError, match="merged_batch=0"):
        IMPOConfig(merged_batch=0)

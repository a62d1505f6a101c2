"""IMPO at static shapes: minibatches padded to bucket shapes and the loss over the flat action tokens.

What a CUDA graph of the optimizer step needs (`training.mrl.impo_graphs`): every tensor of a step at a shape
that recurs, no host sync, no data-dependent shape. `impo.impo_loss` lays the action tokens out as (B, T-1) with
an ``index_put`` per term and means over each row's mask; here the same loss is a weighted sum over the A action
tokens themselves::

    w_a   = 1 / (B * n_row(a))        (row mean, then mean over the B rows)        0 for a padding entry
    f_a   = 1 / A                     (the ratio mean and the clip fraction)        0 for a padding entry
    w_row = 1 / B                     (memory regularisation, value loss)           0 for a padding row

    L_policy = -sum_a w_a min(r_a A_row, clip(r_a) A_row),  H = sum_a w_a H_a,  KL = sum_a w_a KL_a
    L_mem    = c_mem sum_rows w_row sqrt(k + 1) MSE_row,    L_V = sum_rows w_row (V - R)^2

Padding, to one shape per update (`static_shape`: ``IMPOConfig.minibatch_size`` rows, each width the update's
widest rounded up to a multiple of ``IMPOConfig.length_bucket``, ``rows * n`` action entries with n the most
action tokens of a row rounded up to a multiple of ``IMPOConfig.action_bucket``): padding keys are masked (a row with no valid key attends to all: finite, `rxt.masks`), padding rows and action entries
have weight 0, an entry reads row 0's first position (finite), its old log-prob is 0 (ratio exp(new) <= 1) and
its reference distribution 0 (finite KL term): their terms and their gradients are exactly 0, so the loss and the
gradients equal `impo.impo_loss`'s up to float rounding (float64 tests). Old log-probs are kept per action token.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, fields

import torch
import torch.nn.functional as F

from training.mrl.impo import IMPOConfig, Minibatch, policy_value_pass, wide

#: the statistics of one step, in the order `IMPOLearner.update` reports them (as the eager path's)
STAT_KEYS = ("policy_loss", "entropy", "kl", "memory_reg", "value_loss", "stm_change", "clip_fraction",
             "ratio_mean", "loss")


@dataclass
class StaticMinibatch:
    """A `Minibatch` padded to bucket shapes, with the weights of the flat loss (module docstring). The field
    names `impo.policy_value_pass` reads are the same as a `Minibatch`'s."""

    prev_stm: torch.Tensor  # (L, Bp, S, D)
    mem_ids: torch.Tensor  # (Bp, Tm)
    mem_mask: torch.Tensor
    seq_ids: torch.Tensor  # (Bp, Ts)
    seq_mask: torch.Tensor
    critic_ids: torch.Tensor  # (Bp, Tc)
    critic_mask: torch.Tensor
    action_rows: torch.Tensor  # (Ap,) long
    action_cols: torch.Tensor
    action_targets: torch.Tensor
    action_weight: torch.Tensor  # (Ap,) w_a
    action_frac: torch.Tensor  # (Ap,) f_a
    row_weight: torch.Tensor  # (Bp,) w_row
    steps: torch.Tensor  # (Bp,) k

    @property
    def shape_key(self) -> tuple[int, ...]:
        """What a captured step depends on: rows, the three widths and the action entries."""
        return (self.seq_ids.shape[0], self.mem_ids.shape[1], self.seq_ids.shape[1], self.critic_ids.shape[1],
                self.action_rows.shape[0])

    def tensors(self) -> dict[str, torch.Tensor]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


def bucket(n: int, step: int) -> int:
    """``n`` rounded up to a multiple of ``step`` (at least ``step``)."""
    return max(step, -(-n // step) * step)


@dataclass(frozen=True)
class StaticShape:
    """The padded sizes of an update's minibatches: rows, the three widths, action entries."""

    rows: int
    mem: int
    seq: int
    critic: int
    actions: int


def static_shape(batches: Sequence[Minibatch], cfg: IMPOConfig, max_len: int) -> StaticShape:
    """One shape for every minibatch of an update (`IMPOConfig.length_bucket` / ``action_bucket``); a width is
    not padded past ``max_len`` (the model's positions) unless a minibatch is already wider."""
    rows = max(cfg.minibatch_size, *(mb.seq_ids.shape[0] for mb in batches))

    def width(name: str) -> int:
        widest = max(getattr(mb, name).shape[1] for mb in batches)
        return max(widest, min(bucket(widest, cfg.length_bucket), max_len))

    per_row = max(int(torch.bincount(mb.action_rows.cpu(), minlength=1).max()) for mb in batches)
    return StaticShape(rows, width("mem_ids"), width("seq_ids"), width("critic_ids"),
                       rows * bucket(per_row, cfg.action_bucket))


def pad_minibatch(mb: Minibatch, shape: StaticShape, pad_id: int) -> StaticMinibatch:
    """``mb`` padded to ``shape`` (`static_shape`), with the weights of the flat loss."""
    rows, actions = mb.seq_ids.shape[0], mb.action_targets.shape[0]
    extra_rows = shape.rows - rows
    a_pad = shape.actions - actions
    if extra_rows < 0 or a_pad < 0:
        raise ValueError(f"pad_minibatch: a minibatch of {rows} rows and {actions} action tokens does not fit "
                         f"the static shape {shape}")

    def ids(name: str, mask: str, width: int) -> tuple[torch.Tensor, torch.Tensor]:
        grow = width - getattr(mb, name).shape[1]
        return (F.pad(getattr(mb, name), (0, grow, 0, extra_rows), value=pad_id),
                F.pad(getattr(mb, mask), (0, grow, 0, extra_rows), value=False))

    mem_ids, mem_mask = ids("mem_ids", "mem_mask", shape.mem)
    seq_ids, seq_mask = ids("seq_ids", "seq_mask", shape.seq)
    critic_ids, critic_mask = ids("critic_ids", "critic_mask", shape.critic)
    device = mb.seq_ids.device
    # the weights from host counts (the rows of the action entries read back once per minibatch, in `prepare`)
    host_rows = mb.action_rows.cpu()
    per_row = torch.bincount(host_rows, minlength=rows).double()
    action_weight = 1.0 / (rows * per_row[host_rows])
    action_frac = torch.full((actions,), 1.0 / max(actions, 1), dtype=torch.float64)
    row_weight = F.pad(torch.full((rows,), 1.0 / rows, dtype=torch.float64), (0, extra_rows))
    dtype = mb.prev_stm.dtype if mb.prev_stm.is_floating_point() else torch.float32

    def weights(w: torch.Tensor, pad: int) -> torch.Tensor:
        return F.pad(w, (0, pad)).to(device=device, dtype=dtype)

    return StaticMinibatch(
        prev_stm=F.pad(mb.prev_stm, (0, 0, 0, 0, 0, extra_rows)),
        mem_ids=mem_ids, mem_mask=mem_mask, seq_ids=seq_ids, seq_mask=seq_mask, critic_ids=critic_ids,
        critic_mask=critic_mask,
        action_rows=F.pad(mb.action_rows, (0, a_pad)), action_cols=F.pad(mb.action_cols, (0, a_pad)),
        action_targets=F.pad(mb.action_targets, (0, a_pad), value=pad_id),
        action_weight=weights(action_weight, a_pad), action_frac=weights(action_frac, a_pad),
        row_weight=weights(row_weight, 0), steps=F.pad(mb.steps, (0, extra_rows)),
    )


def flat_old_log_probs(old: torch.Tensor, mb: Minibatch, entries: int) -> torch.Tensor:
    """(B, T-1) old token log-probs (`IMPOLearner.old_log_probs`) -> (entries,) at the action tokens, in
    ``mb.action_rows`` order, 0 for the padding entries."""
    flat = old[mb.action_rows, mb.action_cols]
    return F.pad(flat, (0, entries - flat.shape[0]))


def pad_rows(values: torch.Tensor, rows: int) -> torch.Tensor:
    """(B,) per-row values -> (rows,), 0 for the padding rows."""
    return F.pad(values, (0, rows - values.shape[0]))


def pad_reference(dist: torch.Tensor | None, entries: int) -> torch.Tensor | None:
    """(A, V) reference log-distributions -> (entries, V), 0 for the padding entries."""
    return None if dist is None else F.pad(dist, (0, 0, 0, entries - dist.shape[0]))


def static_impo_loss(policy, critic, smb: StaticMinibatch, old: torch.Tensor, advantages: torch.Tensor,
                     returns: torch.Tensor, cfg: IMPOConfig, reference_log_dist: torch.Tensor | None
                     ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The IMPO loss of ``smb`` (module docstring; `impo.impo_loss`'s maths). ``old`` (Ap,) the old log-probs per
    action entry; ``advantages`` and ``returns`` (Bp,); ``reference_log_dist`` (Ap, V) or None (no KL term).
    Returns ``(loss, stats)``: the `STAT_KEYS` but ``loss``, and ``log_probs``, the new (Ap,) log-probs."""
    stm, log_dist, values = policy_value_pass(policy, critic, smb, False, cfg.stack_encoders)
    new = log_dist.gather(-1, smb.action_targets[:, None]).squeeze(-1)
    ratio = torch.exp(new - old)
    adv = advantages[smb.action_rows]
    surrogate = torch.min(ratio * adv, ratio.clamp(1 - cfg.clip_eps, 1 + cfg.clip_eps) * adv)
    w = smb.action_weight
    policy_loss = -(surrogate * w).sum()
    probs = log_dist.exp()
    entropy = (-(probs * log_dist).sum(-1) * w).sum()
    if reference_log_dist is not None and cfg.kl_coef > 0:
        kl = ((probs * (log_dist - reference_log_dist)).sum(-1) * w).sum()
    else:
        kl = torch.zeros((), device=new.device, dtype=new.dtype)
    mse = (wide(stm) - wide(smb.prev_stm)).pow(2).mean(dim=(0, 2, 3))  # (Bp,) per row
    row_w = smb.row_weight
    mem_reg = cfg.memory_reg_coef * (torch.sqrt(smb.steps.to(mse.dtype) + 1.0) * mse * row_w).sum()
    value_loss = ((wide(values) - returns).pow(2) * row_w).sum()
    loss = policy_loss - cfg.entropy_coef * entropy + cfg.kl_coef * kl + mem_reg + cfg.value_coef * value_loss
    clipped = ((ratio - 1).abs() > cfg.clip_eps).to(ratio.dtype)
    stats = {
        "policy_loss": policy_loss, "entropy": entropy, "kl": kl, "memory_reg": mem_reg, "value_loss": value_loss,
        "stm_change": (mse * row_w).sum().sqrt(), "clip_fraction": (clipped * smb.action_frac).sum(),
        "ratio_mean": (ratio * smb.action_frac).sum(), "log_probs": new,
    }
    return loss, {k: v.detach() for k, v in stats.items()}


def static_step(learner, smb: StaticMinibatch, old: torch.Tensor, adv: torch.Tensor, returns: torch.Tensor,
                reference: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """One whole optimizer step of ``learner`` on ``smb`` (the loss, its backward, clipping, the optimizer step):
    ``(statistics row (float64, `STAT_KEYS` order), new log-probs (Ap,))``. No host sync: what a CUDA graph
    captures (`impo_graphs.GraphedSteps`), and what runs eagerly otherwise."""
    loss, stats = static_impo_loss(learner.policy, learner.critic, smb, old, adv, returns, learner.cfg, reference)
    learner.optimizer_step(loss)
    stats["loss"] = loss.detach()
    row = torch.stack([stats[k].to(loss.dtype) for k in STAT_KEYS])
    return row.to(torch.float32 if row.device.type == "mps" else torch.float64), stats["log_probs"]


def static_backward(learner, smb: StaticMinibatch, old: torch.Tensor, adv: torch.Tensor, returns: torch.Tensor,
                    reference: torch.Tensor | None) -> None:
    """The loss of ``smb`` and its backward, no optimizer step (the weights do not move): a capture's warm-up."""
    static_impo_loss(learner.policy, learner.critic, smb, old, adv, returns, learner.cfg, reference)[0].backward()


def static_update(learner, logs) -> dict[str, float]:
    """`IMPOLearner.update` on static shapes: the same transitions, minibatches, epochs and visiting order, each
    minibatch padded (`pad_minibatch`) and its step `static_step` (a CUDA graph with ``cfg.cuda_graphs`` on a
    GPU). Old log-probs: the first step's minibatch from a pass of its own on exactly its padded tensors (that
    step's ratio is exactly 1), the others from the merged passes (`IMPOLearner.old_log_probs`)."""
    cfg = learner.cfg
    started = time.perf_counter()
    with torch.no_grad():
        items, batches = learner.minibatches(logs)
        shape = static_shape(batches, cfg, learner.policy.config.max_seq_len)
        static = [pad_minibatch(mb, shape, learner.pad_id) for mb in batches]
        first = learner.epoch_order(len(batches), 0)[0]

        def alone(b: int) -> torch.Tensor:  # the pass of the optimizer step, on its padded tensors
            dist = policy_value_pass(learner.policy, learner.critic, static[b], False, cfg.stack_encoders)[1]
            return dist.gather(-1, static[b].action_targets[:, None]).squeeze(-1)

        if cfg.merge_old_log_probs:
            merged = learner.old_log_probs(batches, exact=None)
            old = [flat_old_log_probs(o, mb, smb.action_rows.shape[0])
                   for o, mb, smb in zip(merged, batches, static, strict=True)]
            old[first] = alone(first)
        else:
            old = [alone(b) for b in range(len(batches))]
        adv, returns = learner.advantages(items, batches)
        sizes = [len(mb.index) for mb in batches]
        advs = [pad_rows(a, smb.seq_ids.shape[0]) for a, smb in zip(adv.split(sizes), static, strict=True)]
        rets = [pad_rows(r, smb.seq_ids.shape[0]) for r, smb in zip(returns.split(sizes), static, strict=True)]
        references = learner.reference_log_dists(batches)
    prepared = time.perf_counter()
    step = learner.graphed or (lambda *a: static_step(learner, *a))
    learner.seen = []
    totals: torch.Tensor | None = None
    count = 0
    for epoch in range(cfg.ppo_epochs):
        order = learner.epoch_order(len(batches), epoch)
        seen: list[tuple[int, int]] = []
        for b in order:
            smb = static[b]
            reference = pad_reference(references[b], smb.action_rows.shape[0])
            row, new = step(smb, old[b], advs[b], rets[b], reference)
            if learner.first_ratio_exact is None:
                learner.first_ratio_exact = bool(torch.equal(new, old[b]))
            seen.extend((items[i].episode, items[i].step) for i in batches[b].index.tolist())
            totals = row.clone() if totals is None else totals + row  # (a graph's row is overwritten by its next replay)
            count += 1
        learner.seen.append(seen)
    learner.updates += 1
    out = learner.summary(items, STAT_KEYS, totals, count)  # reads the statistics back: the steps are done
    # host seconds of the latest update: the no-grad passes and padding, then the optimizer steps
    learner.timing = {"prepare_s": prepared - started, "steps_s": time.perf_counter() - prepared}
    return out


__all__ = ["STAT_KEYS", "StaticMinibatch", "StaticShape", "bucket", "flat_old_log_probs", "pad_minibatch", "pad_reference",
           "pad_rows", "static_backward", "static_impo_loss", "static_shape", "static_step",
           "static_update"]

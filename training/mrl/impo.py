"""IMPO: PPO for memory, on episodes collected through the runtime (`training.mrl.episodes`).

Every step k (0-based) of every collected episode is one transition. Its state is what the memory saved before
the query: the interaction written last (the first interaction for k = 0, else step k-1's ``memory_ids``) and
the STM it was written into (``stm_initial`` for k = 0, else step k-1's ``stm_before``), stored detached. The
policy pass re-runs that memory write WITH gradient, so the memory system (encoder + memory attention) is
trained through the policy loss, then runs the decoder teacher-forced over ``prompt + action``::

    STM_k    = update_memory(STM_{k-1}.detach(), I_{k-1})                        (with grad)
    log π(a) = log_softmax(Decoder(prompt ++ action, memory = STM_k))  at the action positions
                                                                           (plain softmax, temperature 1)

The LM head runs only at the action positions (gathered by index: the prompt and the padding never reach the
vocabulary projection, and no boolean indexing waits for the device).

Each transition restarts from its stored, detached STM_{k-1}, so the steps of an episode share no computation
graph: a minibatch (consecutive transitions, several episodes' turns) is one batched pass, and there is no
sequential chain over turns to restructure as SMAT's (`training.stages.smat_batched`). What an optimizer step
costs is launches: the policy's memory encoder and the critic's encoder (same configuration, an independent
copy) run as one stacked pass (`policy_value_pass`, `rxt.encoder_stacked`; ``IMPOConfig.stack_encoders``), the
memory attention and the decoder's memory projections are layer-stacked (`rxt.memory_attention_stacked`,
`rxt.memory_read_stacked`). PPO's optimizer steps themselves (``ppo_epochs`` x minibatches) stay sequential.

Old log-probs are recomputed by `IMPOLearner.prepare` with the pre-update policy through exactly this function:
for the minibatch the update's first optimizer step visits, on exactly its tensors, so that step's ratio is
exactly 1; for the others in merged passes (`IMPOConfig.merged_batch`, as the reference below), equal up to
float rounding (by the time a step visits them the policy has moved, so their ratio is not 1 anyway). The loss::

    ratio_t  = exp(log π(a_t) - log π_old(a_t))
    L_policy = -mean_rows[ mean_t min(ratio_t A, clip(ratio_t, 1-eps, 1+eps) A) ]
    L        = L_policy - c_H * H(π) + c_KL * KL(π || π_ref) + L_mem + c_V * MSE(V(s), R)
    L_mem    = c_mem * mean_rows[ sqrt(k + 1) * MSE(STM_k, STM_{k-1}) ]

with the entropy H and the KL to the frozen reference policy (the same two-stage pass) over full distributions,
averaged over the action tokens. The reference is frozen, so its distributions at the action tokens are computed
once per update (`IMPOLearner.reference_log_dists`, A x V floats per minibatch of A action tokens, from passes over
consecutive minibatches merged up to ``IMPOConfig.merged_batch`` transitions, as the critic's pre-update values)
and reused by every epoch. Token ids are range-checked once per update, on the host before they go to the device
(`make_minibatches(check=...)`, from `prepare`); no pass of the update reads anything back from the device. Advantages: A = R - V(s) with R the step's reward, or GAE(gamma, lambda) over
each episode's steps (then R = A + V); normalised over all transitions. Every collected episode and every step,
the last ones included, enters every update epoch.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from itertools import accumulate

import torch
import torch.nn.functional as F
from torch import nn

from rxt.encoder_stacked import encoders_stackable, right_pad_stack, stacked_encode
from rxt.model import RxT
from rxt.template import pad_batch
from rxt.validation import check_token_ids
from training.mrl.critic import Critic
from training.mrl.episodes import EpisodeLog


@dataclass
class IMPOConfig:
    clip_eps: float = 0.2
    entropy_coef: float = 0.01
    kl_coef: float = 0.01
    memory_reg_coef: float = 1e-3
    value_coef: float = 0.5
    use_gae: bool = False
    gamma: float = 0.99
    gae_lambda: float = 0.95
    normalize_advantages: bool = True
    ppo_epochs: int = 2
    minibatch_size: int = 16
    max_grad_norm: float = 1.0
    seed: int = 0
    #: transitions per merged no-grad pass (consecutive minibatches, at least one): the frozen reference's
    #: distributions, the critic's pre-update values and the old log-probs (all but the first optimizer step's
    #: minibatch, which must equal that step's bit for bit). Fewer, larger passes launch fewer kernels; the
    #: memory of one pass grows with it (1024: an update of 128 episodes x 8 steps in one pass each, ~2 x 1.6 GB
    #: of float32 distributions at the peak for 48-token answers over an 8k vocabulary)
    merged_batch: int = 1024
    #: the old log-probs of all but the first step's minibatch from the merged passes (equal up to float rounding);
    #: False: one pass per minibatch, on exactly the tensors its optimizer step reads (every first-epoch ratio of
    #: an unchanged policy exactly 1, the earlier behaviour; about one policy forward per minibatch more)
    merge_old_log_probs: bool = True
    #: the policy's memory encoder and the critic's encoder as one stacked pass in every optimizer step
    #: (`rxt.encoder_stacked`, where the two stack; equal up to float rounding); False: one after the other
    stack_encoders: bool = True
    #: the optimizer steps on minibatches padded to bucket shapes, the loss over the flat action tokens
    #: (`training.mrl.impo_static`: the same maths, equal up to float rounding); implied by ``cuda_graphs``
    static_shapes: bool = False
    #: each bucket shape's whole optimizer step (loss, backward, clipping, AdamW) as a CUDA graph, captured on
    #: its second occurrence (`training.mrl.impo_graphs`); CUDA only, elsewhere the static shapes run eagerly
    cuda_graphs: bool = False
    #: the static shapes, one per update (every minibatch of an update padded alike): ``minibatch_size`` rows,
    #: each width (ids, prompt ++ action, critic input) the update's widest rounded up to a multiple of
    #: ``length_bucket`` tokens, and ``minibatch_size * n`` action entries with n the update's most action tokens
    #: of a row rounded up to a multiple of ``action_bucket`` (so updates of similar data share a shape and its
    #: graph; coarser buckets: fewer captures, more padding)
    length_bucket: int = 32
    action_bucket: int = 8
    max_graphs: int = 16  # captured step graphs kept (least recently used dropped)

    def __post_init__(self) -> None:
        if not 0 < self.clip_eps < 1:
            raise ValueError(f"IMPOConfig.clip_eps={self.clip_eps} must be in (0, 1)")
        if self.ppo_epochs < 1 or self.minibatch_size < 1:
            raise ValueError("IMPOConfig.ppo_epochs and minibatch_size must be >= 1")
        for name in ("length_bucket", "action_bucket", "max_graphs"):
            if getattr(self, name) < 1:
                raise ValueError(f"IMPOConfig.{name}={getattr(self, name)} must be >= 1")
        if self.merged_batch < 1:
            raise ValueError(f"IMPOConfig.merged_batch={self.merged_batch} must be >= 1")
        for name in ("entropy_coef", "kl_coef", "memory_reg_coef", "value_coef", "max_grad_norm"):
            if getattr(self, name) < 0:
                raise ValueError(f"IMPOConfig.{name}={getattr(self, name)} must be >= 0")


@dataclass
class Transition:
    episode: int
    step: int  # k, 0-based within the episode
    prev_stm: torch.Tensor  # (L, S, D) STM_{k-1}: what the saved interaction was written into (detached)
    written_ids: list[int]  # the saved interaction I_{k-1}
    prompt_ids: list[int]
    action_ids: list[int]
    reward: float
    last: bool


def transitions(logs: Sequence[EpisodeLog]) -> list[Transition]:
    """All steps of all episodes, in order (none left out)."""
    out = []
    for e, log in enumerate(logs):
        for k, step in enumerate(log.steps):
            if step.reward is None:
                raise ValueError(f"episode {e} ({log.episode_id}) step {k} has no reward; compute rewards first")
            prev = log.steps[k - 1] if k > 0 else None
            out.append(Transition(
                episode=e, step=k, prev_stm=log.stm_initial if prev is None else prev.stm_before,
                written_ids=log.first_ids if prev is None else prev.memory_ids, prompt_ids=step.prompt_ids,
                action_ids=step.action_ids, reward=float(step.reward), last=k == len(log.steps) - 1,
            ))
    return out


@dataclass
class Minibatch:
    index: torch.Tensor  # (B,) positions in the transition list
    prev_stm: torch.Tensor  # (L, B, S, D)
    mem_ids: torch.Tensor
    mem_mask: torch.Tensor
    seq_ids: torch.Tensor  # (B, T) prompt ++ action
    seq_mask: torch.Tensor
    targets: torch.Tensor  # (B, T-1) next tokens
    action_mask: torch.Tensor  # (B, T-1): True where the target is an action token
    action_rows: torch.Tensor  # (A,) the row of each action target, in row-major order (as action_mask's Trues)
    action_cols: torch.Tensor  # (A,) its target position
    action_targets: torch.Tensor  # (A,) the action token it predicts
    steps: torch.Tensor  # (B,) k
    critic_ids: torch.Tensor
    critic_mask: torch.Tensor


def wide(t: torch.Tensor) -> torch.Tensor:
    """``t`` in float32 at least: a half-precision tensor widened, a float64 one (the float64 tests) kept."""
    return t if t.dtype in (torch.float32, torch.float64) else t.float()


def _ids_mask(rows: Sequence[Sequence[int]], pad_id: int, device, check: tuple[int, int] | None = None,
              name: str = "ids") -> tuple[torch.Tensor, torch.Tensor]:
    ids, lengths = pad_batch(rows, pad_id)
    if check is not None:  # on the host tensor: no device read-back
        check_token_ids(ids, *check, name=name)
    mask = torch.arange(ids.shape[1])[None, :] < lengths[:, None]
    return ids.to(device), mask.to(device)


def make_minibatches(items: Sequence[Transition], size: int, pad_id: int, critic: Critic,
                     device: torch.device | str = "cpu", *, check: tuple[int, int] | None = None
                     ) -> list[Minibatch]:
    """A fixed partition of ``items`` into minibatches (in order), reused by every epoch. ``check`` =
    ``(vocab_size, max_seq_len)`` range-checks every id tensor on the host, before it goes to ``device`` (then
    the passes over the minibatches can skip their own checks, which read back from the device)."""
    out = []
    for start in range(0, len(items), size):
        chunk = items[start : start + size]
        seqs = [[*t.prompt_ids, *t.action_ids] for t in chunk]
        where = f"IMPO minibatch {start // size} (transitions {start}..{start + len(chunk) - 1})"
        seq_ids, seq_mask = _ids_mask(seqs, pad_id, device, check, f"{where}: prompt + action ids")
        width = seq_ids.shape[1]
        action_mask = torch.zeros(len(chunk), max(width - 1, 0), dtype=torch.bool)
        rows, cols, targets = [], [], []
        for i, t in enumerate(chunk):
            # target position j predicts token j + 1: the action occupies tokens len(prompt) .. len(seq) - 1
            first = len(t.prompt_ids) - 1
            action_mask[i, first : first + len(t.action_ids)] = True
            rows += [i] * len(t.action_ids)
            cols += range(first, first + len(t.action_ids))
            targets += t.action_ids
        mem_ids, mem_mask = _ids_mask([t.written_ids for t in chunk], pad_id, device, check,
                                      f"{where}: saved interaction ids")
        critic_ids, critic_mask = critic.state_inputs([t.written_ids for t in chunk], [t.prompt_ids for t in chunk],
                                                      pad_id)
        if check is not None:
            check_token_ids(critic_ids, *check, name=f"{where}: critic ids")
        critic_ids, critic_mask = critic_ids.to(device), critic_mask.to(device)
        out.append(Minibatch(
            index=torch.arange(start, start + len(chunk)),
            prev_stm=torch.stack([wide(t.prev_stm).to(device) for t in chunk], dim=1),  # host or device STMs
            mem_ids=mem_ids, mem_mask=mem_mask, seq_ids=seq_ids, seq_mask=seq_mask, targets=seq_ids[:, 1:],
            action_mask=action_mask.to(device), action_rows=torch.tensor(rows, dtype=torch.long, device=device),
            action_cols=torch.tensor(cols, dtype=torch.long, device=device),
            action_targets=torch.tensor(targets, dtype=torch.long, device=device),
            steps=torch.tensor([t.step for t in chunk], device=device),
            critic_ids=critic_ids, critic_mask=critic_mask,
        ))
    return out


def merge_minibatches(batches: Sequence[Minibatch], pad_id: int) -> Minibatch:
    """Consecutive minibatches as one: rows concatenated in order, id tensors right-padded with ``pad_id`` (masks
    False) to the widest, action positions re-indexed. Right padding changes no row's result (causal decoder,
    masked keys), so a pass over the merge equals the passes over the parts up to float rounding."""
    if len(batches) == 1:
        return batches[0]

    def cat(name: str, value) -> torch.Tensor:
        parts = [getattr(mb, name) for mb in batches]
        width = max(p.shape[1] for p in parts)
        return torch.cat([F.pad(p, (0, width - p.shape[1]), value=value) for p in parts])

    offsets = list(accumulate((mb.seq_ids.shape[0] for mb in batches[:-1]), initial=0))  # host ints: shapes
    seq_ids = cat("seq_ids", pad_id)
    return Minibatch(
        index=torch.cat([mb.index for mb in batches]),
        prev_stm=torch.cat([mb.prev_stm for mb in batches], dim=1),
        mem_ids=cat("mem_ids", pad_id), mem_mask=cat("mem_mask", False), seq_ids=seq_ids,
        seq_mask=cat("seq_mask", False), targets=seq_ids[:, 1:], action_mask=cat("action_mask", False),
        action_rows=torch.cat([mb.action_rows + offset for mb, offset in zip(batches, offsets, strict=True)]),
        action_cols=torch.cat([mb.action_cols for mb in batches]),
        action_targets=torch.cat([mb.action_targets for mb in batches]),
        steps=torch.cat([mb.steps for mb in batches]), critic_ids=cat("critic_ids", pad_id),
        critic_mask=cat("critic_mask", False),
    )


def merged_groups(batches: Sequence[Minibatch], limit: int) -> list[list[Minibatch]]:
    """Consecutive minibatches grouped, in order, up to ``limit`` transitions a group (at least one minibatch)."""
    groups: list[list[Minibatch]] = []
    for mb in batches:
        if groups and sum(len(m.index) for m in groups[-1]) + len(mb.index) <= limit:
            groups[-1].append(mb)
        else:
            groups.append([mb])
    return groups


def policy_pass(model: RxT, mb: Minibatch, validate: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """``(STM_k (L, B, S, D), log-distributions (A, V) at the A action targets)``: the memory write re-run from
    the stored STM_{k-1}, then the teacher-forced decoder over prompt ++ action, the LM head at the action
    positions only (plain log-softmax, temperature 1). ``validate=False`` skips the host-side id checks (ids
    checked once already)."""
    stm = model.update_memory(mb.prev_stm, mb.mem_ids, mb.mem_mask, validate=validate)
    return stm, _action_log_dists(model, stm, mb, validate)


def _action_log_dists(model: RxT, stm: torch.Tensor, mb: Minibatch, validate: bool) -> torch.Tensor:
    """The teacher-forced decoder over prompt ++ action reading ``stm``; log-softmax at the action targets."""
    decoder = model.decoder
    hidden = decoder(mb.seq_ids, attention_mask=mb.seq_mask, memory=decoder.project_memory(stm),
                     compute_logits=False, validate=validate).hidden
    logits = decoder.lm_head(hidden[mb.action_rows, mb.action_cols])
    return F.log_softmax(wide(logits), dim=-1)


def policy_value_pass(policy: RxT, critic: Critic, mb: Minibatch, validate: bool = True, stacked: bool = True
                      ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """`policy_pass` and the critic's values V(s) (B,): ``(STM_k, log-distributions, values)``. With ``stacked``
    and encoders that stack (`rxt.encoder_stacked.encoders_stackable`), the policy's encoder over the saved
    interaction and the critic's over (saved interaction + next query) run as one stacked pass (both right-padded
    to the wider; each then reads its own width back), and the memory attention and the decoder go on from it:
    the same maths, equal up to float rounding."""
    encoders = [policy.encoder, critic.encoder]
    if not (stacked and encoders_stackable(encoders)):
        stm, log_dist = policy_pass(policy, mb, validate)
        return stm, log_dist, critic(mb.critic_ids, mb.critic_mask, validate=validate)
    mem_mask, critic_mask = mb.mem_mask, mb.critic_mask
    if validate:
        mem_mask = policy.encoder._check(mb.mem_ids, mem_mask)
        critic_mask = critic.encoder._check(mb.critic_ids, critic_mask)
    ids, mask = right_pad_stack([(mb.mem_ids, mem_mask), (mb.critic_ids, critic_mask)], pad_id=0)
    states = stacked_encode(encoders, ids, mask)  # (L, 2, B, T, D)
    policy.stm.validate(mb.prev_stm, mb.mem_ids.shape[0])
    stm = policy.memory_attention(mb.prev_stm, states[:, 0, :, : mb.mem_ids.shape[1]], mem_mask)
    values = critic.value_of(critic.encoder.norm(states[-1, 1, :, : mb.critic_ids.shape[1]]), critic_mask)
    return stm, _action_log_dists(policy, stm, mb, validate), values


def at_actions(values: torch.Tensor, mb: Minibatch) -> torch.Tensor:
    """Per-action-target values (A,) laid out as (B, T-1), 0 outside the action."""
    out = values.new_zeros(mb.action_mask.shape)
    return out.index_put((mb.action_rows, mb.action_cols), values)


def token_log_probs(log_dist: torch.Tensor, mb: Minibatch) -> torch.Tensor:
    """(B, T-1) log-prob of each target token; 0 outside the action."""
    return at_actions(log_dist.gather(-1, mb.action_targets[:, None]).squeeze(-1), mb)


def memory_regularisation(stm: torch.Tensor, prev_stm: torch.Tensor, steps: torch.Tensor, coef: float) -> torch.Tensor:
    """``coef * mean_rows[ sqrt(k + 1) * MSE(STM_k, STM_{k-1}) ]`` (MSE over layers, slots and features)."""
    mse = (wide(stm) - wide(prev_stm)).pow(2).mean(dim=(0, 2, 3))
    return coef * (torch.sqrt(steps.to(mse.dtype) + 1.0) * mse).mean()


def _masked_row_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    m = mask.to(values.dtype)
    return (values * m).sum(-1) / m.sum(-1).clamp_min(1.0)


def impo_loss(policy: RxT, reference: RxT | None, critic: Critic, mb: Minibatch, old_log_probs: torch.Tensor,
              advantages: torch.Tensor, returns: torch.Tensor, cfg: IMPOConfig, *,
              reference_log_dist: torch.Tensor | None = None, validate: bool = True) -> tuple[torch.Tensor, dict]:
    """The IMPO loss of one minibatch (module docstring). Returns ``(loss, stats)``; ``stats["log_probs"]`` is
    the (B, T-1) new token log-probs (detached), ``stats["ratio"]`` the (B, T-1) ratios (1 outside the action,
    where both log-probs are 0) and ``stats["ratio_mean"]`` their mean over the action tokens.
    ``reference_log_dist``: the reference's (A, V) log-distributions of this minibatch, computed once
    (`IMPOLearner.reference_log_dists`); None computes them here. ``validate=False`` skips the id checks."""
    stm, log_dist, values = policy_value_pass(policy, critic, mb, validate, cfg.stack_encoders)
    new = token_log_probs(log_dist, mb)
    mask = mb.action_mask
    ratio = torch.exp(new - old_log_probs)
    adv = advantages[:, None]
    surrogate = torch.min(ratio * adv, ratio.clamp(1 - cfg.clip_eps, 1 + cfg.clip_eps) * adv)
    policy_loss = -_masked_row_mean(surrogate, mask).mean()
    probs = log_dist.exp()
    entropy = _masked_row_mean(at_actions(-(probs * log_dist).sum(-1), mb), mask).mean()
    if reference is not None and cfg.kl_coef > 0:
        if reference_log_dist is None:
            with torch.no_grad():
                _, reference_log_dist = policy_pass(reference, mb, validate)
        kl = _masked_row_mean(at_actions((probs * (log_dist - reference_log_dist)).sum(-1), mb), mask).mean()
    else:
        kl = torch.zeros((), device=new.device)
    mem_reg = memory_regularisation(stm, mb.prev_stm, mb.steps, cfg.memory_reg_coef)
    value_loss = F.mse_loss(wide(values), returns)
    loss = policy_loss - cfg.entropy_coef * entropy + cfg.kl_coef * kl + mem_reg + cfg.value_coef * value_loss
    clipped = ((ratio - 1).abs() > cfg.clip_eps) & mask
    stats = {
        "policy_loss": policy_loss.detach(), "entropy": entropy.detach(), "kl": kl.detach(),
        "memory_reg": mem_reg.detach(), "value_loss": value_loss.detach(),
        "stm_change": (stm - mb.prev_stm).pow(2).mean().sqrt().detach(),
        "clip_fraction": clipped.sum() / mask.sum().clamp_min(1), "log_probs": new.detach(),
        "ratio": ratio.detach(), "ratio_mean": (ratio.detach() * mask).sum() / mask.sum().clamp_min(1),
    }
    return loss, stats


def advantages_and_returns(items: Sequence[Transition], values: torch.Tensor, cfg: IMPOConfig
                           ) -> tuple[torch.Tensor, torch.Tensor]:
    """``A = R - V`` (or GAE over each episode's steps, then ``R = A + V``); A normalised when asked."""
    rewards = torch.tensor([t.reward for t in items], dtype=torch.float32, device=values.device)
    values = wide(values)
    if cfg.use_gae:
        adv = torch.zeros_like(rewards)
        running = 0.0
        for i in range(len(items) - 1, -1, -1):
            t = items[i]
            not_last = 0.0 if t.last else 1.0
            next_value = values[i + 1] if not t.last else 0.0
            running = (0.0 if t.last else running)
            delta = rewards[i] + cfg.gamma * next_value * not_last - values[i]
            running = delta + cfg.gamma * cfg.gae_lambda * not_last * running
            adv[i] = running
        returns = adv + values
    else:
        adv = rewards - values
        returns = rewards
    if cfg.normalize_advantages and adv.numel() > 1:
        adv = (adv - adv.mean()) / (adv.std() + 1e-8)
    return adv, returns


class IMPOLearner:
    """Runs IMPO updates of ``policy`` (and ``critic``) on collected episode logs.

    ``seen`` lists the ``(episode, step)`` of every transition the loss saw, per epoch of the latest update (for
    checks; kept for one update only, so a long run does not accumulate them);
    ``first_ratio_exact`` whether, before the first optimizer step, the new log-probs equalled the old ones.
    """

    def __init__(self, policy: RxT, critic: Critic, optimizer: torch.optim.Optimizer, cfg: IMPOConfig, *,
                 reference: RxT | None = None, pad_id: int = 0, device: torch.device | str = "cpu") -> None:
        self.policy, self.critic, self.reference = policy, critic, reference
        self.optimizer, self.cfg, self.pad_id, self.device = optimizer, cfg, pad_id, torch.device(device)
        self.seen: list[list[tuple[int, int]]] = []
        self.first_ratio_exact: bool | None = None
        self.updates = 0
        self.graphed = None  # `impo_graphs.GraphedSteps`, with cfg.cuda_graphs on a CUDA device
        self.timing: dict[str, float] = {}  # the latest static-shape update's host seconds (`impo_static`)
        if cfg.cuda_graphs and self.device.type == "cuda":
            from training.mrl.impo_graphs import GraphedSteps
            from training.mrl.impo_static import static_backward, static_step

            for group in optimizer.param_groups:  # a captured optimizer step keeps its step count on the device
                group["capturable"] = True
            self.graphed = GraphedSteps(lambda *a: static_step(self, *a), optimizer, self.parameters,
                                        max_graphs=cfg.max_graphs, warm=lambda *a: static_backward(self, *a))

    def parameters(self) -> list[nn.Parameter]:
        return [p for p in [*self.policy.parameters(), *self.critic.parameters()] if p.requires_grad]

    def optimizer_step(self, loss: torch.Tensor) -> None:
        """Backward of ``loss``, gradients clipped to ``cfg.max_grad_norm``, one optimizer step (no host sync)."""
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        params = self.parameters()
        if self.cfg.max_grad_norm > 0 and params:
            torch.nn.utils.clip_grad_norm_(params, self.cfg.max_grad_norm)
        self.optimizer.step()

    @torch.no_grad()
    def prepare(self, logs: Sequence[EpisodeLog]):
        """Transitions, minibatches, old log-probs (pre-update policy, same function), advantages, returns."""
        items, batches = self.minibatches(logs)
        old = self.old_log_probs(batches, exact=self.epoch_order(len(batches), 0)[0])
        adv, returns = self.advantages(items, batches)
        return items, batches, old, adv, returns

    def minibatches(self, logs: Sequence[EpisodeLog]) -> tuple[list[Transition], list[Minibatch]]:
        """The transitions of ``logs`` and their minibatches, every id checked on the host (from here on no check
        reads back from the device)."""
        items = transitions(logs)
        if not items:
            raise ValueError("no transitions: the episode logs have no steps")
        config = self.policy.config
        return items, make_minibatches(items, self.cfg.minibatch_size, self.pad_id, self.critic, self.device,
                                       check=(config.vocab_size, config.max_seq_len))

    @torch.no_grad()
    def advantages(self, items: Sequence[Transition], batches: Sequence[Minibatch]
                   ) -> tuple[torch.Tensor, torch.Tensor]:
        """Advantages and returns from the critic's pre-update values (merged passes)."""
        values = []
        for group in merged_groups(batches, self.cfg.merged_batch):  # (mean pooling over real tokens: padding-free)
            merged = merge_minibatches(group, self.pad_id)
            values.append(wide(self.critic(merged.critic_ids, merged.critic_mask, validate=False)))
        return advantages_and_returns(items, torch.cat(values), self.cfg)

    def epoch_order(self, count: int, epoch: int) -> list[int]:
        """The order in which epoch ``epoch`` of the next update visits its ``count`` minibatches (seeded)."""
        return torch.randperm(count, generator=torch.Generator().manual_seed(
            self.cfg.seed * 100_003 + self.updates * 1_009 + epoch)).tolist()

    @torch.no_grad()
    def old_log_probs(self, batches: Sequence[Minibatch], exact: int | None) -> list[torch.Tensor]:
        """The pre-update policy's (B, T-1) token log-probs of each minibatch: minibatch ``exact`` in a pass of
        its own (bit for bit what the optimizer step that visits it first computes), the others in merged passes
        of up to ``cfg.merged_batch`` transitions (`merge_minibatches`, split back per minibatch); without
        ``cfg.merge_old_log_probs`` one pass per minibatch. ``exact=None``: every minibatch from the merged passes
        (the caller computes the first step's itself: `impo_static`)."""
        def alone(mb: Minibatch) -> torch.Tensor:  # exactly the pass of the optimizer step (critic included)
            return token_log_probs(policy_value_pass(self.policy, self.critic, mb, False, self.cfg.stack_encoders)[1],
                                   mb)

        if not self.cfg.merge_old_log_probs:
            return [alone(mb) for mb in batches]
        out: list[torch.Tensor | None] = [None] * len(batches)
        if exact is not None:
            out[exact] = alone(batches[exact])
        others = [b for b in range(len(batches)) if b != exact]
        where = iter(others)
        for group in merged_groups([batches[b] for b in others], self.cfg.merged_batch):
            dists = policy_pass(self.policy, merge_minibatches(group, self.pad_id), validate=False)[1]
            for mb, part in zip(group, dists.split([len(mb.action_targets) for mb in group]), strict=True):
                out[next(where)] = token_log_probs(part, mb)
        return out

    @torch.no_grad()
    def reference_log_dists(self, batches: Sequence[Minibatch]) -> list[torch.Tensor | None]:
        """The frozen reference's (A, V) log-distributions at each minibatch's action tokens, once per update
        (what every epoch's KL term reads; None per minibatch when there is no KL term). Consecutive minibatches
        of up to ``cfg.merged_batch`` transitions share one pass (`merge_minibatches`); its rows split back
        per minibatch as views."""
        if self.reference is None or self.cfg.kl_coef <= 0:
            return [None] * len(batches)
        out: list[torch.Tensor | None] = []
        for group in merged_groups(batches, self.cfg.merged_batch):
            dists = policy_pass(self.reference, merge_minibatches(group, self.pad_id), validate=False)[1]
            out.extend(dists.split([len(mb.action_targets) for mb in group]))
        return out

    def update(self, logs: Sequence[EpisodeLog]) -> dict[str, float]:
        """``ppo_epochs`` passes over every transition of ``logs`` (minibatch order shuffled per epoch, seeded)."""
        self.policy.eval()  # no dropout: old and new log-probs come from the same function
        self.critic.eval()
        if self.cfg.static_shapes or self.cfg.cuda_graphs:
            from training.mrl.impo_static import static_update

            return static_update(self, logs)
        items, batches, old, adv, returns = self.prepare(logs)  # checks the ids once
        self.seen = []
        references = self.reference_log_dists(batches)
        # summed on the device (float64, as the Python floats they replace) and read back once after the last
        # minibatch: no host sync per minibatch for the statistics, and one stacked sum per minibatch (3 ops, not
        # 3 per statistic)
        keys: list[str] | None = None
        totals: torch.Tensor | None = None
        count = 0
        # the minibatches partition the transitions in order: their advantages and returns are views of one split
        # (no per-minibatch gather, no per-minibatch host-to-device copy of an index)
        sizes = [len(mb.index) for mb in batches]
        adv_parts, return_parts = adv.split(sizes), returns.split(sizes)
        for epoch in range(self.cfg.ppo_epochs):
            order = self.epoch_order(len(batches), epoch)
            seen: list[tuple[int, int]] = []
            for b in order:
                mb = batches[b]
                loss, stats = impo_loss(self.policy, self.reference, self.critic, mb, old[b], adv_parts[b],
                                        return_parts[b], self.cfg, reference_log_dist=references[b],
                                        validate=False)
                if self.first_ratio_exact is None:
                    self.first_ratio_exact = bool(torch.equal(stats["log_probs"], old[b]))
                self.optimizer_step(loss)
                seen.extend((items[i].episode, items[i].step) for i in mb.index.tolist())
                values = {k: v for k, v in stats.items() if k not in ("log_probs", "ratio")}
                values.update(loss=loss)
                keys = keys or list(values)
                row = torch.stack([values[k].detach() for k in keys])
                row = row.to(torch.float32 if row.device.type == "mps" else torch.float64)
                totals = row if totals is None else totals + row
                count += 1
            self.seen.append(seen)
        self.updates += 1
        return self.summary(items, keys, totals, count)

    @staticmethod
    def summary(items: Sequence[Transition], keys: Sequence[str], totals: torch.Tensor, count: int
                ) -> dict[str, float]:
        """The update's statistics (means over its optimizer steps, read back once) and its rewards."""
        out = dict(zip(keys, (totals / count).tolist(), strict=True))
        rewards = [t.reward for t in items]
        out.update(reward_mean=sum(rewards) / len(rewards), reward_min=min(rewards), reward_max=max(rewards),
                   transitions=float(len(items)))
        return out


__all__ = [
    "IMPOConfig",
    "IMPOLearner",
    "Minibatch",
    "Transition",
    "advantages_and_returns",
    "at_actions",
    "impo_loss",
    "make_minibatches",
    "memory_regularisation",
    "merge_minibatches",
    "merged_groups",
    "policy_pass",
    "policy_value_pass",
    "token_log_probs",
    "transitions",
]

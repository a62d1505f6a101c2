"""The MRL loop: collect through the runtime, reward, IMPO update, evaluate.

    for stage in curriculum:                 (steps, strategy)
      for epoch in stage:                    (global epoch e: reset probability and unfreeze schedules)
        for each batch of `batch_episodes` episodes:
          logs    = collect_episodes(reactive, batch)     a fresh ReactiveModel over the policy (its own lane
                                                          thread), disposed once the collection is committed
          rewards = MemoryRetentionReward(logs)           on token ids (the fact-value term on the answer text)
          IMPO update on logs (+ replay buffer)           weights change in place, between collections only
        evaluate: held-out synthetic episodes (split "eval"), greedy: exact-match recall of the fact in the
                  last answer (`recall_hit`) and the mean reward; early stopping on the eval reward

TensorBoard scalars (reward mean/min/max; ``value_term_mean``, the fact-value term's mean over the collection's
question steps, i.e. the recall of the training answers, whatever ``reward.value_weight``; policy/value loss, KL,
entropy, STM change, recall), tqdm, a reward-curve PNG and ``final/`` (RxT ``save_pretrained`` + tokenizer +
``critic.pt``) in ``train.output_dir``. With ``train.save_every`` N > 0, the policy is also saved every N updates as
``snapshots/update-<n>/`` (loads with ``RxT.from_pretrained``; the newest ``train.keep_last`` kept, 0 = all), so a
run can be scored afterwards at several points, as IMPO's eval reward moves by less than the benchmark's noise.
"""

from __future__ import annotations

import copy
import random
import shutil
import time
from collections import deque
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from rxnn_runtime.messages import GenerationOptions
from rxnn_runtime.model_executor import ModelExecutor
from rxnn_runtime.reactive_model import ReactiveModel
from rxt.freezing import set_trainable
from rxt.model import RxT
from training.callbacks import EarlyStopping
from training.data.records import EpisodeRecord
from training.data.synthetic import SyntheticDialogueConfig, generate_episodes, recall_hit
from training.mrl.critic import Critic
from training.mrl.curriculum import CurriculumStage, MRLConfig, at_epoch
from training.mrl.episodes import EpisodeLog, collect_episodes, save_episode_logs
from training.mrl.impo import IMPOLearner
from training.mrl.rewards import compute_rewards, value_hit_rate
from training.nonfinite import NonFiniteLossGuard
from training.optim import FUSED_DEVICES
from training.plumbing import ScalarLog, UnfreezeSchedule, plot_curves, resolve_device, write_metrics
from training.rewards import model_embedding
from training.time_budget import TimeBudget
from training.trainer import seed_everything

SNAPSHOT_DIR = "snapshots"


def list_snapshots(output_dir: str | Path) -> list[Path]:
    """The policy snapshots of a run (`MRLTrainer.save_snapshot`), oldest first."""
    root = Path(output_dir) / SNAPSHOT_DIR
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and p.name.startswith("update-") and p.name[7:].isdigit()]
    return sorted(found, key=lambda p: int(p.name[7:]))


class MRLTrainer:
    """Holds the policy, its frozen reference copy, the critic, the optimizer and the runtime.

    The loop differs from `Trainer`'s (collections through the runtime, then IMPO updates), the plumbing does
    not: device choice, TensorBoard, early stopping (`EarlyStopping` on the eval reward), the unfreeze schedule
    (per epoch), metrics.json and the curve plot are the shared parts of `training.plumbing`/`callbacks`."""

    def __init__(self, config: MRLConfig, model: RxT | None = None, tokenizer: Any = None) -> None:
        if model is None or tokenizer is None:
            from training.model_loading import load_model_and_tokenizer

            model, tokenizer = load_model_and_tokenizer(config.model, config.tokenizer, config.model_overrides)
        self.config = config
        self.cfg = config.train
        self._nonfinite = NonFiniteLossGuard(self.cfg.nonfinite_loss_patience)
        seed_everything(self.cfg.seed)
        self.device = resolve_device(self.cfg.device)
        self.policy = model.to(self.device).eval()
        self.tokenizer = tokenizer
        self.reference = copy.deepcopy(self.policy).eval()
        set_trainable(self.reference.parameters(), False)
        self.critic = Critic.from_model(self.policy).to(self.device)
        set_trainable(self.policy.parameters(), True)
        self.optimizer = torch.optim.AdamW(
            [*self.policy.parameters(), *self.critic.parameters()], lr=self.cfg.lr, betas=self.cfg.betas,
            eps=self.cfg.eps, weight_decay=self.cfg.weight_decay,
            fused=self.device.type in FUSED_DEVICES,  # one kernel per step where torch has it, as build_optimizer
        )
        self.learner = IMPOLearner(self.policy, self.critic, self.optimizer, config.impo_config(self.device),
                                   reference=self.reference, pad_id=tokenizer.pad_id, device=self.device)
        self.unfreeze = UnfreezeSchedule(config.unfreeze_schedule, self.policy.parameter_groups(),
                                         "MRLConfig.unfreeze_schedule")
        embed = model_embedding(self.policy.embedding) if config.reward.get("cosine_weight", 1.0) > 0 else None
        self.embed = embed
        self.reward = config.reward_fn()
        self.last_step_reward = config.reward_fn("long_range") if config.long_range_last_step else None
        self.replay: deque[EpisodeLog] = deque(maxlen=config.replay_buffer_size or None)
        self.rng = random.Random(self.cfg.seed)
        self.output_dir = Path(self.cfg.output_dir)
        self.history: list[dict[str, float]] = []
        self.eval_history: list[dict[str, float]] = []
        self.updates = 0
        self.stop_reason: str | None = None
        self.should_stop = False
        self.early_stopping = EarlyStopping(self.cfg.early_stopping_patience, metric="reward_mean", mode="max") \
            if self.cfg.early_stopping_patience else None
        self.scalar_log = ScalarLog(self.output_dir / "tensorboard" / self.cfg.run_name)
        self.executor: ModelExecutor | None = None  # built by the first `runtime`, reused by every later one
        self.collect_timing: dict[str, float] = {}  # the latest `collect`: runtime and reward seconds

    # -- plumbing --------------------------------------------------------------------------------------------
    def runtime(self) -> ReactiveModel:
        """A fresh, unconnected runtime for one collection. `collect_episodes` queues every session's messages
        before connecting it, and a runtime takes the messages sent before `connect` in one lane action: the
        sessions are primed in one memory-update pass and admitted in one prefill, and stay in step. A runtime
        connected by an earlier collection takes each message in a lane action of its own with a step between
        two, which admits one session per step (a 128-episode turn then ran 128 single-row prefills and memory
        updates, staggered)."""
        if self.executor is None:  # one executor for every collection: its CUDA graphs are captured once per
            # shape, not again by each collection's fresh runtime (a 128 x 8 collection meets 16 shapes); the
            # graphs read the weights in place, which the IMPO updates change in place
            self.executor = ModelExecutor(self.policy, max_slots=self.config.batch_episodes,
                                          pad_id=self.tokenizer.pad_id, eos_id=self.tokenizer.eos_id,
                                          use_cuda_graphs=self.config.cuda_graphs and self.device.type == "cuda")
        return ReactiveModel(self.policy, self.tokenizer, max_batch_size=self.config.batch_episodes,
                             executor=self.executor)

    def log_scalars(self, prefix: str, values: dict[str, float], step: int) -> None:
        self.scalar_log.scalars(prefix, values, step)

    @property
    def trainable_groups(self) -> list[str] | None:  # as SMATTrainer.trainable_groups
        return self.unfreeze.current

    def apply_unfreeze_schedule(self, epoch: int) -> list[str]:
        return self.unfreeze.apply(epoch)

    def request_stop(self, reason: str) -> None:
        """What `EarlyStopping` calls (the `Trainer` interface)."""
        if not self.should_stop:
            self.should_stop, self.stop_reason = True, reason

    def options(self, temperature: float | None = None) -> GenerationOptions:
        c = self.config
        t = c.temperature if temperature is None else temperature
        return GenerationOptions(max_new_tokens=c.max_new_tokens, temperature=t, top_k=c.top_k, top_p=c.top_p,
                                 seed=0 if t > 0 else None, return_log_probs=True)

    # -- data ------------------------------------------------------------------------------------------------
    def stage_episodes(self, stage: CurriculumStage, index: int, split: str = "train",
                       count: int | None = None) -> list[EpisodeRecord]:
        count = stage.episodes_per_epoch * stage.epochs if count is None else count
        if self.config.data and split == "train":
            from training.stages.data_config import load_sources

            records = load_sources(self.config.data, "episode")
            return [r for r in records if isinstance(r, EpisodeRecord)]
        seed = self.config.synthetic_seed + 1000 * index + (7 if split == "eval" else 0)
        return generate_episodes(SyntheticDialogueConfig(
            num_episodes=count, num_turns=stage.steps - 1, style=stage.strategy, split=split, seed=seed,
        ))

    # -- one collection + update -----------------------------------------------------------------------------
    def collect(self, episodes: Sequence[EpisodeRecord], stage: CurriculumStage, reset_prob: float,
                temperature: float | None = None, teacher_forcing: bool | None = None) -> list[EpisodeLog]:
        tf = self.config.teacher_forcing if teacher_forcing is None else teacher_forcing
        started = time.perf_counter()
        reactive = self.runtime()
        try:
            logs = collect_episodes(reactive, episodes, options=self.options(temperature), teacher_forcing=tf,
                                    reset_prob=reset_prob, generator=self.rng, max_steps=stage.steps,
                                    strategy=stage.strategy)
            reactive.wait_idle()
        finally:
            reactive.dispose()  # no collection in flight once it returns: the update may change the weights
        collected = time.perf_counter()
        compute_rewards(logs, self.reward, pad_id=self.tokenizer.pad_id, last_step_reward=self.last_step_reward,
                        embed=self.embed, device=self.device)
        # where the latest collection's seconds went (the rewards read their values back: the device is done)
        self.collect_timing = {"runtime_s": collected - started, "rewards_s": time.perf_counter() - collected}
        return logs

    def update(self, logs: Sequence[EpisodeLog]) -> dict[str, float]:
        """IMPO on ``logs`` plus the replay buffer (`collect` has disposed of its runtime: nothing in flight)."""
        batch = [*logs, *self.replay]
        stats = self.learner.update(batch)
        value_term = value_hit_rate(logs)  # this collection's, not the replayed episodes'
        if value_term is not None:
            stats["value_term_mean"] = value_term
        self._nonfinite.check(self.updates + 1, {"loss": stats.get("policy_loss", 0.0) + stats.get("value_loss", 0.0)})
        if self.config.replay_buffer_size:
            self.replay.extend(logs)
        self.updates += 1
        self.history.append({"update": self.updates, **stats})
        self.log_scalars("train", {k: v for k, v in stats.items() if k != "transitions"}, self.updates)
        if self.cfg.save_every and self.updates % self.cfg.save_every == 0:
            self.save_snapshot()
        return stats

    def save_snapshot(self) -> Path:
        """The policy now (weights, config, tokenizer) as ``snapshots/update-<n>/``: a model folder, not a resumable
        checkpoint (no optimizer or critic). Written whole, then renamed into place, so a killed run never leaves a
        half-written folder under that name; then all but the newest ``keep_last`` are deleted."""
        root = self.output_dir / SNAPSHOT_DIR
        folder = root / f"update-{self.updates:06d}"
        partial = root / f".partial-{folder.name}"
        shutil.rmtree(partial, ignore_errors=True)
        self.policy.save_pretrained(partial)
        self.tokenizer.save_pretrained(partial)
        shutil.rmtree(folder, ignore_errors=True)
        partial.rename(folder)
        if self.cfg.keep_last:
            for old in list_snapshots(self.output_dir)[: -self.cfg.keep_last]:
                shutil.rmtree(old, ignore_errors=True)
        return folder

    @torch.no_grad()
    def evaluate(self, stage: CurriculumStage, index: int) -> dict[str, float]:
        """Greedy answers on held-out synthetic episodes: recall of the fact in the last answer, mean reward."""
        if self.config.eval_episodes == 0:
            return {}
        episodes = self.stage_episodes(stage, index, "eval", self.config.eval_episodes)
        logs = self.collect(episodes, stage, reset_prob=1.0, temperature=self.config.eval_temperature,
                            teacher_forcing=False)
        hits = [recall_hit(log.steps[-1].answer_text, str(log.metadata.get("fact_value", "")))
                for log in logs if log.steps]
        rewards = [s.reward for log in logs for s in log.steps]
        return {"recall": sum(hits) / max(len(hits), 1), "reward_mean": sum(rewards) / max(len(rewards), 1)}

    # -- the whole run ---------------------------------------------------------------------------------------
    def fit(self) -> Path:
        c = self.config
        epoch = 0
        stop = False
        bar = tqdm(total=sum(s.epochs * s.episodes_per_epoch for s in c.curriculum), desc=self.cfg.run_name,
                   unit="episode")
        # checked between updates: the curriculum is cut short (no step horizon to move, unlike `Trainer`)
        budget = TimeBudget(self.cfg.max_minutes, 0) if self.cfg.max_minutes > 0 else None
        try:
            if c.eval_episodes:
                start = self.evaluate(c.curriculum[0], 0)
                self.eval_history.append({"epoch": 0, **start})
                self.log_scalars("eval", start, 0)
            for index, stage in enumerate(c.curriculum):
                episodes = self.stage_episodes(stage, index)
                for stage_epoch in range(stage.epochs):
                    self.apply_unfreeze_schedule(epoch)
                    reset_prob = at_epoch(c.reset_prob_schedule, epoch)
                    chosen = self._epoch_episodes(episodes, stage, stage_epoch)
                    for start in range(0, len(chosen), c.batch_episodes):
                        logs = self.collect(chosen[start : start + c.batch_episodes], stage, reset_prob)
                        if c.save_episode_logs:
                            save_episode_logs(self.output_dir / "episodes" / f"update-{self.updates + 1:06d}.msgpack",
                                              logs)
                        stats = self.update(logs)
                        bar.update(len(logs))
                        bar.set_postfix(reward=f"{stats['reward_mean']:.3f}", kl=f"{stats['kl']:.4f}")
                        if budget is not None and budget.expired():
                            self.stop_reason = f"time budget of {self.cfg.max_minutes} min reached"
                            stop = True
                            break
                    epoch += 1
                    if c.eval_episodes:  # also after a cut-short epoch: the final figures
                        ev = self.evaluate(stage, index)
                        self.eval_history.append({"epoch": epoch, "stage": index, **ev})
                        self.log_scalars("eval", ev, epoch)
                        if self.early_stopping is not None:
                            self.early_stopping.on_eval(self, ev)
                            stop = stop or self.should_stop
                    if stop:
                        break
                if stop:
                    break
        finally:
            bar.close()
        return self.finish()

    def _epoch_episodes(self, episodes: list[EpisodeRecord], stage: CurriculumStage, stage_epoch: int):
        n = stage.episodes_per_epoch
        if len(episodes) >= n * (stage_epoch + 1):
            return episodes[stage_epoch * n : (stage_epoch + 1) * n]
        return [episodes[(stage_epoch * n + i) % len(episodes)] for i in range(n)]

    def plot_reward_curve(self, path: str | Path | None = None) -> Path | None:
        per_epoch = max(1, len(self.history) // max(1, len(self.eval_history) - 1))
        return plot_curves(
            Path(path or self.output_dir / "reward_curve.png"),
            [("train", [h["update"] for h in self.history], [h["reward_mean"] for h in self.history], "-"),
             ("eval", [h["epoch"] * per_epoch for h in self.eval_history],
              [h.get("reward_mean", 0.0) for h in self.eval_history], "o-")],
            xlabel="update", ylabel="mean reward", title=self.cfg.run_name)

    def finish(self) -> Path:
        final = self.output_dir / "final"
        self.policy.save_pretrained(final)
        self.tokenizer.save_pretrained(final)
        torch.save(self.critic.state_dict(), final / "critic.pt")
        write_metrics(self.output_dir / "metrics.json",
                      {"train": self.history, "eval": self.eval_history, "stop_reason": self.stop_reason})
        self.plot_reward_curve()
        self.close()
        return final

    def close(self) -> None:
        self.scalar_log.close()


__all__ = ["MRLTrainer", "list_snapshots"]

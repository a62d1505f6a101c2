"""MRL settings: the curriculum of episode lengths and strategies, the schedules and the IMPO coefficients.

YAML (``rxnn train mrl --config examples/configs/tiny_mrl.yaml``)::

    model: runs/tiny_smat/final
    curriculum:
      - {steps: 2, strategy: long_range, epochs: 2, episodes_per_epoch: 32}
      - {steps: 4, strategy: cumulative, epochs: 2, episodes_per_epoch: 32}
    reset_prob_schedule: [[0, 1.0], [2, 0.5]]     # [global epoch, chance an episode starts from the initial STM]
    unfreeze_schedule: [[0, [memory]], [2, [memory, rest]]]   # [global epoch, RxT.parameter_groups() names]
    reward: {bleu_weight: 1.0, cosine_weight: 1.0, length_weight: 0.1}   # MemoryRetentionReward fields
    # (value_weight > 0 adds the fact-value term: does the question's answer name the fact value, as recall judges)

``steps`` is the number of follow-up queries per episode (2, 4, 8, 16 ...). Without ``data`` each stage draws
synthetic memory dialogues (`training.data.synthetic`) with ``steps - 1`` intermediate turns in the stage's
strategy; with ``data`` (episode sources) the episodes are cut to ``steps`` follow-ups. Evaluation uses held-out
synthetic episodes (``split: eval``) of the stage's shape.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from itertools import pairwise
from typing import Any, Literal

import torch

from training.config import ConfigError, TrainConfig
from training.mrl.impo import IMPOConfig
from training.stages.data_config import DataSource
from training.stages.stage_config import ModelStageConfig

STRATEGIES = ("cumulative", "long_range")


@dataclass
class CurriculumStage:
    steps: int = 2
    strategy: Literal["cumulative", "long_range"] = "long_range"
    epochs: int = 1
    episodes_per_epoch: int = 32

    def __post_init__(self) -> None:
        if isinstance(self.steps, bool) or self.steps < 1:
            raise ConfigError(f"CurriculumStage.steps={self.steps!r} must be >= 1")
        if self.strategy not in STRATEGIES:
            raise ConfigError(f"CurriculumStage.strategy={self.strategy!r} must be one of {list(STRATEGIES)}")
        if self.epochs < 1 or self.episodes_per_epoch < 1:
            raise ConfigError("CurriculumStage.epochs and episodes_per_epoch must be >= 1")


@dataclass
class MRLConfig(ModelStageConfig):
    """Stage-5 settings. ``model``/``tokenizer``/``model_overrides`` go to `load_model_and_tokenizer`
    (usually stage 4's ``final/``). ``train`` gives lr, betas, weight decay, grad clipping, seed, device,
    output directory and ``early_stopping_patience`` (evaluations without a better eval reward; 0 = off)."""

    train: TrainConfig = field(default_factory=lambda: TrainConfig(run_name="mrl", warmup_steps=0, lr=1e-4))
    curriculum: list[CurriculumStage] = field(default_factory=lambda: [CurriculumStage()])
    data: list[DataSource] = field(default_factory=list)
    synthetic_seed: int = 0
    batch_episodes: int = 8  # sessions collected together (the runtime's max_batch_size)
    max_new_tokens: int = 32
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    teacher_forcing: bool = True
    reset_prob_schedule: list[tuple[int, float]] = field(default_factory=lambda: [(0, 1.0)])
    unfreeze_schedule: list[tuple[int, list[str]]] = field(
        default_factory=lambda: [(0, ["memory"]), (1, ["memory", "rest"])]
    )
    replay_buffer_size: int = 0  # episodes of earlier collections trained on again (0 = off)
    reward: dict[str, Any] = field(default_factory=lambda: {"cosine_weight": 0.0})
    long_range_last_step: bool = True  # score a long-range episode's last step in "long_range" reward mode
    ppo_epochs: int = 2
    minibatch_size: int = 16
    clip_eps: float = 0.2
    entropy_coef: float = 0.01
    kl_coef: float = 0.01
    memory_reg_coef: float = 1e-3
    value_coef: float = 0.5
    use_gae: bool = False
    gamma: float = 0.99
    gae_lambda: float = 0.95
    eval_episodes: int = 16
    eval_temperature: float = 0.0
    save_episode_logs: bool = False  # write each collection to output_dir/episodes/*.msgpack
    # the collection runtime's decode steps, prefills and memory updates as CUDA graphs (GPU only; the trainer's
    # one executor captures each shape once, the graphs read the weights in place). On by default since measured
    # on an H200 (128 episodes x 8 steps: the collection 1.15 s with graphs, 5-11 s without; the capture cost,
    # once per trainer, about 2 s: benchmarks/results/train_throughput_mrl.json)
    cuda_graphs: bool = True
    # the IMPO update's optimizer steps at static shapes, each shape's whole step a CUDA graph
    # (`training.mrl.impo_graphs`: 1.26 s an update against 7.1 s eager, same file). None: as ``cuda_graphs`` on
    # a CUDA device, the eager update elsewhere; True: the static shapes anywhere (graphed on CUDA, padded but
    # eager on the CPU); False: the eager update
    update_cuda_graphs: bool | None = None

    def __post_init__(self) -> None:
        def fail(name: str, limit: str) -> None:
            raise ConfigError(f"MRLConfig.{name}={getattr(self, name)!r} must be {limit}")

        if not self.curriculum:
            fail("curriculum", "a non-empty list of stages")
        for name in ("batch_episodes", "max_new_tokens", "ppo_epochs", "minibatch_size"):
            if isinstance(getattr(self, name), bool) or getattr(self, name) < 1:
                fail(name, ">= 1")
        for name in ("replay_buffer_size", "eval_episodes"):
            if getattr(self, name) < 0:
                fail(name, ">= 0")
        if not 0.0 <= self.temperature <= 10.0:
            fail("temperature", "in [0, 10]")
        self.reset_prob_schedule = [(int(e), float(p)) for e, p in self.reset_prob_schedule]
        self.unfreeze_schedule = [(int(e), list(g)) for e, g in self.unfreeze_schedule]
        for name in ("reset_prob_schedule", "unfreeze_schedule"):
            epochs = [e for e, _ in getattr(self, name)]
            if not epochs or epochs[0] != 0 or any(b <= a for a, b in pairwise(epochs)):
                fail(name, "a non-empty list of [epoch, value] with strictly increasing epochs, the first 0")
        if any(not 0.0 <= p <= 1.0 for _, p in self.reset_prob_schedule):
            fail("reset_prob_schedule", "probabilities in [0, 1]")
        groups = {g for _, gs in self.unfreeze_schedule for g in gs}
        if not groups <= {"memory", "rest"} or any(not gs for _, gs in self.unfreeze_schedule):
            fail("unfreeze_schedule", "entries naming groups from ['memory', 'rest']")
        self.impo_config()  # fail now on bad coefficients
        self.reward_fn()

    def impo_config(self, device: Any = None) -> IMPOConfig:
        """The update's settings; ``device`` (the trainer's) decides the default of ``update_cuda_graphs``."""
        graphs = self.update_cuda_graphs
        if graphs is None:
            graphs = self.cuda_graphs and device is not None and torch.device(device).type == "cuda"
        try:
            return IMPOConfig(
                clip_eps=self.clip_eps, entropy_coef=self.entropy_coef, kl_coef=self.kl_coef,
                memory_reg_coef=self.memory_reg_coef, value_coef=self.value_coef, use_gae=self.use_gae,
                gamma=self.gamma, gae_lambda=self.gae_lambda, ppo_epochs=self.ppo_epochs,
                minibatch_size=self.minibatch_size, max_grad_norm=self.train.max_grad_norm, seed=self.train.seed,
                cuda_graphs=graphs,
            )
        except ValueError as exc:
            raise ConfigError(str(exc)) from exc

    def reward_fn(self, mode: str | None = None, embed: Any = None):
        from training.rewards import MemoryRetentionReward

        kwargs = dict(self.reward)
        if mode is not None:
            kwargs["mode"] = mode
        if embed is not None and "embed" not in kwargs:
            kwargs["embed"] = embed
        try:
            return MemoryRetentionReward(**kwargs)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"config key 'reward': {exc}") from exc

    @property
    def total_epochs(self) -> int:
        return sum(s.epochs for s in self.curriculum)


def at_epoch(schedule: Sequence[tuple[int, Any]], epoch: int) -> Any:
    """The value of the last entry whose epoch is <= ``epoch``."""
    current = schedule[0][1]
    for start, value in schedule:
        if start <= epoch:
            current = value
    return current


__all__ = ["STRATEGIES", "CurriculumStage", "MRLConfig", "at_epoch"]

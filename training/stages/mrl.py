"""Stage 5: Memory Reinforcement Learning with IMPO (``rxnn train mrl --config file.yaml``).

Episodes run as sessions of the runtime (`training.mrl.episodes`), rewards are `MemoryRetentionReward` on token
ids, updates are IMPO (`training.mrl.impo`), the loop and its schedules are in `training.mrl.trainer` and
`training.mrl.curriculum`. ``train_from_logs`` runs offline MRL on recorded episode files.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from training.mrl.curriculum import CurriculumStage, MRLConfig
from training.mrl.episodes import load_episode_logs
from training.mrl.rewards import compute_rewards
from training.mrl.trainer import MRLTrainer

CONFIG_CLASS = MRLConfig


def run_stage(config: MRLConfig, *, resume: bool = False, callbacks: Sequence[Any] = ()) -> Path:
    """Run the MRL curriculum and return the ``final/`` model directory."""
    if not isinstance(config, MRLConfig):
        raise TypeError(f"run_stage needs an MRLConfig, got {type(config).__name__}")
    if resume:
        raise NotImplementedError("MRL does not resume from checkpoints yet; start from a saved model instead")
    trainer = MRLTrainer(config)
    try:
        return trainer.fit()
    finally:
        trainer.close()


def train_from_logs(config: MRLConfig, log_paths: Sequence[str | os.PathLike], *, epochs: int = 1,
                    trainer: MRLTrainer | None = None) -> Path:
    """Offline MRL: IMPO updates on recorded episode files (``epochs`` passes, ``batch_episodes`` episodes per
    update, in file order). Steps without a stored reward are scored with the config's reward. Returns ``final/``."""
    trainer = trainer or MRLTrainer(config)
    logs = [log for path in log_paths for log in load_episode_logs(path)]
    if not logs:
        raise ValueError("train_from_logs: the episode files hold no episodes")
    missing = [log for log in logs if any(s.reward is None for s in log.steps)]
    if missing:
        compute_rewards(missing, trainer.reward, pad_id=trainer.tokenizer.pad_id,
                        last_step_reward=trainer.last_step_reward, embed=trainer.embed)
    try:
        for epoch in range(epochs):
            trainer.apply_unfreeze_schedule(epoch)
            for start in range(0, len(logs), config.batch_episodes):
                trainer.update(logs[start : start + config.batch_episodes])
        return trainer.finish()
    finally:
        trainer.close()


__all__ = ["CONFIG_CLASS", "CurriculumStage", "MRLConfig", "MRLTrainer", "run_stage", "train_from_logs"]

"""Stage 5: Memory Reinforcement Learning with IMPO on the runtime's event graph.

- `training.mrl.episodes`: `collect_episodes` (sessions of a `ReactiveModel`), `EpisodeLog`/`StepLog`,
  `save_episode_logs`/`load_episode_logs` (msgpack);
- `training.mrl.rewards`: `compute_rewards` (any `training.rewards` callable, on token ids);
- `training.mrl.critic`: `Critic` (encoder copy + value head over saved interaction + next query);
- `training.mrl.impo`: the IMPO loss and `IMPOLearner`;
- `training.mrl.curriculum`: `MRLConfig`, `CurriculumStage`; `training.mrl.trainer`: `MRLTrainer`.
"""

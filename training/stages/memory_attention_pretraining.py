"""Stage 3: memory-attention self-supervised pre-training (``rxnn train mem-attn --config file.yaml``).

The encoder is frozen; only the memory-attention network is trained. For a batch of episodes (a single
interaction is a one-turn episode), starting from the documented initial memory STM_0, turn t does::

    ED_t     = Encoder(interaction_t)                                  no_grad (frozen)
    target_t = (1 - w_t) * STM_{t-1}.detach() + w_t * pool_to_slots(ED_t)      built BEFORE the network runs
    new_t    = MemAttn(STM_{t-1}, ED_t + noise, key_valid)
    loss    += -cos(new_t, target_t)   per (layer, row, slot), over the D features
    STM_t    = new_t  (detached unless ``detach_stm`` is False)

The target mixes the previous memory with the *encoded data* pooled to the slot count (masked adaptive
average pooling over the real tokens, `training.pooling`); it is detached and never contains the network's
output of the same step (the RxNN 0.2 bug mixed in ``new_t`` itself, which only pulls ``new_t`` towards
STM_{t-1}). The loss is the mean of ``-cos`` over layers, slots and the rows still active at each turn.

New-data weight schedule: ``w_0 = new_data_weight_first`` (~0.9: the first turn is mostly new data), then
``w_t = max(new_data_weight_min, new_data_weight_start - t * new_data_weight_decay)`` for t >= 1 (defaults
0.45, 0.40, ... as the RxT papers suggest). With ``weight_jitter = j > 0``, in training each row's weight is
multiplied by ``1 + U(-j, j)`` (clamped to [0, 1]) from a generator seeded with (seed, rank, step, micro-batch),
so a resumed run draws the same jitter. ``encoder_noise`` adds N(0, noise^2) to the encoded data fed to the
memory attention (not to the target): a denoising objective. Both are off in evaluation.

Metrics: ``cosine`` (mean cosine similarity to the target, the number to watch: it goes up),
``new_data_weight`` (mean w over turns).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from rxt.freezing import freeze, unfreeze
from rxt.model import RxT
from training.callbacks import Callback
from training.config import ConfigError, TrainConfig
from training.data.datasets import EpisodeDataset
from training.data.records import EpisodeRecord, InteractionRecord
from training.pooling import pool_to_slots
from training.stages.episode_stage import EpisodeTrainer, RxTObjective
from training.stages.stage_config import DataStageConfig
from training.trainer import StepOutput


@dataclass
class MemoryAttentionStageConfig(DataStageConfig):
    """Stage-3 settings. ``model``/``tokenizer``/``model_overrides`` go to `load_model_and_tokenizer`
    (a preset name or a ``save_pretrained`` directory, usually stage 2's ``final/``)."""

    train: TrainConfig = field(default_factory=lambda: TrainConfig(run_name="mem-attn"))
    record_kind: str = "episode"  # "episode" or "interaction" (one-turn episodes)
    max_len: int = 256
    max_turns: int | None = None
    new_data_weight_first: float = 0.9
    new_data_weight_start: float = 0.5
    new_data_weight_decay: float = 0.05
    new_data_weight_min: float = 0.05
    weight_jitter: float = 0.0
    encoder_noise: float = 0.0
    detach_stm: bool = True

    def __post_init__(self) -> None:
        def fail(name: str, limit: str) -> None:
            raise ConfigError(f"{type(self).__name__}.{name}={getattr(self, name)!r} must be {limit}")

        for name in ("new_data_weight_first", "new_data_weight_start", "new_data_weight_min"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                fail(name, "in [0, 1]")
        if self.new_data_weight_decay < 0:
            fail("new_data_weight_decay", ">= 0")
        if not 0.0 <= self.weight_jitter <= 1.0:
            fail("weight_jitter", "in [0, 1]")
        if self.encoder_noise < 0:
            fail("encoder_noise", ">= 0")
        if not 0.0 <= self.val_fraction < 1.0:
            fail("val_fraction", "in [0, 1)")
        if self.record_kind not in ("episode", "interaction"):
            fail("record_kind", "'episode' or 'interaction'")
        if isinstance(self.max_len, bool) or self.max_len < 2:
            fail("max_len", ">= 2")
        if self.max_turns is not None and self.max_turns < 1:
            fail("max_turns", ">= 1 or null")

    def new_data_weight(self, turn: int) -> float:
        """The scheduled w_t (before jitter)."""
        if turn == 0:
            return self.new_data_weight_first
        return max(self.new_data_weight_min, self.new_data_weight_start - turn * self.new_data_weight_decay)


CONFIG_CLASS = MemoryAttentionStageConfig


def memory_target(
    stm_prev: torch.Tensor, encoded: torch.Tensor, key_valid: torch.Tensor | None, weight: torch.Tensor | float
) -> torch.Tensor:
    """``(1 - w) * STM_{t-1} + w * pool_to_slots(ED_t)``, detached; ``weight`` a float or per-row (B,)."""
    with torch.no_grad():
        pooled = pool_to_slots(encoded.detach(), key_valid, stm_prev.shape[2])
        w = torch.as_tensor(weight, dtype=pooled.dtype, device=pooled.device)
        if w.dim() == 1:
            w = w[None, :, None, None]
        return ((1.0 - w) * stm_prev.detach() + w * pooled).detach()


class MemoryAttentionObjective(RxTObjective):
    """The stage-3 step as a module (so DDP sees a forward): ``forward(turns, seed) -> dict`` of
    ``loss``, ``cosine``, ``weight``, ``tokens``. ``save_pretrained`` writes the RxT (and the tokenizer).

    With ``record = True`` every forward stores per-turn ``stm_prev``/``encoded``/``key_valid``/``weight``/
    ``target``/``new`` in ``self.trace`` (tests and debugging)."""

    def __init__(self, model: RxT, settings: MemoryAttentionStageConfig, tokenizer: Any = None) -> None:
        super().__init__(model, tokenizer)
        self.settings = settings
        self.trace: list[dict[str, torch.Tensor]] = []

    def turn_weights(self, turn: int, batch: int, generator: torch.Generator | None) -> torch.Tensor:
        w = torch.full((batch,), self.settings.new_data_weight(turn))
        j = self.settings.weight_jitter
        if self.training and j > 0 and generator is not None:
            w = w * (1.0 + (torch.rand(batch, generator=generator) * 2.0 - 1.0) * j)
        return w.clamp(0.0, 1.0)

    def forward(self, turns: Sequence[dict[str, torch.Tensor]], seed: int | None = None) -> dict[str, torch.Tensor]:
        model = self.model
        ids0 = turns[0]["input_ids"]
        batch, device = ids0.shape[0], ids0.device
        generator = torch.Generator().manual_seed(seed) if seed is not None else None
        stm = model.initial_memory(batch).to(device)
        self.trace = []
        # every sum and count stays on the device (masked sums, no `int(...)`): the step reads nothing back
        loss_sum = torch.zeros((), device=device)
        cos_sum = torch.zeros((), device=device)
        weight_sum = torch.zeros((), device=device)
        count = weight_n = tokens = torch.zeros((), device=device, dtype=torch.long)
        for t, turn in enumerate(turns):
            ids, key_valid = turn["input_ids"], turn["attention_mask"].bool()
            active = turn.get("active", key_valid.any(dim=1)).bool() & key_valid.any(dim=1)
            w = self.turn_weights(t, batch, generator).to(device, non_blocking=True)  # no wait for the GPU
            with torch.no_grad():
                encoded = model.encode(ids, key_valid)
            target = memory_target(stm, encoded, key_valid, w)  # before the network runs: no own output
            noisy = encoded
            if self.training and self.settings.encoder_noise > 0:
                noisy = encoded + torch.randn_like(encoded) * self.settings.encoder_noise
            new = model.memory_attention(stm, noisy, key_valid)
            cos = F.cosine_similarity(new.float(), target.float(), dim=-1)  # (L, B, S)
            rows = active[None, :, None].expand_as(cos)
            live = torch.where(rows, cos, torch.zeros_like(cos))
            loss_sum = loss_sum - live.sum()
            cos_sum = cos_sum + live.detach().sum()
            count = count + rows.sum()
            weight_sum = weight_sum + torch.where(active, w, torch.zeros_like(w)).sum()
            weight_n = weight_n + active.sum()
            tokens = tokens + (key_valid & active[:, None]).sum()
            if self.record:
                self.trace.append({"stm_prev": stm.detach(), "encoded": encoded, "key_valid": key_valid,
                                   "weight": w, "target": target, "new": new, "active": active})
            new = torch.where(active[None, :, None, None], new, stm)  # ended episodes keep their memory
            stm = new.detach() if self.settings.detach_stm else new
        denom = count.clamp(min=1)
        return {"loss": loss_sum / denom, "cosine": cos_sum / denom, "weight": weight_sum / weight_n.clamp(min=1),
                "tokens": tokens}

class MemoryAttentionTrainer(EpisodeTrainer):
    """Stage-3 trainer: freezes everything but ``model.memory_attention`` and trains it on episode batches
    (`collate_episodes`). ``self.unwrapped_model`` is the `MemoryAttentionObjective`; ``self.rxt`` the RxT."""

    auto_compile = False  # the step loops over the turns in Python: compile it only when asked (train.compile)

    def __init__(
        self,
        model: RxT,
        config: MemoryAttentionStageConfig,
        train_dataset: Sequence[Any],
        eval_dataset: Sequence[Any] | None = None,
        callbacks: Sequence[Callback] = (),
        tokenizer: Any = None,
        pad_id: int | None = None,
    ) -> None:
        self.check_model(model, "MemoryAttentionTrainer")
        freeze(model)
        unfreeze(model.memory_attention)
        self._micro = 0
        self._micro_step = -1
        super().__init__(MemoryAttentionObjective(model, config, tokenizer), config, train_dataset, eval_dataset,
                         callbacks, self.resolve_pad_id(pad_id, tokenizer))

    def _jitter_seed(self) -> int:
        if self._micro_step != self.step:
            self._micro_step, self._micro = self.step, 0
        self._micro += 1
        return (self.cfg.seed * 1_000_003 + self.dist.rank * 7_919 + self.step * 131 + self._micro) % (2**63)

    def compute_loss(self, model: nn.Module, batch: Any) -> StepOutput:
        out = model(batch, self._jitter_seed())
        metrics = {"cosine": out["cosine"].detach(), "new_data_weight": out["weight"]}  # read back at log steps
        return StepOutput(out["loss"], metrics, out["tokens"])

    def evaluate_batch(self, model: nn.Module, batch: Any) -> StepOutput:
        out = model(batch, None)
        return StepOutput(out["loss"], {"cosine": float(out["cosine"])}, int(out["tokens"]))  # evaluation


# ----------------------------------------------------------------------------------------------- entry point


def episodes_from(records: Sequence[Any]) -> list[EpisodeRecord]:
    """Episode records as they are; single interactions as one-turn episodes."""
    out = []
    for i, record in enumerate(records):
        if isinstance(record, EpisodeRecord):
            out.append(record)
        elif isinstance(record, InteractionRecord):
            out.append(EpisodeRecord(record.query, record.answer))
        else:
            raise TypeError(f"records[{i}] must be an EpisodeRecord or InteractionRecord, got {type(record).__name__}")
    return out


def prepare_episodes(config: Any, record_kind: str = "episode") -> tuple[RxT, Any, EpisodeDataset,
                                                                        EpisodeDataset | None]:
    """Stages 3-4, before training: data files exist, model + tokenizer load (an RxT, vocab sizes agree),
    ``max_len`` fits the model, records load (``val_fraction`` splits off an eval set when ``eval_data`` is
    empty), at least one batch. Every problem is a `ConfigError` naming the key."""
    from training.data.loaders import train_val_split
    from training.model_loading import load_model_and_tokenizer
    from training.stages.data_config import check_sources, load_sources

    config.train.validate()
    check_sources(config.data, "data")
    check_sources(config.eval_data, "eval_data", required=False)
    model, tokenizer = load_model_and_tokenizer(config.model, config.tokenizer, config.model_overrides)
    if config.max_len > model.config.max_seq_len:
        raise ConfigError(f"config key 'max_len'={config.max_len} exceeds the model's max_seq_len="
                          f"{model.config.max_seq_len}")
    records = episodes_from(load_sources(config.data, record_kind, "data"))
    eval_records = None
    if config.eval_data:
        eval_records = episodes_from(load_sources(config.eval_data, record_kind, "eval_data"))
    elif config.val_fraction > 0:
        records, eval_records = train_val_split(records, config.val_fraction, seed=config.train.seed)
    needed = config.train.batch_size * config.train.grad_accum_steps
    if len(records) < needed:
        raise ConfigError(f"config key 'data': {len(records)} training episodes, fewer than one batch of {needed} "
                          "(train.batch_size x train.grad_accum_steps)")
    train = EpisodeDataset(records, tokenizer, config.max_len, config.max_turns)
    evals = EpisodeDataset(eval_records, tokenizer, config.max_len, config.max_turns) if eval_records else None
    return model, tokenizer, train, evals


def run_stage(config: MemoryAttentionStageConfig, *, resume: bool = False, callbacks: Sequence[Callback] = ()) -> Path:
    """Run stage 3 and return the ``final/`` model directory (RxT ``save_pretrained`` + ``tokenizer.json``)."""
    from training.stages.joint_lm import train_and_finish

    if not isinstance(config, MemoryAttentionStageConfig):
        raise TypeError(f"run_stage needs a MemoryAttentionStageConfig, got {type(config).__name__}")
    model, tokenizer, train, evals = prepare_episodes(config, config.record_kind)
    trainer = MemoryAttentionTrainer(model, config, train, evals, callbacks=callbacks, tokenizer=tokenizer)
    return train_and_finish(trainer, resume)


__all__ = [
    "CONFIG_CLASS",
    "MemoryAttentionObjective",
    "MemoryAttentionStageConfig",
    "MemoryAttentionTrainer",
    "episodes_from",
    "memory_target",
    "prepare_episodes",
    "run_stage",
]

"""Stage 1: joint LM pre-training of the encoder (MLM) and the decoder (autoregressive).

One batch of texts ``[BOS] text [EOS]`` gives two views (`JointLMDataset`):

- the encoder reads a masked copy (BERT 80/10/10) and the MLM head predicts the masked tokens;
- the decoder reads the original text, causally, and predicts the next token. Its memory cross-attention reads
  the encoder's per-layer outputs ED (L, B, T, D), **detached** (no decoder gradient reaches the encoder) plus
  Gaussian noise of std ``encoder_noise_std`` (training only), with the padding mask as memory key mask. This
  aligns the decoder's memory cross-attention with the encoder's vector space before any STM exists.

``loss = ar_weight * L_AR + mlm_weight * L_MLM``; pads (and unmasked tokens for MLM) are -100 in the targets.

**The decoder peeks.** The encoder saw the whole text (bar the masked tokens), so through memory
cross-attention the decoder can read tokens it is supposed to predict. Its accuracy and perplexity here are
therefore NOT real language-model metrics; they are logged as ``ar_acc_peek`` / ``ar_ppl_peek``. Judge the
decoder by memory-aware evaluation (stage 4 and later), where the memory holds only earlier turns.

**Peek dropout.** Peeking also teaches the decoder to find a value it must repeat in its memory rather than in
its own context: after stages 1-2 of the third nano run the decoder copied nothing in context (held-out
in-context recall 0.000, `benchmarks/results/nano_training.json`). With ``peek_dropout`` = p the memory of a
fraction p of the documents (rows, or packed documents) is zeroed during training: their decoder reads a memory
that carries no information (zero keys and values) and must predict from its own context, so the stage teaches
in-context copying too.

The output ``<train.output_dir>/final/`` holds the RxT (``save_pretrained``), ``mlm_head.safetensors`` and
``tokenizer.json``; stage 2 starts from it.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from rxt.masks import key_padding_mask
from rxt.model import RxT
from rxt.tokenizer import RxTokenizer
from training.callbacks import Callback
from training.config import ConfigError, TrainConfig
from training.data.datasets import collate_lm_counted
from training.data.packing import document_masks, mask_tokens, mlm_positions
from training.heads import MLMHead
from training.metrics import accuracy_tensor, causal_lm_loss, masked_lm_loss
from training.packed_loader import PackedRowsLoader
from training.stages.data_config import check_sources
from training.stages.stage_config import DataStageConfig
from training.trainer import StepOutput, Trainer


@dataclass
class JointLMConfig(DataStageConfig):
    """Stage-1 config (the shared fields: `DataStageConfig`). ``model`` is a preset name or a saved model
    directory; ``tokenizer`` a tokenizer directory/file (default: the saved model's own, else the packaged one)."""

    max_len: int = 64
    mask_prob: float = 0.15
    ar_weight: float = 1.0
    mlm_weight: float = 1.0
    encoder_noise_std: float = 0.15
    tie_mlm_head: bool = True  # a new MLM head shares the token embedding
    pack: bool = True  # pack texts into rows of max_len tokens (training.data.packing); batch_size counts rows
    peek_dropout: float = 0.0  # the share of documents whose decoder reads a zeroed memory (see the docstring)

    def __post_init__(self) -> None:
        validate_joint_fields(self)


def validate_joint_fields(cfg: Any) -> None:
    def fail(name: str, limit: str) -> None:
        raise ConfigError(f"config key {name!r}={getattr(cfg, name)!r} must be {limit}")

    if cfg.max_len < 2:
        fail("max_len", ">= 2")
    if not 0.0 < cfg.mask_prob <= 1.0:
        fail("mask_prob", "in (0, 1]")
    if cfg.ar_weight < 0:
        fail("ar_weight", ">= 0")
    if cfg.mlm_weight < 0:
        fail("mlm_weight", ">= 0")
    if cfg.ar_weight == 0 and cfg.mlm_weight == 0:
        fail("ar_weight", "> 0 when mlm_weight is 0")
    if cfg.encoder_noise_std < 0:
        fail("encoder_noise_std", ">= 0")
    if not 0.0 <= cfg.val_fraction < 1.0:
        fail("val_fraction", "in [0, 1)")
    if not 0.0 <= cfg.peek_dropout < 1.0:
        fail("peek_dropout", "in [0, 1)")


CONFIG_CLASS = JointLMConfig


class JointLMModel(nn.Module):
    """An RxT plus its MLM head, run the stage-1/2 way: ``forward -> (decoder_logits, mlm_logits)``.

    ``save_pretrained(dir)`` writes the RxT, ``mlm_head.safetensors`` and (when given) ``tokenizer.json``.
    """

    def __init__(
        self, rxt: RxT, mlm_head: MLMHead, tokenizer: RxTokenizer | None = None, encoder_noise_std: float = 0.0,
        peek_dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.rxt = rxt
        self.mlm_head = mlm_head
        self.tokenizer = tokenizer
        self.encoder_noise_std = encoder_noise_std
        self.peek_dropout = peek_dropout

    def drop_peek(self, memory: torch.Tensor, doc: torch.Tensor | None = None) -> torch.Tensor:
        """``memory`` (L, B, T, D) with a random ``peek_dropout`` share of its documents zeroed (training only):
        whole rows, or for packed rows (``doc`` (B, T) document ids, -1 = padding) whole documents."""
        if not (self.training and self.peek_dropout > 0):
            return memory
        b, t = memory.shape[1], memory.shape[2]
        if doc is None:
            keep = torch.rand(b, 1, device=memory.device) >= self.peek_dropout  # (B, 1): per row
        else:  # one draw per (row, document id), looked up by each position's id: a document keeps or loses all
            keep = (torch.rand(b, t, device=memory.device) >= self.peek_dropout).gather(1, doc.clamp(min=0))
        return memory * keep[None, :, :, None].to(memory.dtype)

    def encoder_memory(
        self, encoder_ids: torch.Tensor, attention_mask: torch.Tensor | None, mlm_index: torch.Tensor | None = None,
        **packed: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(mlm_logits (B, T, V), memory (L, B, T, D))``: the memory is detached, noised when training.
        ``packed`` (``positions``, ``mask``) are passed to the encoder for packed rows; with ``mlm_index`` (K,)
        (flat positions, `training.data.packing.mlm_positions`) the MLM head runs there only: (1, K, V)."""
        encoded = self.rxt.encoder(encoder_ids, attention_mask, **packed)
        memory = encoded.hidden_states.detach()
        if self.training and self.encoder_noise_std > 0:
            memory = memory + self.encoder_noise_std * torch.randn_like(memory)
        hidden = encoded.last_hidden
        if mlm_index is not None:
            hidden = hidden.flatten(0, 1).index_select(0, mlm_index)[None]
        return self.mlm_head(hidden), memory

    def decode_with_memory(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None, memory: torch.Tensor,
        memory_valid: torch.Tensor | None, **packed: torch.Tensor,
    ) -> torch.Tensor:
        """Decoder logits (B, T, V) reading ``memory`` (L, B, S, D) whose valid keys are ``memory_valid`` (B, S)
        (or, for packed rows, ``packed`` = ``memory_mask``, ``positions``, ``self_mask``)."""
        if "memory_mask" not in packed:
            packed["memory_mask"] = key_padding_mask(memory_valid) if memory_valid is not None else None
        out = self.rxt.decoder(
            input_ids, attention_mask=attention_mask, memory=self.rxt.decoder.project_memory(memory), **packed
        )
        return out.logits

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None, encoder_ids: torch.Tensor,
        doc: torch.Tensor | None = None, positions: torch.Tensor | None = None, mlm_index: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Both views. With ``doc``/``positions`` (packed rows, `training.data.packing`) every attention, the
        decoder's memory cross-attention included, stays within a document; ``mlm_index`` see `encoder_memory`."""
        if doc is None:
            mlm_logits, memory = self.encoder_memory(encoder_ids, attention_mask)
            memory = self.drop_peek(memory)
            return self.decode_with_memory(input_ids, attention_mask, memory, attention_mask), mlm_logits
        both, causal = document_masks(doc)
        valid = doc >= 0
        mlm_logits, memory = self.encoder_memory(encoder_ids, valid, mlm_index, validate=False, positions=positions,
                                                 mask=both)
        memory = self.drop_peek(memory, doc)
        logits = self.decode_with_memory(input_ids, valid, memory, None, memory_mask=both, positions=positions,
                                         self_mask=causal, validate=False)
        return logits, mlm_logits

    def save_pretrained(self, directory: str | Path) -> Path:
        target = self.rxt.save_pretrained(directory)
        self.mlm_head.save(target)
        if self.tokenizer is not None:
            self.tokenizer.save_pretrained(target)
        return target


def freeze_unused_memory_system(rxt: RxT) -> None:
    """Stages 1-2 never run memory attention or the STM: freeze them (no optimizer state, no DDP unused-grad
    errors). The decoder's memory cross-attention stays trainable."""
    for module in (rxt.memory_attention, rxt.stm):
        for p in module.parameters():
            p.requires_grad_(False)


class JointLMTrainer(PackedRowsLoader, Trainer):
    """`Trainer` for stage 1 (and, via `SFTTrainer`, stage 2): batches from `collate_lm_counted` with
    ``input_ids``, ``attention_mask``, ``labels`` (AR, aligned), ``mlm_input_ids``, ``mlm_labels`` and
    ``num_targets``, or packed rows (`PackedRowsLoader`)."""

    peek_prefix = "ar"

    def __init__(self, model: JointLMModel, cfg: TrainConfig, train_dataset, eval_dataset=None, *, pad_id: int,
                 ar_weight: float = 1.0, mlm_weight: float = 1.0, callbacks=(), config=None,
                 mask_prob: float = 0.15) -> None:
        self.pad_id = pad_id
        self.mask_prob = mask_prob  # MLM rate of packed rows (`PackedRows` train data); datasets mask themselves
        self.ar_weight = ar_weight
        self.mlm_weight = mlm_weight
        super().__init__(model, cfg, train_dataset, eval_dataset, callbacks=callbacks, config=config)

    def collate(self, samples):
        return collate_lm_counted(samples, self.pad_id)

    def add_views(self, batch: dict[str, Any]) -> dict[str, Any]:
        """Packed rows: the encoder's MLM copy, drawn on the device."""
        if getattr(self, "_mlm", None) is None:
            tok = self.unwrapped_model.tokenizer
            if tok is None:
                raise ValueError("packed rows need the model's tokenizer (its [MASK] id and special ids)")
            special = set(tok.special_ids)
            randoms = torch.tensor([i for i in range(tok.vocab_size) if i not in special], device=self.device)
            self._mlm = (tok.mask_id, randoms)
        mask_id, random_ids = self._mlm
        # The MLM head runs on a fixed number of gathered positions (a cap far above mask_prob x tokens)
        cap = min(batch["input_ids"].numel(), int(batch["input_ids"].numel() * min(1.0, 2 * self.mask_prob)) + 64)
        batch["mlm_input_ids"], labels = mask_tokens(
            batch["input_ids"], batch.pop("maskable"), mask_prob=self.mask_prob, mask_id=mask_id,
            random_ids=random_ids, generator=self.step_generator(), shard=(self.dist.rank, self.dist.world_size),
            max_selected=cap)
        batch["mlm_index"] = mlm_positions(labels, cap)
        batch["mlm_labels"] = labels.flatten()[batch["mlm_index"]][None]
        return batch

    def compute_loss(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> StepOutput:
        packed = {k: batch[k] for k in ("doc", "positions", "mlm_index") if k in batch}
        logits, mlm_logits = model(batch["input_ids"], batch["attention_mask"], batch["mlm_input_ids"], **packed)
        ar = causal_lm_loss(logits, batch["labels"])
        mlm = masked_lm_loss(mlm_logits, batch["mlm_labels"])
        loss = self.ar_weight * ar + self.mlm_weight * mlm
        p = self.peek_prefix
        # device tensors: the Trainer reads a step's metrics back once
        metrics = {
            f"{p}_loss_peek": ar.detach(),
            f"{p}_acc_peek": accuracy_tensor(logits, batch["labels"], shifted=True),
            f"{p}_ppl_peek": ar.detach().float().exp(),
            "mlm_loss": mlm.detach(),
            "mlm_acc": accuracy_tensor(mlm_logits, batch["mlm_labels"], shifted=False),
        }
        # counted on the host (packed rows, `collate_lm_counted`); else a device count (no read-back either)
        num_tokens = batch["num_targets"] if "num_targets" in batch else (batch["labels"][:, 1:] != -100).sum()
        return StepOutput(loss=loss, metrics=metrics, num_tokens=num_tokens)


class _NewMasksEachEpoch(Callback):
    """Draw fresh MLM masks every epoch (the datasets mask deterministically per (seed, epoch, index))."""

    def __init__(self, *datasets) -> None:
        self.datasets = [d for d in datasets if d is not None and hasattr(d, "set_epoch")]

    def on_epoch(self, trainer, epoch):
        for d in self.datasets:
            d.set_epoch(epoch + 1)


# ------------------------------------------------------------------------------------------------ shared setup


def prepare(config: Any, record_kind: str):
    """Everything a joint-structure stage needs before training, failing with `ConfigError` naming the key:
    data files exist, model + tokenizer load (vocab sizes agree), ``max_len`` fits the model, records load."""
    from training.data.loaders import train_val_split
    from training.model_loading import load_model_and_tokenizer, mlm_head_for
    from training.stages.data_config import load_sources

    config.train.validate()
    check_sources(config.data, "data")
    check_sources(config.eval_data, "eval_data", required=False)
    rxt, tokenizer = load_model_and_tokenizer(config.model, config.tokenizer, config.model_overrides)
    if config.max_len > rxt.config.max_seq_len:
        raise ConfigError(
            f"config key 'max_len'={config.max_len} exceeds the model's max_seq_len={rxt.config.max_seq_len}"
        )
    model_dir = Path(config.model) if Path(config.model).is_dir() else None
    head = mlm_head_for(rxt, model_dir, tie=config.tie_mlm_head)
    records = load_sources(config.data, record_kind, "data")
    eval_records = load_sources(config.eval_data, record_kind, "eval_data") if config.eval_data else None
    if eval_records is None and config.val_fraction > 0:
        records, eval_records = train_val_split(records, config.val_fraction, seed=config.train.seed)
    needed = config.train.batch_size * config.train.grad_accum_steps
    if len(records) < needed:
        raise ConfigError(
            f"config key 'data': {len(records)} training records, fewer than one batch of {needed} "
            "(train.batch_size x train.grad_accum_steps)"
        )
    return rxt, tokenizer, head, records, eval_records


def packed_or(dataset: Any, config: Any, rxt: RxT, tokenizer: RxTokenizer) -> Any:
    """``dataset`` packed into rows of ``config.max_len`` tokens when ``config.pack`` (else as it is)."""
    if not config.pack:
        return dataset
    from training.data.packing import pack_dataset

    sources = ", ".join(s.path or s.name or s.kind for s in config.data) or "none"
    return pack_dataset(dataset, config.max_len, source=f"config key 'data' ({sources})",
                        max_len=rxt.config.max_seq_len, special_ids=tokenizer.special_ids, pad_id=tokenizer.pad_id)


def train_and_finish(trainer: Trainer, resume: bool, *datasets) -> Path:
    """Resume when asked (and a checkpoint exists), train, return ``output_dir/final``."""
    if resume:
        if any(trainer.checkpoint_dir.glob("step-*")):
            trainer.resume_from(trainer.checkpoint_dir)
        else:
            print(f"no checkpoint under {trainer.checkpoint_dir}; starting from step 0", file=sys.stderr)
    for d in datasets:
        if d is not None and hasattr(d, "set_epoch"):
            d.set_epoch(trainer.epoch)
    try:
        trainer.train()
    finally:
        trainer.close()
    return trainer.output_dir / "final"


def run_stage(config: JointLMConfig, *, resume: bool = False, callbacks=()) -> Path:
    """Run stage 1 and return the ``final/`` model directory."""
    from training.data.datasets import JointLMDataset

    if not isinstance(config, JointLMConfig):
        raise TypeError(f"run_stage needs a JointLMConfig, got {type(config).__name__}")
    rxt, tokenizer, head, records, eval_records = prepare(config, "text")
    freeze_unused_memory_system(rxt)
    train_ds = JointLMDataset(records, tokenizer, config.max_len, mask_prob=config.mask_prob, seed=config.train.seed)
    eval_ds = None
    if eval_records:
        eval_ds = JointLMDataset(eval_records, tokenizer, config.max_len, mask_prob=config.mask_prob,
                                 seed=config.train.seed + 1)
    model = JointLMModel(rxt, head, tokenizer, encoder_noise_std=config.encoder_noise_std,
                         peek_dropout=config.peek_dropout)
    trainer = JointLMTrainer(
        model, config.train, packed_or(train_ds, config, rxt, tokenizer), eval_ds, pad_id=tokenizer.pad_id,
        ar_weight=config.ar_weight, mlm_weight=config.mlm_weight, callbacks=[_NewMasksEachEpoch(train_ds), *callbacks],
        config=config, mask_prob=config.mask_prob,
    )
    return train_and_finish(trainer, resume, train_ds)


__all__ = ["CONFIG_CLASS", "JointLMConfig", "JointLMModel", "JointLMTrainer", "run_stage"]

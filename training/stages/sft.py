"""Stage 2: interaction SFT on single turns ``[BOS][Q] query [A] answer [EOS]``.

The same joint structure as stage 1 (`training.stages.joint_lm`): the encoder reads a masked copy of the whole
interaction (MLM over every non-special token); the decoder reads the interaction causally with the detached,
noised encoder states as memory. The decoder loss counts **answer tokens only**: the labels are -100 at the
query, the markers and the pads (`InteractionDataset`), so ``L_AR`` is the answer-token cross-entropy.

Metrics. Training logs ``answer_loss_peek``/``answer_acc_peek``/``answer_ppl_peek``: the memory then holds the
encoded answer too (the decoder peeks), so they are not real metrics. Evaluation adds the honest ones,
``answer_loss``/``answer_acc``/``answer_ppl`` (as ``val_answer_*``): the memory is the encoder's output over the
*query part only* (``[BOS][Q] query [A]``; answer tokens neither encoded nor visible), so every answer token is
predicted from the query alone.

Start from stage 1's ``final/`` (``model: runs/joint/final``); its ``mlm_head.safetensors`` and ``tokenizer.json``
are picked up. Output: ``<train.output_dir>/final/`` like stage 1.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import Dataset

from training.metrics import causal_lm_loss, perplexity, token_counts
from training.stages.joint_lm import (
    JointLMConfig,
    JointLMModel,
    JointLMTrainer,
    _NewMasksEachEpoch,
    freeze_unused_memory_system,
    packed_or,
    prepare,
    train_and_finish,
)
from training.trainer import StepOutput


@dataclass
class SFTConfig(JointLMConfig):
    """Stage-2 config: the fields of `JointLMConfig`, on interaction records (``model`` is usually stage 1's
    ``final/``; with ``pack``, interactions are packed into rows of ``max_len`` tokens)."""


CONFIG_CLASS = SFTConfig


class MaskedInteractionDataset(Dataset):
    """`InteractionDataset` items plus an MLM view of the whole interaction.

    Item: ``input_ids`` (T,), ``labels`` (T,) answer-only (-100 elsewhere), ``mlm_input_ids`` (T,) masked copy,
    ``mlm_labels`` (T,) original ids at the masked positions (-100 elsewhere). Masks are deterministic per
    ``(seed, epoch, index)``; `set_epoch` draws new ones.
    """

    def __init__(self, records, tokenizer, max_len: int, mask_prob: float = 0.15, seed: int = 0) -> None:
        from training.data.datasets import InteractionDataset, MaskedTextDataset

        self.interactions = InteractionDataset(records, tokenizer, max_len)
        # Used only for its masking rule (BERT 80/10/10 over non-special tokens), not for its records.
        self.masker = MaskedTextDataset([], tokenizer, max_len, mask_prob=mask_prob, seed=seed)

    def set_epoch(self, epoch: int) -> None:
        self.masker.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.interactions)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        item = self.interactions[index]
        masked, mlm_labels = self.masker.mask(item["input_ids"].tolist(), index)
        return {**item, "mlm_input_ids": masked, "mlm_labels": mlm_labels}


def query_part(input_ids: torch.Tensor, attention_mask: torch.Tensor, answer_id: int) -> torch.Tensor:
    """(B, T) bool: real tokens up to and including the first ``[A]`` of each row (the query/think part)."""
    seen = (input_ids == answer_id).long().cumsum(dim=1)
    return attention_mask.bool() & ((seen == 0) | ((seen == 1) & (input_ids == answer_id)))


class SFTTrainer(JointLMTrainer):
    peek_prefix = "answer"

    def __init__(self, *args, answer_id: int, **kwargs) -> None:
        self.answer_id = answer_id
        super().__init__(*args, **kwargs)

    def evaluate_batch(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> StepOutput:
        out = self.compute_loss(model, batch)
        # Honest answer metrics: memory = encoder over the query part only (answers neither encoded nor visible).
        query = query_part(batch["input_ids"], batch["attention_mask"], self.answer_id)
        query_ids = torch.where(query, batch["input_ids"], torch.full_like(batch["input_ids"], self.pad_id))
        _, memory = model.encoder_memory(query_ids, query)
        logits = model.decode_with_memory(batch["input_ids"], batch["attention_mask"], memory, query)
        loss = causal_lm_loss(logits, batch["labels"])
        correct, counted = token_counts(logits, batch["labels"], shifted=True)
        out.metrics.update(
            answer_loss=float(loss), answer_acc=correct / counted if counted else 0.0, answer_ppl=perplexity(loss)
        )
        return out


def run_stage(config: SFTConfig, *, resume: bool = False, callbacks=()) -> Path:
    """Run stage 2 and return the ``final/`` model directory."""
    if not isinstance(config, SFTConfig):
        raise TypeError(f"run_stage needs an SFTConfig, got {type(config).__name__}")
    rxt, tokenizer, head, records, eval_records = prepare(config, "interaction")
    freeze_unused_memory_system(rxt)
    train_ds = MaskedInteractionDataset(records, tokenizer, config.max_len, config.mask_prob, config.train.seed)
    eval_ds = None
    if eval_records:
        eval_ds = MaskedInteractionDataset(eval_records, tokenizer, config.max_len, config.mask_prob,
                                           config.train.seed + 1)
    model = JointLMModel(rxt, head, tokenizer, encoder_noise_std=config.encoder_noise_std,
                         peek_dropout=config.peek_dropout)
    trainer = SFTTrainer(
        model, config.train, packed_or(train_ds.interactions, config, rxt, tokenizer), eval_ds,
        pad_id=tokenizer.pad_id, ar_weight=config.ar_weight, mlm_weight=config.mlm_weight,
        callbacks=[_NewMasksEachEpoch(train_ds), *callbacks], config=config, answer_id=tokenizer.answer_id,
        mask_prob=config.mask_prob,
    )
    return train_and_finish(trainer, resume, train_ds)


__all__ = ["CONFIG_CLASS", "MaskedInteractionDataset", "SFTConfig", "SFTTrainer", "query_part", "run_stage"]

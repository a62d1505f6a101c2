"""The stateless baseline: a decoder-only LM (`rxt.classic.DecoderLM`) trained on the whole dialogue history.

Each episode becomes ONE causal sequence, the concatenation of its interactions exactly as the memory-retention
benchmark feeds the baseline (`benchmarks/memory_retention.py`, ``System.advance``)::

    [BOS][Q] q1 [A] a1 [EOS] [BOS][Q] q2 [A] a2 [EOS] ... [BOS][Q] qN [A] aN [EOS]

The labels are the ids of EVERY answer's tokens (after ``[A]`` up to and including its ``[EOS]``) and -100 at the
queries, the markers and the pads (`HistoryDataset`), aligned (the loss shifts). So the loss of turn t is
conditioned on the whole earlier history, which is what the baseline reads at inference time. A history longer
than ``max_len`` is cut from the left by dropping whole leading interactions; a single interaction longer than
``max_len`` keeps its last ``max_len`` tokens (the benchmark's left cut).

Sources. ``data`` takes the stage-config sources (`training.stages.data_config`) as multi-turn episodes; a source
without episodes (``chatterbot``) gives single-turn episodes from its interactions. ``limit`` counts episodes.

The model. ``model``: a preset name (a fresh `TransformerConfig` preset with the tokenizer's vocabulary) or a
directory saved by `DecoderLM.save_pretrained`. Or, instead, ``match_parameters_of``: an RxT preset name or a
saved RxT directory; the baseline then gets that RxT's widths and head layout, and the number of layers that
brings its parameter count closest to the RxT's (more layers than the RxT: it has no encoder, memory attention
nor STM). A fresh model's ``max_seq_len`` is at least ``max_len``. ``model_overrides`` replace config fields of
a fresh model (applied after matching).

Metrics: ``answer_acc`` (answer-token argmax accuracy) and ``answer_ppl`` (exp of the mean answer-token CE),
``val_``-prefixed in evaluation. Output: ``<train.output_dir>/final/`` (``DecoderLM.save_pretrained`` +
``tokenizer.json``), loadable with ``DecoderLM.from_pretrained``; with ``match_parameters_of``,
``<train.output_dir>/parameter_match.json`` records both parameter counts.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset

from rxt.classic import DecoderLM, matched_decoder_config
from rxt.config import PRESET_NAMES, RxTConfig, TransformerConfig
from rxt.hub import CONFIG_NAME, WEIGHTS_NAME
from rxt.template import InteractionTemplate
from rxt.tokenizer import RxTokenizer
from training.config import ConfigError, TrainConfig
from training.data.datasets import IGNORE_INDEX, collate_lm_counted
from training.data.packing import document_masks
from training.data.records import EpisodeRecord, InteractionRecord
from training.metrics import accuracy_tensor, causal_lm_loss
from training.packed_loader import PackedRowsLoader
from training.stages.data_config import DataSource, check_sources
from training.stages.stage_config import DataStageConfig
from training.trainer import StepOutput, Trainer


@dataclass
class BaselineLMConfig(DataStageConfig):
    """Stateless-baseline settings: exactly one of ``model`` / ``match_parameters_of`` (see the module docstring)."""

    train: TrainConfig = field(default_factory=lambda: TrainConfig(run_name="baseline"))
    model: str | None = None
    match_parameters_of: str | None = None
    max_len: int = 256  # tokens of history per sequence (cut from the left)
    max_turns: int | None = None  # keep the first max_turns turns of each episode
    pack: bool = True  # pack histories into rows of max_len tokens (training.data.packing); batch_size counts rows

    def __post_init__(self) -> None:
        def fail(name: str, limit: str) -> None:
            raise ConfigError(f"config key {name!r}={getattr(self, name)!r} must be {limit}")

        if self.model is None and self.match_parameters_of is None:
            raise ConfigError("config key 'model': give a preset name or a saved DecoderLM directory, or set "
                              "'match_parameters_of' to an RxT preset or directory")
        if self.model is not None and self.match_parameters_of is not None:
            raise ConfigError("config key 'match_parameters_of': set either 'model' or 'match_parameters_of', "
                              "not both")
        for name in ("model", "match_parameters_of"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, str) or not value):
                fail(name, "a preset name or a directory")
        if isinstance(self.max_len, bool) or self.max_len < 2:
            fail("max_len", ">= 2")
        if self.max_turns is not None and self.max_turns < 1:
            fail("max_turns", ">= 1 or null")
        if not 0.0 <= self.val_fraction < 1.0:
            fail("val_fraction", "in [0, 1)")
        unknown = sorted(set(self.model_overrides) - set(TransformerConfig.__dataclass_fields__))
        if unknown:
            raise ConfigError(f"config key 'model_overrides': unknown TransformerConfig field(s) {unknown}")


CONFIG_CLASS = BaselineLMConfig


# ---------------------------------------------------------------------------------------------------- data


def history_ids(template: InteractionTemplate, turns: Sequence[InteractionRecord], max_len: int) -> list[int]:
    """``interaction_ids`` of every turn, concatenated; leading interactions dropped until it fits ``max_len``
    (a last interaction longer than ``max_len`` alone keeps its last ``max_len`` tokens)."""
    pieces = [template.interaction_ids(t.query, t.answer) for t in turns]  # no [T]: as the benchmark
    total = sum(len(p) for p in pieces)
    start = 0
    while total > max_len and start < len(pieces) - 1:
        total -= len(pieces[start])
        start += 1
    ids = [i for piece in pieces[start:] for i in piece]
    return ids[-max_len:]


class HistoryDataset(Dataset):
    """One item per episode: ``input_ids`` (T,) the whole history (`history_ids`) and ``labels`` (T,) the ids
    at every answer's tokens (its ``[EOS]`` included), -100 elsewhere."""

    def __init__(self, records: Sequence[EpisodeRecord], tokenizer: RxTokenizer, max_len: int,
                 max_turns: int | None = None) -> None:
        self.records = list(records)
        for i, record in enumerate(self.records):
            if not isinstance(record, EpisodeRecord):
                raise TypeError(f"HistoryDataset: records[{i}] must be an EpisodeRecord, got {type(record).__name__}")
        if max_len < 2:
            raise ValueError(f"max_len must be >= 2, got {max_len}")
        self.template = InteractionTemplate(tokenizer)
        self.max_len = max_len
        self.max_turns = max_turns

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        turns = self.records[index].turns
        if self.max_turns is not None:
            turns = turns[: self.max_turns]
        ids = torch.tensor(history_ids(self.template, turns, self.max_len), dtype=torch.long)
        mask = self.template.answer_mask(ids)
        return {"input_ids": ids, "labels": torch.where(mask, ids, torch.full_like(ids, IGNORE_INDEX))}


def load_episodes(sources: Sequence[DataSource], key: str = "data") -> list[EpisodeRecord]:
    """Every source as episodes; sources without episodes (``chatterbot``) as single-turn episodes."""
    from training.stages.data_config import load_sources

    out: list[EpisodeRecord] = []
    for i, source in enumerate(sources):
        if source.kind == "chatterbot":
            turns = load_sources([source], "interaction", f"{key}[{i}]")
            out.extend(EpisodeRecord(t.query, t.answer) for t in turns)
        else:
            out.extend(load_sources([source], "episode", f"{key}[{i}]"))
    return out


# ---------------------------------------------------------------------------------------------------- model




def _load_tokenizer(config: BaselineLMConfig) -> RxTokenizer:
    from training.model_loading import load_tokenizer

    model_dir = None
    for name in ("model", "match_parameters_of"):
        value = getattr(config, name)
        if value is not None and Path(value).is_dir():
            model_dir = Path(value)
    return load_tokenizer(config.tokenizer, model_dir)


def _saved_config(path: Path, key: str, expected: str) -> dict[str, Any]:
    for name in (CONFIG_NAME, WEIGHTS_NAME):
        if not (path / name).is_file():
            raise ConfigError(f"config key {key!r}: {str(path)!r} is not a saved model directory (no {name})")
    try:
        raw = json.loads((path / CONFIG_NAME).read_text())
    except json.JSONDecodeError as exc:
        raise ConfigError(f"config key {key!r}: {str(path / CONFIG_NAME)!r} is not valid JSON: {exc}") from exc
    model_type = raw.pop("model_type", expected)
    if model_type != expected:
        raise ConfigError(f"config key {key!r}: {str(path)!r} holds a {model_type}, not a {expected}")
    for meta in ("architectures", "torch_dtype"):  # config.json keys that are not config fields
        raw.pop(meta, None)
    return raw


def _fresh(cfg: TransformerConfig, overrides: dict[str, Any], max_len: int) -> TransformerConfig:
    values = {"max_seq_len": max(cfg.max_seq_len, max_len), **overrides}
    try:
        return dataclasses.replace(cfg, **values)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"config key 'model_overrides': {exc}") from exc


def build_model(config: BaselineLMConfig, tokenizer: RxTokenizer) -> tuple[DecoderLM, dict[str, Any] | None]:
    """The baseline `DecoderLM` (and, with ``match_parameters_of``, ``{"rxt_parameters", "baseline_parameters",
    ...}``), failing with `ConfigError` naming the key."""
    match = None
    if config.match_parameters_of is not None:
        source = config.match_parameters_of
        path = Path(source)
        if source in PRESET_NAMES and not path.is_dir():
            rxt_cfg = RxTConfig.preset(source, vocab_size=tokenizer.vocab_size)
        elif path.is_dir():
            rxt_cfg = RxTConfig.from_dict(_saved_config(path, "match_parameters_of", "RxT"))
        else:
            raise ConfigError(f"config key 'match_parameters_of': {source!r} is neither an RxT preset "
                              f"({', '.join(PRESET_NAMES)}) nor an existing directory")
        base, _, target = matched_decoder_config(rxt_cfg, max(rxt_cfg.max_seq_len, config.max_len))
        cfg = _fresh(base, config.model_overrides, config.max_len)
        model = DecoderLM(cfg)
        match = {"match_parameters_of": source, "rxt_parameters": target, "baseline_parameters":
                 model.num_parameters(), "baseline_layers": cfg.num_layers, "rxt_layers": rxt_cfg.num_layers}
    else:
        source = str(config.model)
        path = Path(source)
        if source in PRESET_NAMES and not path.is_dir():
            cfg = _fresh(TransformerConfig.preset(source, vocab_size=tokenizer.vocab_size), config.model_overrides,
                         config.max_len)
            model = DecoderLM(cfg)
        elif path.is_dir():
            _saved_config(path, "model", "DecoderLM")
            if config.model_overrides:
                raise ConfigError("config key 'model_overrides': only for a fresh model (preset or "
                                  "match_parameters_of), not a saved DecoderLM")
            model = DecoderLM.from_pretrained(path).train()
        else:
            raise ConfigError(f"config key 'model': {source!r} is neither a preset ({', '.join(PRESET_NAMES)}) "
                              "nor an existing directory")
    if tokenizer.vocab_size > model.config.vocab_size:
        raise ConfigError(f"config key 'tokenizer': the tokenizer has vocab_size={tokenizer.vocab_size} but the "
                          f"model has vocab_size={model.config.vocab_size}")
    if config.max_len > model.config.max_seq_len:
        raise ConfigError(f"config key 'max_len'={config.max_len} exceeds the model's "
                          f"max_seq_len={model.config.max_seq_len}")
    return model, match


class BaselineLMModel(nn.Module):
    """The `DecoderLM` as the trainer's module: ``forward -> logits``; ``save_pretrained`` writes the DecoderLM
    and ``tokenizer.json``."""

    def __init__(self, lm: DecoderLM, tokenizer: RxTokenizer | None = None) -> None:
        super().__init__()
        self.lm = lm
        self.tokenizer = tokenizer

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                doc: torch.Tensor | None = None, positions: torch.Tensor | None = None) -> torch.Tensor:
        if doc is None:
            return self.lm(input_ids, attention_mask=attention_mask).logits
        _, causal = document_masks(doc)  # packed rows: each history sees only its own past
        return self.lm.decoder(input_ids, attention_mask=attention_mask, positions=positions, self_mask=causal,
                               validate=False).logits

    def save_pretrained(self, directory: str | Path) -> Path:
        target = Path(self.lm.save_pretrained(directory))
        if self.tokenizer is not None:
            self.tokenizer.save_pretrained(target)
        return target


class BaselineLMTrainer(PackedRowsLoader, Trainer):
    """Next-token CE over the answer tokens of the whole history; logs ``answer_acc`` and ``answer_ppl``."""

    def __init__(self, *args, pad_id: int, **kwargs) -> None:
        self.pad_id = pad_id
        super().__init__(*args, **kwargs)

    def collate(self, samples):
        return collate_lm_counted(samples, self.pad_id)

    def compute_loss(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> StepOutput:
        packed = {k: batch[k] for k in ("doc", "positions") if k in batch}
        logits = model(batch["input_ids"], batch["attention_mask"], **packed)
        loss = causal_lm_loss(logits, batch["labels"])
        # device tensors: the Trainer reads a step's metrics back once
        metrics = {"answer_acc": accuracy_tensor(logits, batch["labels"], shifted=True),
                   "answer_ppl": loss.detach().float().exp()}
        # counted on the host (packed rows, `collate_lm_counted`); else a device count (no read-back either)
        counted = batch["num_targets"] if "num_targets" in batch else (batch["labels"][:, 1:] != -100).sum()
        return StepOutput(loss=loss, metrics=metrics, num_tokens=counted)


# ---------------------------------------------------------------------------------------------------- stage


def prepare(config: BaselineLMConfig):
    """Checks, model, tokenizer and episodes before training; every problem a `ConfigError` naming the key."""
    from training.data.loaders import train_val_split

    config.train.validate()
    check_sources(config.data, "data")
    check_sources(config.eval_data, "eval_data", required=False)
    tokenizer = _load_tokenizer(config)
    lm, match = build_model(config, tokenizer)
    records = load_episodes(config.data, "data")
    eval_records = load_episodes(config.eval_data, "eval_data") if config.eval_data else None
    if eval_records is None and config.val_fraction > 0:
        records, eval_records = train_val_split(records, config.val_fraction, seed=config.train.seed)
    needed = config.train.batch_size * config.train.grad_accum_steps
    if len(records) < needed:
        raise ConfigError(f"config key 'data': {len(records)} training episodes, fewer than one batch of {needed} "
                          "(train.batch_size x train.grad_accum_steps)")
    return lm, match, tokenizer, records, eval_records


def run_stage(config: BaselineLMConfig, *, resume: bool = False, callbacks=()) -> Path:
    """Train the stateless baseline and return its ``final/`` directory."""
    from training.stages.joint_lm import train_and_finish

    if not isinstance(config, BaselineLMConfig):
        raise TypeError(f"run_stage needs a BaselineLMConfig, got {type(config).__name__}")
    lm, match, tokenizer, records, eval_records = prepare(config)
    train_ds = HistoryDataset(records, tokenizer, config.max_len, config.max_turns)
    eval_ds = HistoryDataset(eval_records, tokenizer, config.max_len, config.max_turns) if eval_records else None
    if match is not None:
        out = Path(config.train.output_dir)
        out.mkdir(parents=True, exist_ok=True)
        (out / "parameter_match.json").write_text(json.dumps(match, indent=2) + "\n")
        print(f"[baseline] {match['baseline_parameters']:,} parameters ({match['baseline_layers']} layers) against "
              f"the RxT's {match['rxt_parameters']:,}", file=sys.stderr)
    if config.pack:
        from training.data.packing import pack_dataset

        train_ds = pack_dataset(train_ds, config.max_len, source="config key 'data'", max_len=lm.config.max_seq_len,
                                pad_id=tokenizer.pad_id)
    trainer = BaselineLMTrainer(BaselineLMModel(lm, tokenizer), config.train, train_ds, eval_ds,
                                pad_id=tokenizer.pad_id, callbacks=list(callbacks), config=config)
    return train_and_finish(trainer, resume)


__all__ = [
    "CONFIG_CLASS",
    "BaselineLMConfig",
    "BaselineLMModel",
    "BaselineLMTrainer",
    "HistoryDataset",
    "build_model",
    "history_ids",
    "load_episodes",
    "matched_decoder_config",
    "run_stage",
]

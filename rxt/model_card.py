"""The model card (``README.md``) uploaded with a model: architecture, parameters, training, retention, licence.

Everything in it is read from files, never typed in: ``config.json`` and the weights of the saved folder (the
architecture and the parameter count), ``metrics.json`` (what `training.trainer.Trainer` writes beside
``final/``: the stage's steps, tokens and last train/eval metrics), ``recipe_summary.json`` (every stage of a
recipe run) and ``memory_retention.json`` (the output of ``benchmarks/memory_retention.py``). Each is looked
for in the folder, then in ``source_dir`` and its parents (a stage's ``final/`` sits in the stage directory, which
sits in the recipe directory). A section whose file is absent says so.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from safetensors import safe_open

from rxt.atomic_io import atomic_write_text

NOTICE = (
    "The Reactive Transformer architecture, Sparse Query Attention and the training curriculum come from Reactive "
    "AI's published papers (RxT: arXiv 2510.03561; SQA: arXiv 2510.01817; TensorBLEU: arXiv 2510.05485). This is "
    "an independent implementation written from those descriptions; it is not affiliated with Reactive AI."
)
"""The notice of the project README, repeated on every card."""

LICENSE = "apache-2.0"
_ARCH_FIELDS = (
    "vocab_size", "dim", "num_layers", "num_heads", "max_seq_len", "self_attention", "cross_attention",
    "memory_attention_heads", "ffn_hidden_dim", "ffn_activation", "ffn_gated", "num_experts", "top_k",
    "position_encoding", "stm_slots", "stm_init", "memory_attention_variant", "gate", "tie_lm_head",
)
_METRIC_ORDER = ("loss", "val_loss")


def _read_json(path: Path) -> Any | None:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def _find(name: str, folder: Path, source_dir: Path | None, depth: int) -> tuple[Path, Any] | tuple[None, None]:
    """``name`` in ``folder``, else in ``source_dir`` and up to ``depth`` of its parents."""
    places = [folder]
    if source_dir is not None:
        places += [source_dir, *list(source_dir.resolve().parents)[:depth]]
    for place in places:
        data = _read_json(place / name)
        if data is not None:
            return place / name, data
    return None, None


def count_parameters(folder: Path) -> int | None:
    """Elements of the stored tensors (shared tensors are stored once), from the safetensors header only."""
    path = folder / "model.safetensors"
    if not path.is_file():
        return None
    total = 0
    with safe_open(str(path), framework="pt") as handle:
        for name in handle.keys():  # noqa: SIM118 - safe_open is not iterable
            shape = handle.get_slice(name).get_shape()
            count = 1
            for size in shape:
                count *= size
            total += count
    return total


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, dict):
        return ", ".join(f"{k}={v}" for k, v in value.items())
    if isinstance(value, list | tuple):
        return "[" + ", ".join(str(v) for v in value) + "]"
    return str(value)


def _metrics_table(entry: dict[str, Any] | None) -> list[str]:
    if not isinstance(entry, dict):
        return []
    keys = [k for k in _METRIC_ORDER if k in entry] + sorted(
        k for k, v in entry.items() if k not in _METRIC_ORDER and isinstance(v, int | float) and k != "step")
    return [f"| {k} | {_fmt(entry[k])} |" for k in keys]


def _stage_section(name: str, metrics: dict[str, Any]) -> list[str]:
    lines = [f"### {name}", ""]
    train = metrics.get("train") or []
    evals = metrics.get("eval") or []
    facts = [f"optimizer steps: {metrics.get('step', '?')}", f"tokens seen: {metrics.get('tokens_seen', '?')}"]
    if metrics.get("stop_reason"):
        facts.append(f"stopped: {metrics['stop_reason']}")
    lines += [", ".join(facts), ""]
    for title, entries in (("last training log", train), ("last evaluation", evals)):
        rows = _metrics_table(entries[-1] if entries else None)
        if rows:
            step = entries[-1].get("step", "?")
            lines += [f"{title} (step {step}):", "", "| metric | value |", "|---|---|", *rows, ""]
    return lines


def _training_section(folder: Path, source_dir: Path | None) -> list[str]:
    lines = ["## Training", ""]
    summary_path, summary = _find("recipe_summary.json", folder, source_dir, 2)
    if isinstance(summary, dict) and isinstance(summary.get("stages"), dict):
        lines += [f"Trained by the curriculum recipe (`{summary_path.name}`, preset `{summary.get('preset', '?')}`); "
                  "stages in order:", ""]
        for stage, info in summary["stages"].items():
            metrics = (info or {}).get("metrics") or {}
            row = f"- **{stage}**"
            if isinstance(metrics, dict):
                shown = {k: v for k, v in metrics.items() if isinstance(v, int | float)}
                if shown:
                    row += ": " + ", ".join(f"{k}={_fmt(v)}" for k, v in sorted(shown.items()))
            lines.append(row)
        lines.append("")
    _, metrics = _find("metrics.json", folder, source_dir, 1)
    if isinstance(metrics, dict):
        stage = source_dir.resolve().parent.name if source_dir is not None else "this model"
        lines += _stage_section(f"Last stage ({stage}), from metrics.json", metrics)
    if len(lines) == 2:
        lines += ["No training metrics were found beside this model (no `metrics.json`).", ""]
    return lines


def _retention_section(folder: Path, source_dir: Path | None) -> list[str]:
    _, data = _find("memory_retention.json", folder, source_dir, 2)
    if not isinstance(data, dict) or not isinstance(data.get("systems"), dict):
        return []
    systems = data["systems"]
    distances = [str(d) for d in (data.get("settings") or {}).get("distances", [])]
    lines = ["## Memory retention", "",
             f"From `benchmarks/memory_retention.py` on {data.get('device', '?')} (command: "
             f"`{data.get('command', '?')}`): the share of episodes whose answer names a fact stated k turns "
             "earlier.", "",
             "| system | " + " | ".join(f"k={d}" for d in distances) + " | mean reward |",
             "|---|" + "---|" * (len(distances) + 1)]
    for name, system in systems.items():
        recall = system.get("recall") or {}
        cells = [_fmt(recall.get(d, "-")) for d in distances]
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {_fmt(system.get('reward_mean', '-'))} |")
    return [*lines, ""]


def model_card(
    folder: str | os.PathLike, *, repo_id: str, source_dir: str | os.PathLike | None = None,
    description: str | None = None,
) -> str:
    """The card's Markdown (YAML front matter first) for the saved model in ``folder``."""
    folder = Path(folder)
    source = Path(source_dir) if source_dir is not None else None
    config = _read_json(folder / "config.json") or {}
    model_type = config.get("model_type", "RxT")
    params = count_parameters(folder)
    tags = ["rxnn-runtime", "reactive-transformer", "rxt" if model_type == "RxT" else "transformer"]
    lines = [
        "---",
        f"license: {LICENSE}",
        "library_name: rxnn-runtime",
        "pipeline_tag: text-generation",
        "tags:", *[f"- {t}" for t in tags],
        "---",
        "",
        f"# {repo_id}",
        "",
        description or (
            "A Reactive Transformer (RxT): an event-driven, stateful language model that answers one interaction "
            "at a time and keeps the conversation in a fixed-size Short-Term Memory."
            if model_type == "RxT" else f"A {model_type} built with rxnn-runtime."),
        "",
        "## Architecture",
        "",
        f"`{model_type}`" + (f", {params:,} parameters (stored tensors, shared ones counted once)" if params else "")
        + f", weights in {config.get('torch_dtype', 'float32')}.",
        "",
        "| field | value |",
        "|---|---|",
        *[f"| {k} | {_fmt(config[k])} |" for k in _ARCH_FIELDS if k in config],
        "",
        "## Usage",
        "",
        "```python",
        f"from rxt.{'model' if model_type == 'RxT' else 'classic'} import {model_type}",
        "from rxt.tokenizer import RxTokenizer",
        "",
        f'model = {model_type}.from_pretrained("{repo_id}")      # its own tokenizer: model.tokenizer',
        f'tokenizer = RxTokenizer.from_pretrained("{repo_id}")',
        "```",
        "",
        f"or `rxnn chat --model {repo_id}`. The tokenizer also loads with "
        "`transformers.PreTrainedTokenizerFast`, whose chat template renders the interaction template "
        "`[BOS][Q] query [A] answer [EOS]`.",
        "",
        *_training_section(folder, source),
        *_retention_section(folder, source),
        "## Licence",
        "",
        "Apache-2.0.",
        "",
        f"**Notice.** {NOTICE}",
        "",
    ]
    return "\n".join(lines)


def write_model_card(folder: str | os.PathLike, **kwargs: Any) -> Path:
    """Write `model_card` to ``folder/README.md`` atomically; return its path."""
    return atomic_write_text(Path(folder) / "README.md", model_card(folder, **kwargs))


__all__ = ["LICENSE", "NOTICE", "count_parameters", "model_card", "write_model_card"]

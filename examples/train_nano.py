"""The training recipe: stages 0-4 (and optionally 5) of the RxT curriculum with one command.

Stages, each starting from the previous stage's ``final/`` directory::

    0  tokenizer   byte-level BPE trained on the recipe's corpus (or --reuse-tokenizer: the packaged default)
    1  joint       joint LM pre-training (encoder MLM + decoder AR)               -> <out>/1_joint/final
    2  sft         interaction SFT, loss on answer tokens                          -> <out>/2_sft/final
    3  mem-attn    memory-attention self-supervised pre-training                   -> <out>/3_mem_attn/final
    4  smat        supervised memory-aware training over multi-turn episodes       -> <out>/4_smat/final
    5  mrl         Memory Reinforcement Learning (IMPO), only with --with-mrl       -> <out>/5_mrl/final

With ``--with-baseline`` the stateless baseline (`training.stages.baseline_lm`) is trained afterwards: a
decoder-only LM matched to the RxT's parameter count (``match_parameters_of`` = stage 4's ``final/``, whose
tokenizer it uses), reading the whole history of every episode, on the union of the data sources of stages 1, 2
and 4 (as episodes) for as many optimizer steps as those three stages together, with stage 4's batch of
episodes, learning-rate settings and held-out episodes: the same step budget, not the same token count (its
sequences are whole histories). -> ``<out>/baseline/final``; the summary's ``baseline`` entry gives the step
budget and the parameter counts.

Every stage config is built as a plain dict (the preset below, then the command-line overrides) and passed
through ``training.config.load_config`` with the stage's ``CONFIG_CLASS``, so it gets exactly the validation of
``rxnn train <stage> --config file.yaml``. The resolved configs are written beside each stage's output
(``<out>/<stage>/recipe_config.yaml``) and a summary with every final directory and its last metrics goes to
``<out>/recipe_summary.json``.

CPU, in minutes (the ``tiny`` preset: a ~70k-parameter model on a few hundred synthetic/chitchat samples)::

    python examples/train_nano.py --preset tiny --steps 20 --reuse-tokenizer --output-dir runs/tiny_recipe

GPU, the real run (the ``nano`` preset: ~12.5M-parameter RxT-Alpha-Nano-like model, bf16, one H100)::

    python examples/train_nano.py --preset nano --output-dir runs/nano --device cuda --with-mrl

Intended step counts for ``nano`` (batches of 512 texts, 256/128 episodes; seq 256; lr 1e-3, warmup, cosine):
joint 20k, sft 10k, mem-attn 4k, smat 10k optimizer steps; MRL a curriculum of 2/4/8/16-step episodes
(long-range and cumulative), 2 epochs of 128 episodes each. These are a planned budget that has NOT been run: at
the seconds per step of the budgeted H200 run (``time_budget`` in ``benchmarks/results/nano_training.json``:
joint 0.30, sft 0.14, mem-attn 0.93, smat 3.3) they come to about 12 GPU hours, 9 of them SMAT. The only GPU run
so far is ``examples/nano_gpu_run.sh``: the same presets under ``--minutes`` budgets, ~10 minutes in all.
``examples/configs/nano/*.yaml`` are the same configs as files (``python examples/train_nano.py --preset nano --dump-configs examples/configs/nano``
regenerates them), so a single stage can be re-run with ``rxnn train <stage> --config ...``.

``--resume`` skips stages whose ``final/`` exists and resumes the interrupted one from its last checkpoint.
``--start-at STAGE`` starts from the previous stage's ``final/`` in ``--output-dir`` (copied from another machine,
say). ``--minutes STAGE=M`` gives a stage a wall-clock budget: its step horizon and cosine are shortened to what
fits (``train.max_minutes``); ``examples/nano_gpu_run.sh`` is the budgeted GPU run the README's results come from.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path
from typing import Any

import yaml

STAGE_ORDER: tuple[str, ...] = ("joint", "sft", "mem-attn", "smat", "mrl")
STAGE_DIRS: dict[str, str] = {
    "tokenizer": "0_tokenizer",
    "joint": "1_joint",
    "sft": "2_sft",
    "mem-attn": "3_mem_attn",
    "smat": "4_smat",
    "mrl": "5_mrl",
}
CONFIG_FILES: dict[str, str] = {
    "joint": "1_joint.yaml",
    "sft": "2_sft.yaml",
    "mem-attn": "3_mem_attn.yaml",
    "smat": "4_smat.yaml",
    "mrl": "5_mrl.yaml",
}
BASELINE_DIR = "baseline"
BASELINE_BUDGET_STAGES: tuple[str, ...] = ("joint", "sft", "smat")  # its data and its step budget
MODEL_PLACEHOLDER = "<previous stage final>"  # replaced by the previous stage's final/ (stage 1: the preset)


def _train(**kw: Any) -> dict[str, Any]:
    return kw


# ----------------------------------------------------------------------------------------------------- presets
# `tiny`: CPU, minutes. Data limits are small on purpose; `--steps N` sets every stage's max_steps.
TINY: dict[str, Any] = {
    "model": "tiny",
    "tokenizer_training": {"kind": "byte_bpe", "vocab_size": 512, "min_frequency": 2, "max_texts": 2000},
    "stages": {
        "joint": {
            "max_len": 64, "mask_prob": 0.15, "encoder_noise_std": 0.15, "val_fraction": 0.1,
            "data": [
                {"kind": "synthetic", "limit": 120,
                 "synthetic": {"num_episodes": 40, "num_turns": 2, "style": "long_range", "seed": 0}},
                {"kind": "chitchat", "limit": 40},
            ],
            "train": _train(lr=3.0e-3, warmup_steps=3, max_steps=30, batch_size=8, log_every=5, keep_last=1),
        },
        "sft": {
            "max_len": 64, "mask_prob": 0.15, "encoder_noise_std": 0.15, "val_fraction": 0.1,
            "data": [
                {"kind": "synthetic", "limit": 120,
                 "synthetic": {"num_episodes": 40, "num_turns": 2, "style": "cumulative", "seed": 1}},
                {"kind": "chitchat", "limit": 40},
            ],
            "train": _train(lr=3.0e-3, warmup_steps=3, max_steps=30, batch_size=8, log_every=5, keep_last=1),
        },
        "mem-attn": {
            "max_len": 64, "max_turns": 4, "weight_jitter": 0.15,
            "data": [{"kind": "synthetic", "synthetic": {"num_episodes": 32, "num_turns": 2, "seed": 0}}],
            "eval_data": [{"kind": "synthetic",
                           "synthetic": {"num_episodes": 8, "num_turns": 2, "split": "eval", "seed": 1}}],
            "train": _train(lr=3.0e-3, warmup_steps=3, max_steps=30, batch_size=8, log_every=5, keep_last=1),
        },
        "smat": {
            "max_len": 64, "max_turns": 4, "bptt_depth": 2,
            "unfreeze_schedule": [[0, ["memory"]], [10, ["memory", "rest"]]],
            "data": [{"kind": "synthetic", "synthetic": {"num_episodes": 32, "num_turns": 2, "seed": 0}}],
            "eval_data": [{"kind": "synthetic",
                           "synthetic": {"num_episodes": 8, "num_turns": 2, "split": "eval", "seed": 1}}],
            "train": _train(lr=1.0e-2, warmup_steps=3, max_steps=30, batch_size=8, log_every=5, keep_last=1),
        },
        "mrl": {
            "curriculum": [{"steps": 2, "strategy": "long_range", "epochs": 1, "episodes_per_epoch": 8}],
            "batch_episodes": 8, "max_new_tokens": 8, "minibatch_size": 8, "ppo_epochs": 1,
            "reset_prob_schedule": [[0, 1.0]], "unfreeze_schedule": [[0, ["memory", "rest"]]],
            "reward": {"bleu_weight": 1.0, "cosine_weight": 0.0, "length_weight": 0.1},
            "eval_episodes": 4,
            "train": _train(lr=1.0e-3, warmup_steps=0, max_steps=1000),
        },
    },
    # --with-baseline: the rest (data, steps, batch) comes from the stages of BASELINE_BUDGET_STAGES
    "baseline": {"max_len": 128},
}

# `nano`: the real run on one GPU (see the module docstring). Synthetic memory dialogues plus chitchat;
# SMAT/MRL see episodes up to the benchmark's distance 16.
# Large batches: at this size a step costs about the same whatever the batch (kernel-launch bound on an H200:
# benchmarks/results/smat_step.json), so a bigger batch is nearly free data per step.
_NANO_TRAIN = dict(lr=1.0e-3, batch_size=512, precision="bf16", log_every=50, eval_every=1000,
                   save_every=2000, keep_last=2, num_workers=4)
_BENCH_K = [1, 2, 4, 8, 16]
NANO: dict[str, Any] = {
    "model": "nano",
    "tokenizer_training": {"kind": "byte_bpe", "vocab_size": 8192, "min_frequency": 2, "max_texts": 200_000},
    "stages": {
        "joint": {
            "max_len": 256, "mask_prob": 0.15, "encoder_noise_std": 0.15, "val_fraction": 0.01,
            "data": [
                {"kind": "synthetic",
                 "synthetic": {"num_episodes": 40000, "num_turns": 4, "style": "long_range", "seed": 0}},
                {"kind": "synthetic",
                 "synthetic": {"num_episodes": 20000, "num_turns": 4, "style": "cumulative", "seed": 0}},
                {"kind": "chitchat", "limit": 50000},
                {"kind": "chatterbot"},
            ],
            "train": _train(**_NANO_TRAIN, warmup_steps=1000, max_steps=20000),
        },
        "sft": {
            "max_len": 256, "mask_prob": 0.15, "encoder_noise_std": 0.15, "val_fraction": 0.01,
            "data": [
                {"kind": "synthetic",
                 "synthetic": {"num_episodes": 30000, "num_turns": 4, "style": "long_range", "seed": 1}},
                {"kind": "synthetic",
                 "synthetic": {"num_episodes": 15000, "num_turns": 4, "style": "cumulative", "seed": 1}},
                {"kind": "chitchat", "limit": 50000},
                {"kind": "chatterbot"},
            ],
            "train": _train(**_NANO_TRAIN, warmup_steps=500, max_steps=10000),
        },
        "mem-attn": {
            "max_len": 256, "max_turns": 18, "weight_jitter": 0.15,
            "data": [
                {"kind": "synthetic", "synthetic": {"num_episodes": 40000, "distance": _BENCH_K,
                                                    "style": "long_range", "seed": 2}},
                {"kind": "synthetic", "synthetic": {"num_episodes": 20000, "distance": _BENCH_K,
                                                    "style": "cumulative", "seed": 2}},
            ],
            "eval_data": [{"kind": "synthetic", "synthetic": {"num_episodes": 256, "distance": _BENCH_K,
                                                              "split": "eval", "seed": 101}}],
            "train": _train(**{**_NANO_TRAIN, "batch_size": 256}, warmup_steps=200, max_steps=4000),
        },
        "smat": {
            "max_len": 256, "max_turns": 18, "bptt_depth": 4,
            "unfreeze_schedule": [[0, ["memory"]], [25, ["memory", "rest"]]],
            "data": [
                {"kind": "synthetic", "synthetic": {"num_episodes": 60000, "distance": _BENCH_K,
                                                    "style": "long_range", "seed": 3}},
                {"kind": "synthetic", "synthetic": {"num_episodes": 20000, "distance": _BENCH_K,
                                                    "style": "cumulative", "seed": 3}},
                {"kind": "chitchat", "limit": 6000},
            ],
            "eval_data": [{"kind": "synthetic", "synthetic": {"num_episodes": 256, "distance": _BENCH_K,
                                                              "split": "eval", "seed": 102}}],
            "train": _train(**{**_NANO_TRAIN, "batch_size": 128}, warmup_steps=500, max_steps=10000),
        },
        "mrl": {
            "curriculum": [
                {"steps": 2, "strategy": "long_range", "epochs": 2, "episodes_per_epoch": 128},
                {"steps": 4, "strategy": "cumulative", "epochs": 2, "episodes_per_epoch": 128},
                {"steps": 4, "strategy": "long_range", "epochs": 2, "episodes_per_epoch": 128},
                {"steps": 8, "strategy": "long_range", "epochs": 2, "episodes_per_epoch": 128},
                {"steps": 16, "strategy": "long_range", "epochs": 2, "episodes_per_epoch": 128},
            ],
            "batch_episodes": 32, "max_new_tokens": 48, "minibatch_size": 32, "ppo_epochs": 2,
            "reset_prob_schedule": [[0, 1.0], [4, 0.5]],
            "unfreeze_schedule": [[0, ["memory"]], [2, ["memory", "rest"]]],
            "replay_buffer_size": 64,
            "reward": {"bleu_weight": 1.0, "cosine_weight": 1.0, "length_weight": 0.1},
            "eval_episodes": 32,
            "train": _train(lr=1.0e-5, warmup_steps=0, max_steps=100000, precision="bf16", seed=0),
        },
    },
    # Episodes of up to 18 turns: a longer context than the RxT's 256-token interactions.
    "baseline": {"max_len": 1024},
}
PRESETS: dict[str, dict[str, Any]] = {"tiny": TINY, "nano": NANO}


# ------------------------------------------------------------------------------------------------ config dicts


def stage_config_dict(preset: str, stage: str, *, model: str, tokenizer: str | None, output_dir: Path,
                      steps: int | None = None, device: str | None = None, seed: int | None = None,
                      minutes: float | None = None) -> dict[str, Any]:
    """The raw config dict of ``stage`` (before `load_config`): the preset's, plus where it reads and writes.
    ``minutes`` is the stage's wall-clock budget (``train.max_minutes``)."""
    raw = copy.deepcopy(PRESETS[preset]["stages"][stage])
    raw["model"] = model
    raw["tokenizer"] = tokenizer
    train = raw.setdefault("train", {})
    train["output_dir"] = str(output_dir)
    train["run_name"] = f"{preset}-{stage}"
    if preset == "tiny":
        train.setdefault("device", "cpu")
    if device is not None:
        train["device"] = device
    if seed is not None:
        train["seed"] = seed
    if minutes is not None:
        train["max_minutes"] = minutes
    if steps is not None and stage != "mrl":
        train["max_steps"] = steps
        train["warmup_steps"] = min(train.get("warmup_steps", 0), max(steps // 4, 0))
        train["log_every"] = max(1, min(train.get("log_every", 10), steps))
        for key in ("eval_every", "save_every"):
            if train.get(key, 0) > steps:
                train[key] = 0  # only at the end
        if stage == "smat":  # keep the staged unfreezing inside the shortened run
            schedule = raw["unfreeze_schedule"]
            shortened = [[0, schedule[0][1]]]
            if len(schedule) > 1:
                shortened.append([max(1, steps // 2), schedule[-1][1]])
            raw["unfreeze_schedule"] = shortened
    if train.get("device") == "cpu":
        train["precision"] = "fp32"
        train["num_workers"] = 0
    return raw


def build_stage_config(stage: str, raw: dict[str, Any]):
    """``load_config(raw, CONFIG_CLASS)`` of the registered stage: the validation of ``rxnn train``."""
    from training.config import load_config
    from training.stages import get_stage

    module = get_stage(stage)
    return module, load_config(raw, module.CONFIG_CLASS)


def baseline_config_dict(preset: str, *, match: str, output_dir: Path, steps: int | None = None,
                         device: str | None = None, seed: int | None = None,
                         minutes: float | None = None) -> dict[str, Any]:
    """The baseline's raw config: the data sources of `BASELINE_BUDGET_STAGES` (duplicates once), their
    summed ``max_steps`` (after ``steps``), and stage 4's train settings otherwise."""
    resolved = {stage: stage_config_dict(preset, stage, model=MODEL_PLACEHOLDER, tokenizer=None,
                                         output_dir=output_dir, steps=steps, device=device, seed=seed)
                for stage in BASELINE_BUDGET_STAGES}
    data: list[dict[str, Any]] = []  # a source used by several stages (whatever its limit) once, the widest limit
    for stage in BASELINE_BUDGET_STAGES:
        for source in resolved[stage]["data"]:
            same = [d for d in data if {**d, "limit": None} == {**source, "limit": None}]
            if not same:
                data.append(copy.deepcopy(source))
            elif same[0].get("limit") is not None:
                limit = source.get("limit")
                same[0]["limit"] = None if limit is None else max(limit, same[0]["limit"])
    train = copy.deepcopy(resolved["smat"]["train"])
    train["max_steps"] = sum(resolved[stage]["train"]["max_steps"] for stage in BASELINE_BUDGET_STAGES)
    train["warmup_steps"] = min(train["max_steps"], max(resolved[s]["train"].get("warmup_steps", 0)
                                                        for s in BASELINE_BUDGET_STAGES))
    train["run_name"] = f"{preset}-baseline"
    if minutes is not None:
        train["max_minutes"] = minutes
    raw = {"match_parameters_of": match, "tokenizer": None, **copy.deepcopy(PRESETS[preset]["baseline"]),
           "data": data, "train": train}
    if resolved["smat"].get("eval_data"):  # the held-out episodes stage 4 is evaluated on
        raw["eval_data"] = copy.deepcopy(resolved["smat"]["eval_data"])
    else:
        raw["val_fraction"] = resolved["joint"].get("val_fraction", 0.0)
    return raw


def run_baseline(args: argparse.Namespace, out: Path, rxt_final: str) -> dict[str, Any]:
    """Train the stateless baseline (see the module docstring) and return its summary entry."""
    stage_dir = out / BASELINE_DIR
    raw = baseline_config_dict(args.preset, match=rxt_final, output_dir=stage_dir, steps=args.steps,
                               device=args.device, seed=args.seed, minutes=args.minutes.get(BASELINE_DIR))
    module, config = build_stage_config("baseline", raw)
    stage_dir.mkdir(parents=True, exist_ok=True)
    (stage_dir / "recipe_config.yaml").write_text(to_yaml(raw))
    final = stage_dir / "final"
    start = time.perf_counter()
    if args.resume and (final / "model.safetensors").is_file():
        print(f"[baseline] {final} exists, skipped (--resume)", flush=True)
    else:
        print(f"[baseline] stateless DecoderLM matched to {rxt_final}, {raw['train']['max_steps']} steps "
              f"-> {stage_dir}", flush=True)
        final = Path(module.run_stage(config, resume=args.resume))
    metrics = last_metrics(stage_dir)
    seconds = time.perf_counter() - start
    print(f"[baseline] done in {seconds:.1f}s: final={final}\n    {_fmt(metrics)}", flush=True)
    entry: dict[str, Any] = {"final": str(final), "seconds": round(seconds, 2), "metrics": metrics,
                             "max_steps": raw["train"]["max_steps"], "budget_of": list(BASELINE_BUDGET_STAGES)}
    match_file = stage_dir / "parameter_match.json"
    if match_file.is_file():
        entry["parameters"] = json.loads(match_file.read_text())
    return entry


# ------------------------------------------------------------------------------------------------- stage 0


def tokenizer_texts(preset: str, max_texts: int) -> list[str]:
    """Stage 0's corpus: the text records of stages 1 and 2's data sources (in order, at most ``max_texts``)."""
    from training.stages.data_config import DataSource, load_sources

    texts: list[str] = []
    for stage in ("joint", "sft"):
        sources = [DataSource(**source) for source in PRESETS[preset]["stages"][stage]["data"]]
        for record in load_sources(sources, "text"):
            texts.append(record.text)
            if len(texts) >= max_texts:
                return texts
    return texts


def run_tokenizer_stage(preset: str, output_dir: Path, vocab_size: int | None = None) -> Path:
    from training.tokenizer_training import TokenizerTrainingConfig, train_tokenizer

    settings = dict(PRESETS[preset]["tokenizer_training"])
    max_texts = settings.pop("max_texts")
    if vocab_size is not None:
        settings["vocab_size"] = vocab_size
    texts = tokenizer_texts(preset, max_texts)
    tokenizer = train_tokenizer(texts, TokenizerTrainingConfig(**settings))
    tokenizer.save_pretrained(output_dir)
    print(f"[stage 0] tokenizer ({settings['kind']}, vocab {tokenizer.vocab_size}) trained on {len(texts)} texts "
          f"-> {output_dir}", flush=True)
    return output_dir


# ----------------------------------------------------------------------------------------------------- driver


def last_metrics(stage_dir: Path) -> dict[str, Any]:
    """The last train and eval entries of ``<stage_dir>/metrics.json`` (empty when the stage wrote none)."""
    path = stage_dir / "metrics.json"
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError:
        return {}
    out: dict[str, Any] = {}
    for key in ("train", "eval"):
        entries = data.get(key)
        if isinstance(entries, list) and entries and isinstance(entries[-1], dict):
            out[key] = entries[-1]
    return out


def _fmt(metrics: dict[str, Any]) -> str:
    parts = []
    for section, entry in metrics.items():
        values = " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in entry.items())
        parts.append(f"{section}: {values}")
    return "; ".join(parts) or "(no metrics)"


class _ConfigDumper(yaml.SafeDumper):
    """Block style, with short lists of scalars inline and no anchors/aliases."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def _represent_list(dumper: yaml.SafeDumper, data: list) -> yaml.Node:
    flow = all(not isinstance(v, (dict, list)) for v in data) or all(
        isinstance(v, list) and all(not isinstance(x, (dict, list)) or (isinstance(x, list) and all(
            not isinstance(y, (dict, list)) for y in x)) for x in v) for v in data)
    return dumper.represent_sequence("tag:yaml.org,2002:seq", data, flow_style=flow)


_ConfigDumper.add_representer(list, _represent_list)


def to_yaml(raw: dict[str, Any]) -> str:
    ordered = {k: raw[k] for k in ("model", "tokenizer") if k in raw} | raw
    return yaml.dump(ordered, Dumper=_ConfigDumper, sort_keys=False, default_flow_style=False, width=110)


def dump_configs(preset: str, directory: Path, output_dir: Path, reuse_tokenizer: bool) -> list[Path]:
    """Write the resolved stage configs as YAML (the reference files under ``examples/configs/<preset>/``)."""
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    model = PRESETS[preset]["model"]
    tokenizer = None if reuse_tokenizer else str(output_dir / STAGE_DIRS["tokenizer"])
    for stage in STAGE_ORDER:
        raw = stage_config_dict(preset, stage, model=model, tokenizer=tokenizer,
                                output_dir=output_dir / STAGE_DIRS[stage])
        build_stage_config(stage, raw)  # fail here rather than in a later `rxnn train`
        header = (f"# Stage {STAGE_ORDER.index(stage) + 1} ({stage}) of the `{preset}` recipe, generated by\n"
                  f"#   python examples/train_nano.py --preset {preset}{' --reuse-tokenizer' if reuse_tokenizer else ''} "
                  f"--dump-configs {directory}\n"
                  f"# Run alone: rxnn train {stage} --config {directory / CONFIG_FILES[stage]}\n")
        path = directory / CONFIG_FILES[stage]
        path.write_text(header + to_yaml(raw))
        written.append(path)
        model = str(output_dir / STAGE_DIRS[stage] / "final")
        tokenizer = None  # later stages read the tokenizer.json saved beside the model
    return written


def run_recipe(args: argparse.Namespace) -> dict[str, Any]:
    from rxt.atomic_io import atomic_write_json

    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    stages = list(STAGE_ORDER if args.with_mrl else STAGE_ORDER[:-1])
    summary: dict[str, Any] = {"preset": args.preset, "command": " ".join([sys.executable, *sys.argv]),
                               "stages": {}}
    tokenizer: str | None = None
    if args.start_at:
        print(f"[stage 0] skipped (--start-at {args.start_at}): later stages read the saved tokenizer", flush=True)
    elif not args.reuse_tokenizer:
        tok_dir = out / STAGE_DIRS["tokenizer"]
        if not (args.resume and (tok_dir / "tokenizer.json").is_file()):
            run_tokenizer_stage(args.preset, tok_dir, args.tokenizer_vocab_size)
        tokenizer = str(tok_dir)
        summary["stages"]["tokenizer"] = {"final": tokenizer}
    else:
        print("[stage 0] reusing the packaged default tokenizer", flush=True)
    model = PRESETS[args.preset]["model"]
    first = STAGE_ORDER.index(args.start_at) + 1 if args.start_at else 1  # number of the first stage to train
    for number, stage in enumerate(stages, start=1):
        stage_dir = out / STAGE_DIRS[stage]
        if number < first - 1:
            continue
        if number == first - 1:  # trained earlier (maybe on another machine): its final/ is the starting point
            final = stage_dir / "final"
            if not (final / "model.safetensors").is_file():
                raise SystemExit(f"--start-at {args.start_at} needs {final} (stage {number}, {stage})")
            print(f"[stage {number}] {stage}: using {final} (--start-at {args.start_at})", flush=True)
            summary["stages"][stage] = {"final": str(final), "metrics": last_metrics(stage_dir)}
            model, tokenizer = str(final), None
            continue
        raw = stage_config_dict(args.preset, stage, model=model, tokenizer=tokenizer, output_dir=stage_dir,
                                steps=args.steps, device=args.device, seed=args.seed,
                                minutes=args.minutes.get(stage))
        module, config = build_stage_config(stage, raw)
        stage_dir.mkdir(parents=True, exist_ok=True)
        (stage_dir / "recipe_config.yaml").write_text(to_yaml(raw))
        final = stage_dir / "final"
        start = time.perf_counter()
        if args.resume and (final / "model.safetensors").is_file():
            print(f"[stage {number}] {stage}: {final} exists, skipped (--resume)", flush=True)
        else:
            print(f"[stage {number}] {stage}: model={model} -> {stage_dir}", flush=True)
            final = Path(module.run_stage(config, resume=args.resume and stage != "mrl"))
        metrics = last_metrics(stage_dir)
        seconds = time.perf_counter() - start
        print(f"[stage {number}] {stage} done in {seconds:.1f}s: final={final}\n    {_fmt(metrics)}", flush=True)
        summary["stages"][stage] = {"final": str(final), "seconds": round(seconds, 2), "metrics": metrics}
        atomic_write_json(out / "recipe_summary.json", summary)
        model, tokenizer = str(final), None
    if args.with_baseline:
        rxt_final = summary["stages"]["smat"]["final"]
        summary["baseline"] = run_baseline(args, out, rxt_final)
        atomic_write_json(out / "recipe_summary.json", summary)
    print(f"recipe finished; the model is {model}", flush=True)
    return summary


def _parse_minutes(parser: argparse.ArgumentParser, items: list[str]) -> dict[str, float]:
    budgets: dict[str, float] = {}
    known = (*STAGE_ORDER, BASELINE_DIR)
    for item in items:
        stage, sep, value = item.partition("=")
        if not sep or stage not in known:
            parser.error(f"--minutes {item!r}: expected STAGE=MINUTES with STAGE one of {', '.join(known)}")
        try:
            minutes = float(value)
        except ValueError:
            minutes = -1.0
        if not minutes > 0:
            parser.error(f"--minutes {item!r}: MINUTES must be a number > 0")
        budgets[stage] = minutes
    return budgets


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", choices=sorted(PRESETS), default="tiny")
    parser.add_argument("--output-dir", default=None, help="default: runs/<preset>_recipe")
    parser.add_argument("--steps", type=int, default=None,
                        help="optimizer steps of every supervised stage (default: the preset's)")
    parser.add_argument("--reuse-tokenizer", action="store_true",
                        help="skip stage 0 and use the packaged default tokenizer")
    parser.add_argument("--tokenizer-vocab-size", type=int, default=None)
    parser.add_argument("--with-mrl", action="store_true", help="add stage 5 (MRL) after SMAT")
    parser.add_argument("--with-baseline", action="store_true",
                        help="then train the stateless baseline (same data, same step budget as stages 1+2+4)")
    parser.add_argument("--minutes", action="append", default=[], metavar="STAGE=MINUTES",
                        help="wall-clock budget of a stage (joint, sft, mem-attn, smat, mrl, baseline), repeatable: "
                             "the stage's step horizon and cosine are shortened to fit (train.max_minutes)")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default=None)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--resume", action="store_true",
                        help="skip stages whose final/ exists; resume the interrupted stage from its checkpoint")
    parser.add_argument("--start-at", choices=STAGE_ORDER[1:], default=None,
                        help="skip the stages before this one; the one just before must have its final/ in "
                             "--output-dir already (e.g. MRL on another machine from a copied 4_smat/final)")
    parser.add_argument("--dump-configs", type=Path, default=None,
                        help="write the resolved stage configs as YAML into this folder and exit")
    args = parser.parse_args(argv)
    if args.start_at == "mrl" and not args.with_mrl:
        parser.error("--start-at mrl needs --with-mrl")
    if args.steps is not None and args.steps < 1:
        parser.error("--steps must be >= 1")
    args.minutes = _parse_minutes(parser, args.minutes)
    if args.output_dir is None:
        args.output_dir = f"runs/{args.preset}" if args.dump_configs else f"runs/{args.preset}_recipe"
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.dump_configs is not None:
        for path in dump_configs(args.preset, args.dump_configs, Path(args.output_dir), args.reuse_tokenizer):
            print(path)
        return 0
    run_recipe(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())

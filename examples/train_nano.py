"""The training recipe: stages 0-4 (and optionally 5) of the RxT curriculum with one command.

Steps, each starting from the previous step's ``final/`` directory::

    0  tokenizer   byte-level BPE trained on the recipe's corpus (or --reuse-tokenizer: the packaged default)
    1  joint       joint LM pre-training (encoder MLM + decoder AR)               -> <out>/1_joint/final
    2  sft         interaction SFT, loss on answer tokens                          -> <out>/2_sft/final
    3  mem-attn    memory-attention self-supervised pre-training                   -> <out>/3_mem_attn/final
    4  smat-k2 ... supervised memory-aware training, a curriculum over distance:   -> <out>/4_smat_k2/final ...
       smat        k <= 2 (with the in-context copy task), k <= 4, k <= 8, then k <= 16   -> <out>/4_smat/final
    5  mrl         Memory Reinforcement Learning (IMPO), only with --with-mrl       -> <out>/5_mrl/final

The data can only be solved by copying (`training.data.synthetic`): every fact value is made up for its episode
(names, codes, numbers, passphrases) from a generator space disjoint from the held-out values, with 1-4 facts of
one group per episode (distractors). Stages 1-2 read each question merged with its statements into one sequence,
so the decoder learns to copy in context first; stage 3 and SMAT read the dialogues, SMAT with gradients through
every memory update of an episode. The curriculum is the one `training/copy_gate.py` (the CPU gate) shows to
work on a toy of the same stack. The ``tiny`` preset has the same steps at toy size.

With ``--with-baseline`` the stateless baseline (`training.stages.baseline_lm`) is trained afterwards: a
decoder-only LM matched to the RxT's parameter count (``match_parameters_of`` = stage 4's ``final/``, whose
tokenizer it uses), reading the whole history of every episode, on the union of the data sources of stages 1, 2
and the SMAT curriculum (as episodes) for as many optimizer steps as those together, with stage 4's batch of
episodes, learning-rate settings and held-out episodes -> ``<out>/baseline/final``. ``--baseline-only`` trains
just the baseline (matched to the preset's RxT: the same shapes as the trained one), so it can run beside the
RxT on the same GPU for the same minutes; ``--baseline-from DIR`` continues a saved one.

Every stage config is built as a plain dict (the preset below, then the command-line overrides) and passed
through ``training.config.load_config`` with the stage's ``CONFIG_CLASS``, so it gets exactly the validation of
``rxnn train <stage> --config file.yaml``. The resolved configs are written beside each stage's output
(``<out>/<step>/recipe_config.yaml``) and a summary with every final directory and its last metrics goes to
``<out>/recipe_summary.json`` (a later call of a split run adds to it). ``--diagnostics`` adds, after sft (the
memory path untrained: "before"), mem-attn and every SMAT step, held-out recall by generation with and without
memory and the memory diagnostics (gate values, read-attention entropy: `training.memory_diagnostics`).

CPU, in minutes (the ``tiny`` preset: a ~70k-parameter model on a few hundred synthetic/chitchat samples)::

    python examples/train_nano.py --preset tiny --steps 20 --reuse-tokenizer --output-dir runs/tiny_recipe

GPU: ``examples/nano_gpu_run.sh`` is the budgeted run (calls of about 9 minutes, split at step boundaries,
the weights carried between them in bf16 parts by ``scripts/carry_weights.py``). The step counts of the ``nano``
preset are upper bounds; ``--minutes STEP=M`` gives a step a wall-clock budget (its step horizon and cosine are
shortened to what fits: ``train.max_minutes``). ``examples/configs/nano/*.yaml`` are the same configs as files
(``python examples/train_nano.py --preset nano --dump-configs examples/configs/nano`` regenerates them), so a
single step can be re-run with ``rxnn train <stage> --config ...``.

``--resume`` skips steps whose ``final/`` exists and resumes the interrupted one from its last checkpoint.
``--start-at STEP`` starts from the previous step's ``final/`` in ``--output-dir`` (copied from another machine,
say) with a fresh optimizer and a short warm-up; ``--stop-after STEP`` ends a call at a step boundary.
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
BASELINE_DIR = "baseline"
MODEL_PLACEHOLDER = "<previous stage final>"  # replaced by the previous stage's final/ (stage 1: the preset)
SMAT_PHASE_PREFIX = "smat-"  # "smat-k2" ...: a SMAT run of the distance curriculum before the last one ("smat")


def stage_module(step: str) -> str:
    """The registered stage a recipe step runs (``smat-k4`` -> ``smat``)."""
    return "smat" if step.startswith(SMAT_PHASE_PREFIX) else step


def stage_dir(step: str) -> str:
    """The folder of a recipe step under ``--output-dir`` (``smat-k4`` -> ``4_smat_k4``)."""
    if step.startswith(SMAT_PHASE_PREFIX):
        return f"{STAGE_DIRS['smat']}_{step[len(SMAT_PHASE_PREFIX):]}"
    return STAGE_DIRS[step]


def recipe_steps(preset: str, with_mrl: bool = True) -> list[str]:
    """The preset's steps in order: joint, sft, mem-attn, the SMAT curriculum phases (``smat-*``, ending with
    ``smat``), then mrl (only ``with_mrl``)."""
    stages = PRESETS[preset]["stages"]
    phases = [s for s in stages if s.startswith(SMAT_PHASE_PREFIX)]
    steps = ["joint", "sft", "mem-attn", *phases, "smat"]
    return [*steps, "mrl"] if with_mrl else steps


def config_file(step: str) -> str:
    return f"{stage_dir(step)}.yaml"


CONFIG_FILES: dict[str, str] = {s: config_file(s) for s in STAGE_ORDER}  # the fixed stages; phases: config_file


def _train(**kw: Any) -> dict[str, Any]:
    return kw


def _synthetic(limit: int | None = None, **fields: Any) -> dict[str, Any]:
    source: dict[str, Any] = {"kind": "synthetic", "synthetic": fields}
    if limit is not None:
        source["limit"] = limit
    return source


def _smat_phase(distances: list[int], *, episodes: int, copy_episodes: int = 0, chitchat: int = 0,
                eval_episodes: int, eval_seed: int, seed: int, **stage: Any) -> dict[str, Any]:
    """One SMAT run of the distance curriculum: long-range and cumulative dialogues at ``distances`` (episodes
    of at most ``max(distances) + 3`` turns, so ``max_turns`` never cuts a question off), optionally the
    in-context copy task (``copy_episodes``) and chitchat; held out: ``split: eval`` dialogues at the same
    distances. Gradients flow through every memory update of an episode (``bptt_depth`` = its turns)."""
    turns = max(distances) + 3
    data = [_synthetic(num_episodes=episodes, distance=distances, style="long_range", max_lead=1, seed=seed),
            _synthetic(num_episodes=episodes // 3, distance=distances, style="cumulative", max_lead=1, seed=seed)]
    if copy_episodes:
        data.append(_synthetic(num_episodes=copy_episodes, distance=distances, form="in_context", max_lead=1,
                               seed=seed))
    if chitchat:
        data.append({"kind": "chitchat", "limit": chitchat})
    return {"max_turns": turns, "bptt_depth": turns, "data": data,
            "eval_data": [_synthetic(num_episodes=eval_episodes, distance=distances, split="eval", seed=eval_seed)],
            **stage}


# ----------------------------------------------------------------------------------------------------- presets
# Data that can only be solved by copying (training.data.synthetic): every value is made up per episode, 1-4
# facts of one group per episode. Stages 1-2 read each question merged with its statements into one sequence
# (in-context copying first); stage 3 and the SMAT curriculum read the dialogues, k <= 2, then <= 4, <= 8, 16.
# `tiny`: CPU, minutes. Data limits are small on purpose; `--steps N` sets every stage's max_steps.
_TINY_TEXT = [_synthetic(limit=160, num_episodes=40, distance=[0, 1, 2], max_lead=1, seed=0),
              {"kind": "chitchat", "limit": 40}]
_TINY_PHASE = dict(episodes=32, eval_episodes=8, eval_seed=1, seed=0,
                   train=_train(lr=1.0e-2, warmup_steps=3, max_steps=30, batch_size=8, log_every=5, keep_last=1))
TINY: dict[str, Any] = {
    "model": "tiny",
    "tokenizer_training": {"kind": "byte_bpe", "vocab_size": 512, "min_frequency": 2, "max_texts": 2000},
    "stages": {
        "joint": {
            "max_len": 64, "mask_prob": 0.15, "encoder_noise_std": 0.15, "val_fraction": 0.1,
            "data": _TINY_TEXT,
            "train": _train(lr=3.0e-3, warmup_steps=3, max_steps=30, batch_size=8, log_every=5, keep_last=1),
        },
        "sft": {
            "max_len": 64, "mask_prob": 0.15, "encoder_noise_std": 0.15, "val_fraction": 0.1,
            "data": [_synthetic(limit=160, num_episodes=40, distance=[0, 1, 2], style="cumulative", max_lead=1,
                                seed=1),
                     {"kind": "chitchat", "limit": 40}],
            "train": _train(lr=3.0e-3, warmup_steps=3, max_steps=30, batch_size=8, log_every=5, keep_last=1),
        },
        "mem-attn": {
            "max_len": 64, "max_turns": 5, "weight_jitter": 0.15,
            "data": [_synthetic(num_episodes=32, distance=[0, 1, 2], max_lead=1, seed=0)],
            "eval_data": [_synthetic(num_episodes=8, distance=[0, 1, 2], split="eval", seed=1)],
            "train": _train(lr=3.0e-3, warmup_steps=3, max_steps=30, batch_size=8, log_every=5, keep_last=1),
        },
        "smat-k2": _smat_phase([0, 1, 2], copy_episodes=16, max_len=64,
                               unfreeze_schedule=[[0, ["memory"]], [10, ["memory", "rest"]]], **_TINY_PHASE),
        "smat-k4": _smat_phase([1, 2, 4], max_len=64, unfreeze_schedule=[[0, ["memory", "rest"]]], **_TINY_PHASE),
        "smat-k8": _smat_phase([1, 4, 8], max_len=64, unfreeze_schedule=[[0, ["memory", "rest"]]], **_TINY_PHASE),
        "smat": _smat_phase([1, 8, 16], max_len=64, unfreeze_schedule=[[0, ["memory", "rest"]]], **_TINY_PHASE),
        "mrl": {
            "curriculum": [{"steps": 2, "strategy": "long_range", "epochs": 1, "episodes_per_epoch": 8}],
            "batch_episodes": 8, "max_new_tokens": 8, "minibatch_size": 8, "ppo_epochs": 1,
            "reset_prob_schedule": [[0, 1.0]], "unfreeze_schedule": [[0, ["memory", "rest"]]],
            "reward": {"bleu_weight": 1.0, "cosine_weight": 0.0, "length_weight": 0.1},
            "eval_episodes": 4,
            "train": _train(lr=1.0e-3, warmup_steps=0, max_steps=1000),
        },
    },
    # the baseline's data and step budget come from the stages of `baseline_budget_stages`
    "baseline": {"max_len": 128},
}

# `nano`: the real run on one GPU (see the module docstring). Large batches: at this size a step costs about the
# same whatever the batch (kernel-launch bound on an H200: benchmarks/results/smat_step.json). The step counts
# are upper bounds: `--minutes` budgets shorten them (train.max_minutes), and every stage restarts its optimizer
# with a short warm-up, so a stage can start from weights carried in bf16 from another machine.
_NANO_TRAIN = dict(lr=1.0e-3, batch_size=512, precision="bf16", log_every=50, eval_every=500,
                   save_every=0, keep_last=1, num_workers=4)
# Joint packs ~8 texts into each 256-token row: with 32k episodes a 1,100-step budget read every question ~30
# times (memorising its value is then as easy as copying it); 96k episodes bring that to ~10.
_NANO_TEXT = [
    _synthetic(num_episodes=72000, distance=[0, 1, 2], style="long_range", max_lead=1, seed=0),
    _synthetic(num_episodes=24000, distance=[0, 1, 2], style="cumulative", max_lead=1, seed=0),
    {"kind": "chitchat", "limit": 50000},
    {"kind": "chatterbot"},
]
# SMAT: 256 episodes a step. With the episode stages off cuDNN attention (training/attention_backends.py) a 128-episode
# step at up to 19 turns kept the H200 busy ~120 ms of a host-bound step, so twice the episodes cost little time.
_NANO_SMAT = dict(_NANO_TRAIN, batch_size=256, num_workers=6, eval_every=250, warmup_steps=100, max_steps=20000)
# Activations grow with episodes x turns: 256 x 7 turns (smat-k4) ran out of the H200's 140 GB at its first step
# (attempt 3), 256 x 5 (smat-k2) fit. Later phases keep episodes x max_turns under ~1,000.
_NANO_SMAT_K4 = dict(_NANO_SMAT, batch_size=128)
_NANO_SMAT_K8 = dict(_NANO_SMAT, batch_size=80)
_NANO_SMAT_K16 = dict(_NANO_SMAT, batch_size=48)
# dynamic_compile "chain": only the memory-attention update is compiled (automatic dynamic shapes), fusing the
# norms, casts and gates over the STM that every turn repeats; the encoder and decoder stay eager. On an H200 the
# 128 x 18 step ran 163 ms against 221 ms eager (train_throughput.json, smat-recipe), and on the recipe's own data
# 80.7k tokens/s against 58.6k, for ~10 s of compiling. "step" (every part compiled) ran 117 ms at one shape, but on
# the recipe's data (episodes of 2-19 turns, synthetic and chitchat turn lengths) its eight recompiles took a whole
# 2.5-minute budget: 3 steps (smat_dynamic_compile.json).
_NANO_PHASE = dict(max_len=256, eval_episodes=256, chitchat=4000, dynamic_compile="chain")
NANO: dict[str, Any] = {
    "model": "nano",
    "tokenizer_training": {"kind": "byte_bpe", "vocab_size": 8192, "min_frequency": 2, "max_texts": 200_000},
    "stages": {
        "joint": {
            "max_len": 256, "mask_prob": 0.15, "encoder_noise_std": 0.15, "val_fraction": 0.01,
            "data": _NANO_TEXT,
            "train": _train(**_NANO_TRAIN, warmup_steps=200, max_steps=20000),
        },
        "sft": {
            "max_len": 256, "mask_prob": 0.15, "encoder_noise_std": 0.15, "val_fraction": 0.01,
            "data": [_synthetic(num_episodes=32000, distance=[0, 1, 2], style="long_range", max_lead=1, seed=1),
                     _synthetic(num_episodes=10000, distance=[0, 1, 2], style="cumulative", max_lead=1, seed=1),
                     {"kind": "chitchat", "limit": 50000}, {"kind": "chatterbot"}],
            "train": _train(**_NANO_TRAIN, warmup_steps=100, max_steps=10000),
        },
        "mem-attn": {
            "max_len": 256, "max_turns": 11, "weight_jitter": 0.15,
            "data": [_synthetic(num_episodes=16000, distance=[1, 2, 4, 8], style="long_range", max_lead=1, seed=2),
                     _synthetic(num_episodes=5000, distance=[1, 2, 4, 8], style="cumulative", max_lead=1, seed=2)],
            "eval_data": [_synthetic(num_episodes=256, distance=[1, 2, 4, 8], split="eval", seed=101)],
            "train": _train(**{**_NANO_TRAIN, "batch_size": 256}, warmup_steps=50, max_steps=4000),
        },
        # the full mix from the start: the third run's smat-k2 read 1-2 facts and learnt to answer with the last
        # stated value, and the GPU gate sweep found a one-fact phase before the full mix harmful (0.03 vs 0.38)
        "smat-k2": _smat_phase([0, 1, 2], episodes=60000, copy_episodes=20000, seed=3, eval_seed=102,
                               unfreeze_schedule=[[0, ["memory"]], [100, ["memory", "rest"]]],
                               train=_train(**_NANO_SMAT), **_NANO_PHASE),
        "smat-k4": _smat_phase([1, 2, 3, 4], episodes=30000, copy_episodes=3000, seed=4, eval_seed=103,
                               unfreeze_schedule=[[0, ["memory", "rest"]]], train=_train(**_NANO_SMAT_K4),
                               **_NANO_PHASE),
        "smat-k8": _smat_phase([1, 2, 4, 6, 8, 8], episodes=24000, seed=5, eval_seed=104,
                               unfreeze_schedule=[[0, ["memory", "rest"]]], train=_train(**_NANO_SMAT_K8),
                               **_NANO_PHASE),
        # short distances weighted up: after 3,000 steps on [1, 2, 4, 8, 12, 16, 16] held-out recall was
        # 0.95/0.22/0.53/0.78/0.86 at k = 1/2/4/8/16, the misses at k = 2-4 answering the same-group distractor
        # stated right after the target (nano_training.json). Chitchat weighted up (every training conversation,
        # 24k synthetic episodes): with 4,000 conversations against 53k synthetic ones, held-out chitchat
        # perplexity rose with every pass, to 226 after pass 4.
        "smat": _smat_phase([1, 2, 2, 3, 4, 4, 6, 8, 12, 16], episodes=24000, seed=6, eval_seed=105,
                            unfreeze_schedule=[[0, ["memory", "rest"]]], train=_train(**_NANO_SMAT_K16),
                            **{**_NANO_PHASE, "chitchat": 10000}),
        # IMPO on the benchmark's own reward (BLEU against the reference answer + 0.1 length; the cosine term off),
        # 4 epochs per step: from SMAT pass 7, one epoch per step (10 updates, the cosine term on) moved the
        # validation reward by -0.5 to +0.1 across 13 variants; 4 epochs on the benchmark's reward raised it from
        # 4.61 to 4.79-4.80 after 20-30 updates (two seeds). The 16-step stage is left out: on the validation
        # episodes (seed 4321) a fourth epoch of step 8 and the 16-step stage lowered recall (301 of 320 episodes
        # after 40 updates, against 312 after 30). The shipped model is this recipe's update 30, the snapshot the
        # validation rule picked (mrl_variants.json); `save_every` keeps every 5th update to score.
        "mrl": {
            "curriculum": [
                {"steps": 2, "strategy": "long_range", "epochs": 4, "episodes_per_epoch": 128},
                {"steps": 4, "strategy": "cumulative", "epochs": 4, "episodes_per_epoch": 128},
                {"steps": 4, "strategy": "long_range", "epochs": 4, "episodes_per_epoch": 128},
                {"steps": 8, "strategy": "long_range", "epochs": 3, "episodes_per_epoch": 128},
            ],
            "batch_episodes": 64, "max_new_tokens": 32, "minibatch_size": 64, "ppo_epochs": 2,
            "reset_prob_schedule": [[0, 1.0], [3, 0.5]],
            "unfreeze_schedule": [[0, ["memory"]], [2, ["memory", "rest"]]],
            "replay_buffer_size": 64,
            "reward": {"bleu_weight": 1.0, "cosine_weight": 0.0, "length_weight": 0.1},
            "eval_episodes": 64,
            "train": _train(lr=1.0e-5, warmup_steps=0, max_steps=100000, precision="bf16", seed=0, save_every=5,
                            keep_last=0),
        },
    },
    # Whole histories of up to 19 turns: a longer context than the RxT's 256-token interactions.
    "baseline": {"max_len": 1024},
    # per synthetic source of the baseline (its data preparation turns each episode into whole-history rows:
    # ~3.5 minutes on the GPU host for the uncapped sources of attempt 2, inside one call's budget)
    "baseline_max_episodes": 8000,
}
PRESETS: dict[str, dict[str, Any]] = {"tiny": TINY, "nano": NANO}


def baseline_budget_stages(preset: str) -> list[str]:
    """The steps whose data (as episodes) and summed step budget the stateless baseline gets: every step with
    interaction data (joint, sft, the SMAT curriculum), not the memory-only mem-attn and mrl."""
    return [s for s in recipe_steps(preset, with_mrl=False) if s != "mem-attn"]


# ------------------------------------------------------------------------------------------------ config dicts


def stage_config_dict(preset: str, stage: str, *, model: str, tokenizer: str | None, output_dir: Path,
                      steps: int | None = None, device: str | None = None, seed: int | None = None,
                      minutes: float | None = None) -> dict[str, Any]:
    """The raw config dict of recipe step ``stage`` (before `load_config`): the preset's, plus where it reads and
    writes. ``minutes`` is the stage's wall-clock budget (``train.max_minutes``)."""
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
        if stage_module(stage) == "smat":  # keep the staged unfreezing inside the shortened run
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
    """``load_config(raw, CONFIG_CLASS)`` of the step's registered stage: the validation of ``rxnn train``."""
    from training.config import load_config
    from training.stages import get_stage

    module = get_stage(stage_module(stage))
    return module, load_config(raw, module.CONFIG_CLASS)


def baseline_config_dict(preset: str, *, match: str | None, output_dir: Path, steps: int | None = None,
                         device: str | None = None, seed: int | None = None, minutes: float | None = None,
                         model: str | None = None) -> dict[str, Any]:
    """The baseline's raw config: the data sources of `baseline_budget_stages` (each once), their summed
    ``max_steps`` (after ``steps``), the last SMAT step's train settings and held-out episodes otherwise.
    ``match`` (an RxT preset or directory to match in parameters) or ``model`` (a saved baseline to continue
    from: a fresh optimizer, the short warm-up)."""
    budget = baseline_budget_stages(preset)
    resolved = {stage: stage_config_dict(preset, stage, model=MODEL_PLACEHOLDER, tokenizer=None,
                                         output_dir=output_dir, steps=steps, device=device, seed=seed)
                for stage in budget}
    data: list[dict[str, Any]] = []  # a source used by several stages (whatever its limit) once, the widest limit
    for stage in budget:
        for source in resolved[stage]["data"]:
            same = [d for d in data if {**d, "limit": None} == {**source, "limit": None}]
            if not same:
                data.append(copy.deepcopy(source))
            elif same[0].get("limit") is not None:
                limit = source.get("limit")
                same[0]["limit"] = None if limit is None else max(limit, same[0]["limit"])
    cap = PRESETS[preset].get("baseline_max_episodes")
    for source in data:  # same generators, fewer episodes: whole-history rows cost minutes to prepare
        synthetic = source.get("synthetic")
        if cap and synthetic and synthetic.get("num_episodes", 0) > cap:
            synthetic["num_episodes"] = cap
    train = copy.deepcopy(resolved["smat"]["train"])
    train["max_steps"] = sum(resolved[stage]["train"]["max_steps"] for stage in budget)
    train["warmup_steps"] = min(train["max_steps"], max(resolved[s]["train"].get("warmup_steps", 0)
                                                        for s in budget))
    train["run_name"] = f"{preset}-baseline"
    if minutes is not None:
        train["max_minutes"] = minutes
    source = {"model": model} if model is not None else {"match_parameters_of": match}
    raw = {**source, "tokenizer": None, **copy.deepcopy(PRESETS[preset]["baseline"]), "data": data,
           "train": train}
    if resolved["smat"].get("eval_data"):  # the held-out episodes stage 4 is evaluated on
        raw["eval_data"] = copy.deepcopy(resolved["smat"]["eval_data"])
    else:
        raw["val_fraction"] = resolved["joint"].get("val_fraction", 0.0)
    return raw


def run_baseline(args: argparse.Namespace, out: Path, rxt_final: str | None) -> dict[str, Any]:
    """Train the stateless baseline (see the module docstring) and return its summary entry: matched to
    ``rxt_final`` (or the preset's RxT), or continued from ``--baseline-from``."""
    stage_path = out / BASELINE_DIR
    match = None if args.baseline_from else (rxt_final or PRESETS[args.preset]["model"])
    raw = baseline_config_dict(args.preset, match=match, output_dir=stage_path, steps=args.steps,
                               device=args.device, seed=args.seed, minutes=args.minutes.get(BASELINE_DIR),
                               model=args.baseline_from)
    if args.baseline_from:
        raw["train"]["warmup_steps"] = min(raw["train"]["warmup_steps"], RESTART_WARMUP)
    module, config = build_stage_config("baseline", raw)
    stage_path.mkdir(parents=True, exist_ok=True)
    (stage_path / "recipe_config.yaml").write_text(to_yaml(raw))
    final = stage_path / "final"
    start = time.perf_counter()
    if args.resume and (final / "model.safetensors").is_file():
        print(f"[baseline] {final} exists, skipped (--resume)", flush=True)
    else:
        origin = f"continued from {args.baseline_from}" if args.baseline_from else f"matched to {match}"
        print(f"[baseline] stateless DecoderLM {origin}, at most {raw['train']['max_steps']} steps -> {stage_path}",
              flush=True)
        final = Path(module.run_stage(config, resume=args.resume))
    metrics = last_metrics(stage_path)
    seconds = time.perf_counter() - start
    print(f"[baseline] done in {seconds:.1f}s: final={final}\n    {_fmt(metrics)}", flush=True)
    entry: dict[str, Any] = {"final": str(final), "seconds": round(seconds, 2), "metrics": metrics,
                             "max_steps": raw["train"]["max_steps"], "budget_of": baseline_budget_stages(args.preset),
                             "minutes": args.minutes.get(BASELINE_DIR)}
    match_file = stage_path / "parameter_match.json"
    if match_file.is_file():
        entry["parameters"] = json.loads(match_file.read_text())
    return entry


# --------------------------------------------------------------------------------------------- diagnostics


def diagnose_stage(preset: str, stage: str, final: Path, device: str | None) -> dict[str, Any]:
    """Held-out recall by generation (with and without memory) at the step's distances, and the memory
    diagnostics (gates, read-attention entropy, write dependence) of ``final``; written beside it."""
    import torch

    from rxt.atomic_io import atomic_write_json
    from rxt.model import RxT
    from training.data.synthetic import SyntheticDialogueConfig, generate_episodes
    from training.memory_diagnostics import diagnose
    from training.model_loading import load_tokenizer
    from training.recall_eval import recall

    eval_sources = PRESETS[preset]["stages"].get(stage, {}).get("eval_data") or []
    distances = (eval_sources[0]["synthetic"].get("distance") if eval_sources else None) or [1, 2, 4]
    wanted = "cuda" if device in (None, "auto", "cuda") and torch.cuda.is_available() else "cpu"
    model = RxT.from_pretrained(final).to(wanted)
    tokenizer = load_tokenizer(None, final)
    doc: dict[str, Any] = {"stage": stage, "model": str(final), "recall": {}, "recall_memory_reset": {}}
    count = 64 if preset != "tiny" else 4
    for k in sorted(set(distances)):
        episodes = generate_episodes(SyntheticDialogueConfig(num_episodes=count, distance=k, split="eval",
                                                             seed=4242))
        doc["recall"][str(k)] = recall(model, tokenizer, episodes)
        doc["recall_memory_reset"][str(k)] = recall(model, tokenizer, episodes, reset_memory=True)
    # the same task with the statements in the question's own query: did stages 1-2 teach copying at all?
    doc["recall_in_context"] = recall(model, tokenizer, generate_episodes(SyntheticDialogueConfig(
        num_episodes=count, distance=list(distances), split="eval", seed=4242, form="in_context")))
    doc["memory"] = diagnose(model, tokenizer, generate_episodes(SyntheticDialogueConfig(
        num_episodes=count, distance=[1, 2, 4], split="eval", seed=4343)))
    atomic_write_json(final.parent / "diagnostics.json", doc)
    gates = " ".join(f"{g['mean']:.3f}" for g in doc["memory"]["gates"])
    print(f"[diagnostics] {stage}: recall {doc['recall']} (memory reset {doc['recall_memory_reset']}; in context "
          f"{doc['recall_in_context']:.3f}); gates "
          f"{gates}; read entropy {doc['memory']['read_entropy']} of {doc['memory']['read_entropy_max']}; "
          f"write cosine {doc['memory']['write_cosine']}", flush=True)
    return doc


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
    """Write the resolved step configs as YAML (the reference files under ``examples/configs/<preset>/``)."""
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    model = PRESETS[preset]["model"]
    tokenizer = None if reuse_tokenizer else str(output_dir / STAGE_DIRS["tokenizer"])
    steps = recipe_steps(preset)
    for number, stage in enumerate(steps, start=1):
        raw = stage_config_dict(preset, stage, model=model, tokenizer=tokenizer,
                                output_dir=output_dir / stage_dir(stage))
        build_stage_config(stage, raw)  # fail here rather than in a later `rxnn train`
        header = (f"# Step {number} ({stage}) of the `{preset}` recipe, generated by\n"
                  f"#   python examples/train_nano.py --preset {preset}{' --reuse-tokenizer' if reuse_tokenizer else ''} "
                  f"--dump-configs {directory}\n"
                  f"# Run alone: rxnn train {stage} --config {directory / config_file(stage)}\n")
        path = directory / config_file(stage)
        path.write_text(header + to_yaml(raw))
        written.append(path)
        model = str(output_dir / stage_dir(stage) / "final")
        tokenizer = None  # later stages read the tokenizer.json saved beside the model
    return written


RESTART_WARMUP = 100
"""Warm-up steps of a stage or baseline continued from carried weights (a fresh optimizer)."""


def _load_summary(path: Path, preset: str) -> dict[str, Any]:
    """The run's summary so far (a later call of a split run adds to it), or a new one."""
    if path.is_file():
        try:
            summary = json.loads(path.read_text())
            if summary.get("preset") == preset:
                return summary
        except json.JSONDecodeError:
            pass
    return {"preset": preset, "stages": {}}


def run_recipe(args: argparse.Namespace) -> dict[str, Any]:
    from rxt.atomic_io import atomic_write_json

    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    summary_file = out / ("baseline_summary.json" if args.baseline_only else "recipe_summary.json")
    summary = _load_summary(summary_file, args.preset)
    summary.setdefault("commands", []).append(" ".join([sys.executable, *sys.argv]))
    if args.baseline_only:
        summary["baseline"] = run_baseline(args, out, None)
        atomic_write_json(summary_file, summary)
        return summary
    steps = recipe_steps(args.preset, args.with_mrl)
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
    for name in (args.start_at, args.stop_after):
        if name is not None and name not in steps:
            raise SystemExit(f"step {name!r} is not in the {args.preset} recipe: {', '.join(steps)}")
    model = PRESETS[args.preset]["model"]
    first = steps.index(args.start_at) if args.start_at else 0  # index of the first step to train
    last = steps.index(args.stop_after) if args.stop_after else len(steps) - 1
    if last < first:
        raise SystemExit(f"--stop-after {args.stop_after} comes before --start-at {args.start_at}")
    for index, stage in enumerate(steps[: last + 1]):
        number = index + 1
        path = out / stage_dir(stage)
        if index < first - 1:
            continue
        if index == first - 1:  # trained earlier (maybe on another machine): its final/ is the starting point
            final = path / "final"
            if not (final / "model.safetensors").is_file():
                raise SystemExit(f"--start-at {args.start_at} needs {final} (step {number}, {stage})")
            print(f"[stage {number}] {stage}: using {final} (--start-at {args.start_at})", flush=True)
            summary["stages"].setdefault(stage, {"final": str(final), "metrics": last_metrics(path)})
            model, tokenizer = str(final), None
            if args.diagnostics and stage == "sft" and "diagnostics" not in summary["stages"][stage]:
                summary["stages"][stage]["diagnostics"] = diagnose_stage(args.preset, stage, final, args.device)
            continue
        raw = stage_config_dict(args.preset, stage, model=model, tokenizer=tokenizer, output_dir=path,
                                steps=args.steps, device=args.device, seed=args.seed,
                                minutes=args.minutes.get(stage))
        if index == first and args.start_at:  # a fresh optimizer on carried weights: a short warm-up
            raw["train"]["warmup_steps"] = min(raw["train"].get("warmup_steps", 0), RESTART_WARMUP)
        module, config = build_stage_config(stage, raw)
        path.mkdir(parents=True, exist_ok=True)
        (path / "recipe_config.yaml").write_text(to_yaml(raw))
        final = path / "final"
        start = time.perf_counter()
        if args.resume and (final / "model.safetensors").is_file():
            print(f"[stage {number}] {stage}: {final} exists, skipped (--resume)", flush=True)
        else:
            print(f"[stage {number}] {stage}: model={model} -> {path}", flush=True)
            final = Path(module.run_stage(config, resume=args.resume and stage != "mrl"))
        metrics = last_metrics(path)
        seconds = time.perf_counter() - start
        print(f"[stage {number}] {stage} done in {seconds:.1f}s: final={final}\n    {_fmt(metrics)}", flush=True)
        entry: dict[str, Any] = {"final": str(final), "seconds": round(seconds, 2), "metrics": metrics}
        if args.minutes.get(stage) is not None:
            entry["minutes"] = args.minutes[stage]
        summary["stages"][stage] = entry
        if args.diagnostics and (stage in ("sft", "mem-attn") or stage_module(stage) == "smat"):
            entry["diagnostics"] = diagnose_stage(args.preset, stage, final, args.device)  # sft: "before"
        atomic_write_json(summary_file, summary)
        model, tokenizer = str(final), None
    if args.with_baseline:
        rxt_final = summary["stages"].get("smat", {}).get("final")
        summary["baseline"] = run_baseline(args, out, rxt_final)
        atomic_write_json(summary_file, summary)
    print(f"recipe finished; the model is {model}", flush=True)
    return summary


def _parse_minutes(parser: argparse.ArgumentParser, items: list[str], known: list[str]) -> dict[str, float]:
    budgets: dict[str, float] = {}
    known = [*known, BASELINE_DIR]
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
                        help="then train the stateless baseline (same data, same step budget as its stages)")
    parser.add_argument("--baseline-only", action="store_true",
                        help="train only the stateless baseline (matched to the preset's RxT, or continued from "
                             "--baseline-from); its summary goes to baseline_summary.json")
    parser.add_argument("--baseline-from", default=None, metavar="DIR",
                        help="with --baseline-only: continue this saved baseline (a fresh optimizer, short warm-up)")
    parser.add_argument("--minutes", action="append", default=[], metavar="STAGE=MINUTES",
                        help="wall-clock budget of a step (joint, sft, mem-attn, smat-k2 ..., smat, mrl, baseline), "
                             "repeatable: the step horizon and cosine are shortened to fit (train.max_minutes)")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default=None)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--resume", action="store_true",
                        help="skip stages whose final/ exists; resume the interrupted stage from its checkpoint")
    parser.add_argument("--start-at", default=None, metavar="STEP",
                        help="skip the steps before this one; the one just before must have its final/ in "
                             "--output-dir already (e.g. carried from another machine); its optimizer restarts "
                             f"with at most {RESTART_WARMUP} warm-up steps")
    parser.add_argument("--stop-after", default=None, metavar="STEP",
                        help="stop after this step (a split run: the next call starts at the step after it)")
    parser.add_argument("--diagnostics", action="store_true",
                        help="after sft (before the memory stages), mem-attn and every SMAT step: held-out recall "
                             "by generation and the memory diagnostics, into <step>/diagnostics.json")
    parser.add_argument("--dump-configs", type=Path, default=None,
                        help="write the resolved stage configs as YAML into this folder and exit")
    args = parser.parse_args(argv)
    steps = recipe_steps(args.preset)
    for flag in ("start_at", "stop_after"):
        value = getattr(args, flag)
        if value is not None and value not in steps[1:] + (["joint"] if flag == "stop_after" else []):
            parser.error(f"--{flag.replace('_', '-')} {value!r}: expected one of {', '.join(steps)}")
    if args.start_at == "mrl" and not args.with_mrl:
        parser.error("--start-at mrl needs --with-mrl")
    if args.baseline_from and not args.baseline_only:
        parser.error("--baseline-from needs --baseline-only")
    if args.steps is not None and args.steps < 1:
        parser.error("--steps must be >= 1")
    args.minutes = _parse_minutes(parser, args.minutes, steps)
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

"""Where a nano SMAT step of the recipe goes on the GPU, eager, through `SMATTrainer._train_step`: the recipe's
variable batch shapes, shapes padded to width buckets (``shape_buckets: [64, 128]``, all turns) and one fixed width
(``[256]``), each with a torch.profiler summary per step (kernels, GPU-busy ms, the ops with the most host time).

    OUT=/tmp CUDNN=1 python benchmarks/smat_cudnn_probe.py    # on a GPU; writes $OUT/smat_probe.json

``CUDNN=1`` lets SDPA use cuDNN attention as the trainer did before `training/attention_backends.py`; without it
the step runs as on main (no cuDNN). Its one run (``CUDNN=1`` in effect: the code then had no switch;
`benchmarks/results/smat_cudnn_probe.json`) found cuDNN planning every new shape on the host.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, "examples")
import train_nano  # the recipe's stage configs

from training.stages.episode_stage import EpisodeTrainer
from training.stages.memory_attention_pretraining import prepare_episodes
from training.stages.smat import SMATTrainer
from training.trainer import Trainer

SHAPES = {"variable": [], "buckets": [64, 128], "fixed256": [256]}


def build(stage: str, buckets: list[int]) -> SMATTrainer:
    raw = train_nano.stage_config_dict("nano", stage, model="rxt/assets/default_model", tokenizer=None,
                                       output_dir=Path("/tmp/probe_out") / stage, device="cuda")
    raw["shape_buckets"] = buckets
    raw["train"]["compile"] = False  # eager in every variant, as the recipe runs SMAT
    _, cfg = train_nano.build_stage_config(stage, raw)
    model, tok, train, evals = prepare_episodes(cfg, "episode")
    return SMATTrainer(model, cfg, train, evals, tokenizer=tok)


def timed(trainer: SMATTrainer, steps: int, warm: int = 3) -> dict:
    batches = trainer._loader()
    for _ in range(warm):
        trainer._train_step(batches)
    torch.cuda.synchronize()
    times, tokens = [], []
    for _ in range(steps):
        t0 = time.perf_counter()
        metrics = trainer._train_step(batches)
        torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
        tokens.append(metrics["tokens"])
    return {"step_ms_median": 1000 * statistics.median(times), "tokens_per_step": statistics.mean(tokens),
            "tok_s": sum(tokens) / sum(times)}


def profiled(trainer: SMATTrainer, steps: int = 3) -> dict:
    batches = trainer._loader()
    trainer._train_step(batches)
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for _ in range(steps):
            trainer._train_step(batches)
        torch.cuda.synchronize()
    events = prof.key_averages()
    on_gpu = [e for e in events if e.device_type == torch.autograd.DeviceType.CUDA]
    top = sorted(events, key=lambda e: e.self_cpu_time_total, reverse=True)[:15]
    return {"kernels_per_step": sum(e.count for e in on_gpu) / steps,
            "gpu_ms_per_step": sum(e.self_device_time_total for e in on_gpu) / 1000 / steps,
            "top_cpu": [(e.key, round(e.self_cpu_time_total / 1000 / steps, 2), e.count // steps) for e in top]}


def main() -> None:
    if os.environ.get("CUDNN") == "1":
        EpisodeTrainer._autocast = Trainer._autocast  # the step as before training/attention_backends.py
    results = {}
    for stage in ("smat-k2", "smat"):
        results[stage] = {}
        for label, buckets in SHAPES.items():
            trainer = build(stage, buckets)
            entry = timed(trainer, 12)
            if label != "fixed256":
                entry["profile"] = profiled(trainer)
            results[stage][label] = entry
            print(stage, label, json.dumps(entry)[:1500], flush=True)
            del trainer
            torch.cuda.empty_cache()
    Path(os.environ.get("OUT", "/tmp"), "smat_probe.json").write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()

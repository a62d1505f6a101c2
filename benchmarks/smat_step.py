"""Where a stage-4 (SMAT) step spends its time: step time against GPU-busy time and kernel count.

``--reference`` measures the per-turn loop (decoder on the turn, then encoder + memory attention to update the
STM, turn after turn), whose kernel count grows with the number of turns while each kernel is small at `nano`
size; the default is the restructured step (encoder and decoder once over all turns, only the memory-attention
chain sequential; ``--compile`` compiles its parts as `SMATTrainer` does: `compile_objective`). This measures, for the `nano` RxT (untrained weights: timing only) under bf16 autocast
with AdamW, per optimizer step: the median wall time (CUDA events, after warm-up), the summed time of the GPU
kernels and their number (torch.profiler over a few steps). ``gpu_busy_fraction`` well below 1 means the step
is bound by launching kernels, not by computing them: a bigger batch is then nearly free, and fewer launches
(CUDA graphs, compilation) are the lever. ``--top-kernels N`` records in each row (``top_kernels``) the N kernels
with the most GPU time per step (name, calls, total ms): where a GPU-bound step's time goes (on the CPU: the ops
with the most self time). ``--trainer-attention`` runs SDPA as the SMAT trainer does (no cuDNN).

    python benchmarks/smat_step.py --out benchmarks/results/smat_step.json
    python benchmarks/smat_step.py --shapes 128x18 --top-kernels 25 --out /tmp/smat_step.json
"""

from __future__ import annotations

import argparse
import contextlib
import platform
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.bench_utils import RESULTS_DIR, inside, print_top_kernels, time_ms, top_kernels
from rxt.atomic_io import atomic_write_json
from rxt.config import RxTConfig
from rxt.model import RxT
from training.attention_backends import shape_varying_attention
from training.stages.smat import DYNAMIC_COMPILE, SMATObjective, compile_chain, compile_objective
from training.stages.smat_batched import stack_episode_turns
from training.trainer import move_to_device

IGNORE_INDEX = -100


def make_turns(batch: int, turns: int, length: int, vocab: int, device: torch.device) -> list[dict[str, torch.Tensor]]:
    """Random episodes of ``turns`` full turns: the first half of each turn is the query (no loss)."""
    g = torch.Generator().manual_seed(0)
    out = []
    for _ in range(turns):
        ids = torch.randint(10, vocab, (batch, length), generator=g)
        labels = ids.clone()
        labels[:, : length // 2] = IGNORE_INDEX
        out.append({"input_ids": ids.to(device), "attention_mask": torch.ones_like(ids, dtype=torch.bool).to(device),
                    "labels": labels.to(device), "active": torch.ones(batch, dtype=torch.bool, device=device)})
    return out


def measure(preset: str, batch: int, turns: int, length: int, bptt: int, device: torch.device,
            warmup: int, iters: int, profile_steps: int, reference: bool = False, compile_parts: bool = False,
            top: int = 0, trainer_attention: bool = False, dynamic: str = "off") -> dict:
    torch.manual_seed(0)
    model = RxT(RxTConfig.preset(preset)).to(device)
    objective = SMATObjective(model, bptt, reference=reference).train()
    if compile_parts:  # as SMATTrainer.compile_model
        compile_objective(objective)
    elif dynamic == "chain":  # as SMATTrainer with dynamic_compile
        compile_chain(objective)
    elif dynamic == "step":
        compile_objective(objective, dynamic=True)
    # The objective's forward/backward is what is measured; the Trainer's own bookkeeping (clipping, metrics,
    # its foreach AdamW) launches few kernels beside the ~50k of an 18-turn step, so a fused AdamW stands in.
    optimizer = torch.optim.AdamW(objective.parameters(), lr=1e-4, fused=device.type == "cuda")
    data = make_turns(batch, turns, length, model.config.vocab_size, torch.device("cpu"))
    # stacked once on the host, as the trainer's collate does (answer positions listed there)
    data = move_to_device(data if reference else stack_episode_turns(data), device)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")

    def step(batch_data=None) -> None:
        optimizer.zero_grad(set_to_none=True)
        # --trainer-attention: SDPA without cuDNN, as `EpisodeTrainer._autocast` runs the step
        with autocast, shape_varying_attention() if trainer_attention else contextlib.nullcontext():
            loss = objective(data if batch_data is None else batch_data)["loss"]
        loss.backward()

    if dynamic != "off":
        # automatic dynamic shapes compile the first shape statically and go dynamic at the next: one step at a
        # narrower width first, so the timed steps run the dynamic graphs a recipe's varying batches would
        other = make_turns(batch, turns, max(length - 8, 2), model.config.vocab_size, torch.device("cpu"))
        step(move_to_device(stack_episode_turns(other), device))
        optimizer.step()

    step_ms = time_ms(step, device, warmup, iters)
    row = {"preset": preset, "path": "reference" if reference else "restructured",
           "compiled": compile_parts or (f"dynamic shapes: {dynamic} (warmed at width {max(length - 8, 2)} first)"
                                         if dynamic != "off" else False),
           "attention": "trainer (no cuDNN)" if trainer_attention else "any SDPA backend",
           "batch": batch, "turns": turns, "turn_tokens": length, "bptt_depth": bptt,
           "step_ms": step_ms, "tokens_per_s": batch * turns * length / (step_ms / 1e3)}
    print("timed:", row, flush=True)  # before the profile: a run cut short by a timeout still shows the timing
    cuda = device.type == "cuda"
    if cuda or top:  # on the CPU only for --top-kernels (the CPU ops by self time)
        from torch.profiler import ProfilerActivity, profile

        steps = max(profile_steps, 1)
        with profile(activities=[ProfilerActivity.CUDA if cuda else ProfilerActivity.CPU]) as prof:
            for _ in range(steps):
                step()
            if cuda:
                torch.cuda.synchronize(device)
        if cuda:
            kernels = [e for e in prof.events() if e.device_type.name == "CUDA"]
            busy_ms = sum(e.device_time for e in kernels) / 1e3 / steps
            row.update(kernels_per_step=len(kernels) / steps, gpu_busy_ms=busy_ms,
                       gpu_busy_fraction=busy_ms / step_ms)
        if top:
            row["top_kernels"] = top_kernels(prof, top, steps)
            print_top_kernels(row["top_kernels"], f"smat_step {batch}x{turns}")
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="nano")
    parser.add_argument("--shapes", nargs="+", default=["32x6", "32x18", "128x18", "512x18"],
                        help="BATCHxTURNS per measurement")
    parser.add_argument("--turn-tokens", type=int, default=48)
    parser.add_argument("--bptt-depth", type=int, default=4)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--iters", type=int, default=10)
    parser.add_argument("--profile-steps", type=int, default=3)
    parser.add_argument("--reference", action="store_true", help="the per-turn loop (the step before issue 12)")
    parser.add_argument("--compile", action="store_true",
                        help="compile the encoder, the memory attention and the decoder half as SMATTrainer does")
    parser.add_argument("--dynamic-compile", choices=DYNAMIC_COMPILE, default="off",
                        help="compile with automatic dynamic shapes (SMATStageConfig.dynamic_compile): chain = the "
                             "memory-attention update only, step = every part")
    parser.add_argument("--top-kernels", type=int, default=0, metavar="N",
                        help="record (and print) the N kernels with the most total time per step, from the profile "
                             "(on the CPU: the N ops with the most self time); 0 = off")
    parser.add_argument("--trainer-attention", action="store_true",
                        help="SDPA without cuDNN, as the SMAT trainer runs the step (training.attention_backends)")
    parser.add_argument("--both-attentions", action="store_true",
                        help="measure every shape twice in one process: the trainer's attention, then any backend")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR / "smat_step.json")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if device.type != "cuda" and inside(args.out, RESULTS_DIR):
        parser.error("CPU timings do not go into benchmarks/results/; pass --out elsewhere")
    if args.top_kernels < 0:
        parser.error(f"--top-kernels {args.top_kernels}: expected N >= 0 (0 = off)")
    shapes = []
    for shape in args.shapes:
        b, sep, t = shape.partition("x")
        if not (sep and b.isdigit() and t.isdigit() and int(b) > 0 and int(t) > 0):
            parser.error(f"--shapes {shape!r}: expected BATCHxTURNS with positive integers, e.g. 32x18")
        shapes.append((int(b), int(t)))
    rows = []
    attentions = (True, False) if args.both_attentions else (args.trainer_attention,)
    for batch, turns in shapes:
        for trainer_attention in attentions:
            row = measure(args.preset, batch, turns, args.turn_tokens, args.bptt_depth, device, args.warmup,
                          args.iters, args.profile_steps, reference=args.reference, compile_parts=args.compile,
                          top=args.top_kernels, trainer_attention=trainer_attention, dynamic=args.dynamic_compile)
            print(row, flush=True)
            rows.append(row)
            doc = {"benchmark": "smat_step",
                   "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
                   "versions": {"torch": torch.__version__, "cuda": torch.version.cuda,
                                "python": platform.python_version()},
                   "command": " ".join(["python", "benchmarks/smat_step.py",
                                        *(argv if argv is not None else sys.argv[1:])]),
                   "dtype": "bfloat16 autocast" if device.type == "cuda" else "float32", "results": rows}
            atomic_write_json(args.out, doc)  # after every row: a run cut short keeps what it measured
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

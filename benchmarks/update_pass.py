"""The bare memory-update pass at 1 and 64 rows: where its device time goes, and what a call costs.

Per row count, on interactions of the serving benchmark's length (its question, 32 answer tokens):

- ``call_ms``: one `MemoryUpdater` call as the runtime makes it (STMs passed per session, host padding and copy,
  the graph replay, the rows copied out), waiting for the result each time;
- ``replay_ms``: the captured graph alone, replayed back to back (device time per pass);
- ``kernels_ms`` and ``top_kernels``: the pass's kernels run eagerly under the profiler (the graph replays the same
  kernels; eagerly each is traced on its own), their device time summed, and the largest;
- ``graph_vs_eager_max_abs_diff``: the graphed result against `RxT.update_memory` on the unpadded batch;
- with ``--compile``, ``compiled``: the same call and replay times with the pass fused by ``torch.compile`` before
  capture (`MemoryUpdater`'s ``compile_pass``), in the same run, with its first call's seconds (compile and capture)
  and its difference from the plain graph.

The target the runtime is held to: the update at 64 sessions within 3x one session's.

    python benchmarks/update_pass.py --out /tmp/update_pass.json                 # nano, GPU
    python benchmarks/update_pass.py --compile --out /tmp/update_pass.json       # and the fused pass beside it
    python benchmarks/update_pass.py --config 1b --rows 1 64 --out /tmp/update_pass_1b.json
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path

import torch
from bench_utils import append_run, git_commit, print_top_kernels, time_ms, top_kernels
from serving import bench_model

from rxt.memory_update import MemoryUpdater
from rxt.model import RxT
from rxt.template import InteractionTemplate
from rxt.tokenizer import RxTokenizer

QUESTION = "Hello, how are you today?"


def measure(model: RxT, tokenizer: RxTokenizer, rows_count: int, device: torch.device, answer_tokens: int,
            compile_pass: bool = False) -> dict:
    template = InteractionTemplate(tokenizer)
    question = template.query_ids(QUESTION)
    torch.manual_seed(rows_count)
    rows = [question + torch.randint(10, tokenizer.vocab_size, (answer_tokens - i % 3,)).tolist() + [tokenizer.eos_id]
            for i in range(rows_count)]
    stms = list(model.initial_memory(rows_count).contiguous().unbind(1))
    updater = MemoryUpdater(model, pad_id=tokenizer.pad_id, max_batch=rows_count)
    eager = MemoryUpdater(model, pad_id=tokenizer.pad_id, use_cuda_graphs=False)
    graphed = updater(stms, rows)
    reference = eager(torch.stack(stms, dim=1), rows)
    out = {"rows": rows_count, "tokens_per_row": max(len(r) for r in rows), "graphed": updater.graphed,
           "graph_vs_eager_max_abs_diff": (graphed.float() - reference.float()).abs().max().item(),
           "call_ms": time_ms(lambda: updater(stms, rows), device, 3, 20)}
    if updater.graphed:
        key = updater._key(rows_count, max(len(r) for r in rows))
        graph, buffers = updater._graphs[key]
        out["bucket"] = list(key)
        out["replay_ms"] = time_ms(graph.replay, device, 3, 50, sync_each=False)
        updater._run(buffers)  # warm, then the same kernels eagerly under the profiler
        torch.cuda.synchronize()
        activities = [torch.profiler.ProfilerActivity.CPU, torch.profiler.ProfilerActivity.CUDA]
        with torch.profiler.profile(activities=activities) as prof:
            for _ in range(3):
                updater._run(buffers)
            torch.cuda.synchronize()
        kernels = top_kernels(prof, 1000, 3)
        out["kernels_ms"] = sum(k["total_ms"] for k in kernels)
        out["kernel_launches"] = sum(k["calls"] for k in kernels)
        out["top_kernels"] = kernels[:15]
        print_top_kernels(out["top_kernels"], f"update pass, {rows_count} rows {key}")
    if compile_pass and updater.graphed:
        fused = MemoryUpdater(model, pad_id=tokenizer.pad_id, max_batch=rows_count, compile_pass=True)
        start = time.perf_counter()
        result = fused(stms, rows)
        torch.cuda.synchronize()
        first_s = time.perf_counter() - start
        graph = fused._graphs[fused._key(rows_count, max(len(r) for r in rows))][0]
        out["compiled"] = {"first_call_s": first_s, "graphed": fused.graphed,
                           "vs_plain_graph_max_abs_diff": (result.float() - graphed.float()).abs().max().item(),
                           "call_ms": time_ms(lambda: fused(stms, rows), device, 3, 20),
                           "replay_ms": time_ms(graph.replay, device, 3, 50, sync_each=False)}
        c = out["compiled"]
        print(f"update {rows_count:>3} rows, compiled: call {c['call_ms']:.3f} ms, replay {c['replay_ms']:.3f} ms "
              f"(plain {out['replay_ms']:.3f}), first call {first_s:.1f} s, |compiled - plain| "
              f"{c['vs_plain_graph_max_abs_diff']:.2e}", flush=True)
    print(f"update {rows_count:>3} rows: call {out['call_ms']:.3f} ms, replay {out.get('replay_ms', float('nan')):.3f} "
          f"ms, kernels {out.get('kernels_ms', float('nan')):.3f} ms, |graph - eager| "
          f"{out['graph_vs_eager_max_abs_diff']:.2e}", flush=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default=None, help="model dtype (default: bfloat16 on CUDA, float32 on CPU)")
    parser.add_argument("--preset", default="nano")
    parser.add_argument("--config", choices=["1b"], default=None, help="the ~1B configuration of benchmarks/decode.py")
    parser.add_argument("--rows", type=int, nargs="+", default=[1, 64])
    parser.add_argument("--answer-tokens", type=int, default=32)
    parser.add_argument("--compile", action="store_true",
                        help="also time the pass fused by torch.compile before capture (MemoryUpdater compile_pass)")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    tokenizer = RxTokenizer.default()
    model, device, dtype = bench_model(args, tokenizer)
    levels = [measure(model, tokenizer, n, device, args.answer_tokens, args.compile) for n in args.rows]
    by_rows = {lv["rows"]: lv for lv in levels}
    ratio = None
    if 1 in by_rows and 64 in by_rows:
        ratio = {k: by_rows[64][k] / by_rows[1][k] for k in ("call_ms", "replay_ms", "kernels_ms") if k in by_rows[1]}
        print("64 rows / 1 row: " + ", ".join(f"{k} {v:.2f}x" for k, v in ratio.items()))
        if "compiled" in by_rows[1] and "compiled" in by_rows[64]:
            ratio["compiled"] = {k: by_rows[64]["compiled"][k] / by_rows[1]["compiled"][k]
                                 for k in ("call_ms", "replay_ms")}
            print("compiled, 64 rows / 1 row: " + ", ".join(f"{k} {v:.2f}x" for k, v in ratio["compiled"].items()))
    run = {
        "benchmark": "update_pass", "commit": git_commit(), "preset": args.preset,
        "device": torch.cuda.get_device_name() if device.type == "cuda" else platform.processor() or "cpu",
        "torch": torch.__version__, "cuda": torch.version.cuda, "python": platform.python_version(),
        "dtype": str(dtype).removeprefix("torch."), "command": " ".join(["python", *sys.argv]),
        "levels": levels, "ratio_64_vs_1": ratio,
    }
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        append_run(args.out, "update_pass", run)


if __name__ == "__main__":
    main()

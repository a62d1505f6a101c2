"""Time one attention layer of every member of the family (MHA, GQA, MQA, SQA, sSQA, xSQA).

Encoder-style: bidirectional full attention, no mask, batch 1, so every pass is compute-bound and the score and
value products dominate at long sequences. SQA cuts those products to H_q/H of MHA's; GQA and MQA do not (they
save K/V memory traffic, which matters when decoding, not here). A "bare SDPA" baseline with the GQA and xSQA
head counts (just ``F.scaled_dot_product_attention`` on ready-made q, k, v) shows how much of each time is the
module's projections and reshapes.

Timing: CUDA events around each iteration after warm-up, median over iterations; on CPU ``time.perf_counter``
(CPU runs are smoke tests and ratios, not results). SDPA backend selection is PyTorch's default; the JSON records
which backends were enabled.

    python benchmarks/attention.py                        # GPU, bf16, 1k..128k tokens
    python benchmarks/attention.py --device cpu --dtype float32 --seq-lens 128 256 --iters 2 --warmup 1 \\
        --out /tmp/attn.json                               # smoke test
"""

from __future__ import annotations

import argparse
import shlex
import sys
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from bench_utils import RESULTS_DIR, inside, time_ms

_ROOT = Path(__file__).resolve().parents[1]
if str(_ROOT) not in sys.path:  # runnable as `python benchmarks/attention.py` without installing the package
    sys.path.insert(0, str(_ROOT))

from rxt.atomic_io import atomic_write_json
from rxt.attention import Attention
from rxt.attention_config import ATTENTION_VARIANTS, AttentionConfig

DEFAULT_SEQ_LENS = (1024, 2048, 4096, 8192, 16384, 32768, 65536, 131072)
BARE_HEADS = ("gqa", "xsqa")
PASSES = ("forward", "forward_backward")
MODE = "bidirectional full attention, no mask, batch 1 (encoder-style, compute-bound)"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seq-lens", type=int, nargs="+", default=list(DEFAULT_SEQ_LENS))
    p.add_argument("--variants", nargs="+", default=list(ATTENTION_VARIANTS), choices=ATTENTION_VARIANTS)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", default="bfloat16", choices=("bfloat16", "float16", "float32"))
    p.add_argument("--dim", type=int, default=512)
    p.add_argument("--num-heads", type=int, default=16)
    p.add_argument("--batch-size", type=int, default=1)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--iters", type=int, default=20)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=RESULTS_DIR / "attention.json")
    args = p.parse_args(argv)
    for name in ("warmup", "iters", "dim", "num_heads", "batch_size"):
        limit = 0 if name == "warmup" else 1
        if getattr(args, name) < limit:
            p.error(f"--{name.replace('_', '-')}={getattr(args, name)} must be >= {limit}")
    if min(args.seq_lens) < 1:
        p.error(f"--seq-lens must be >= 1, got {min(args.seq_lens)}")
    if "gqa" not in args.variants:
        args.variants = ["gqa", *args.variants]  # the reference for speed-ups
    device = torch.device(args.device)
    if device.type != "cuda" and inside(args.out, RESULTS_DIR):
        p.error(
            f"--out={args.out} is under {RESULTS_DIR}, which holds GPU timings only; "
            "pass another --out for a CPU run"
        )
    return args


def _measure(
    make: Callable[..., Callable[[], None]], make_args: tuple, device: torch.device, warmup: int, iters: int
) -> dict:
    """Time ``make(*make_args)``; a CUDA out-of-memory error is recorded, not raised."""
    try:
        return {"ms": time_ms(make(*make_args), device, warmup, iters, sync_each=False)}
    except torch.cuda.OutOfMemoryError as exc:  # the math SDPA backend at long sequences, say
        return {"ms": None, "error": f"out of memory: {str(exc).splitlines()[0]}"}
    finally:
        if device.type == "cuda":
            torch.cuda.empty_cache()


def module_pass(attn: Attention, x: torch.Tensor, kind: str) -> Callable[[], None]:
    if kind == "forward":

        def run() -> None:
            with torch.no_grad():
                attn(x)

        return run
    x = x.detach().requires_grad_(True)
    grad = torch.randn_like(x)

    def run_backward() -> None:
        attn.zero_grad(set_to_none=True)
        x.grad = None
        attn(x).backward(grad)

    return run_backward


def sdpa_pass(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, kind: str) -> Callable[[], None]:
    gqa = q.shape[1] != k.shape[1]
    if kind == "forward":

        def run() -> None:
            with torch.no_grad():
                F.scaled_dot_product_attention(q, k, v, enable_gqa=gqa)

        return run
    q, k, v = (t.detach().requires_grad_(True) for t in (q, k, v))
    grad = torch.randn_like(q)

    def run_backward() -> None:
        q.grad = k.grad = v.grad = None
        F.scaled_dot_product_attention(q, k, v, enable_gqa=gqa).backward(grad)

    return run_backward


# -- reporting ------------------------------------------------------------------------------------------------
def sdpa_backends() -> dict:
    names = ("flash", "mem_efficient", "math", "cudnn")
    out = {}
    for name in names:
        fn = getattr(torch.backends.cuda, f"{name}_sdp_enabled", None)
        if fn is not None:
            out[name] = bool(fn())
    return out


def add_speedups(records: list[dict], key: str) -> None:
    """speedup_vs_gqa = GQA's time / this time, for the same sequence length and pass."""
    gqa = {(r["seq_len"], r["pass"]): r["ms"] for r in records if r[key] == "gqa"}
    for r in records:
        ref = gqa.get((r["seq_len"], r["pass"]))
        r["speedup_vs_gqa"] = ref / r["ms"] if ref and r["ms"] else None


def print_table(title: str, records: list[dict], key: str, names: list[str], seq_lens: list[int]) -> None:
    by = {(r[key], r["seq_len"], r["pass"]): r for r in records}

    def cell(name: str, t: int, kind: str) -> str:
        r = by.get((name, t, kind))
        if r is None or r["ms"] is None:
            return f"{'OOM' if r else '-':>10} {'':>6}"
        return f"{r['ms']:10.3f} {r['speedup_vs_gqa']:5.2f}x"

    print(f"\n{title}")
    header = f"{'heads':<6} {'seq_len':>8} | {'fwd ms':>10} {'vs gqa':>6} | {'fwd+bwd ms':>10} {'vs gqa':>6}"
    print(header)
    print("-" * len(header))
    for t in seq_lens:
        for name in names:
            print(f"{name:<6} {t:>8} | {cell(name, t, 'forward')} | {cell(name, t, 'forward_backward')}")


def write_json_atomic(path: Path, payload: dict) -> None:
    atomic_write_json(path, payload)


# -- main -----------------------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype)
    torch.manual_seed(args.seed)
    cfgs = {
        name: AttentionConfig.variant(name, dim=args.dim, num_heads=args.num_heads) for name in args.variants
    }
    bare_names = list(BARE_HEADS)
    bare_cfgs = {n: AttentionConfig.variant(n, dim=args.dim, num_heads=args.num_heads) for n in bare_names}
    head_dim = args.dim // args.num_heads

    records: list[dict] = []
    bare: list[dict] = []
    total = len(args.seq_lens) * (len(cfgs) + len(bare_cfgs)) * len(PASSES)
    done = 0
    for t in args.seq_lens:
        x = torch.randn(args.batch_size, t, args.dim, device=device, dtype=dtype)
        for name, cfg in cfgs.items():
            attn = Attention(cfg).to(device=device, dtype=dtype)
            for kind in PASSES:
                r = _measure(module_pass, (attn, x, kind), device, args.warmup, args.iters)
                records.append({"variant": name, "seq_len": t, "pass": kind, **r})
                done += 1
                _progress(done, total, name, t, kind, r)
            del attn
        for name, cfg in bare_cfgs.items():
            q = torch.randn(args.batch_size, cfg.num_query_heads, t, head_dim, device=device, dtype=dtype)
            k = torch.randn(args.batch_size, cfg.num_kv_heads, t, head_dim, device=device, dtype=dtype)
            v = torch.randn_like(k)
            for kind in PASSES:
                r = _measure(sdpa_pass, (q, k, v, kind), device, args.warmup, args.iters)
                bare.append(
                    {
                        "heads": name,
                        "num_query_heads": cfg.num_query_heads,
                        "num_kv_heads": cfg.num_kv_heads,
                        "seq_len": t,
                        "pass": kind,
                        **r,
                    }
                )
                done += 1
                _progress(done, total, f"sdpa:{name}", t, kind, r)
            del q, k, v
        del x

    add_speedups(records, "variant")
    add_speedups(bare, "heads")
    payload = {
        "benchmark": "attention",
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "command": shlex.join(["python", *sys.argv]) if argv is None else shlex.join(["python", *argv]),
        "mode": MODE,
        "causal": False,
        "mask": None,
        "dim": args.dim,
        "num_heads": args.num_heads,
        "head_dim": head_dim,
        "batch_size": args.batch_size,
        "dtype": args.dtype,
        "warmup": args.warmup,
        "iters": args.iters,
        "timer": "cuda_events_median" if device.type == "cuda" else "perf_counter_median",
        "forward": "under torch.no_grad()",
        "forward_backward": "forward with autograd, then backward of a fixed random output gradient",
        "sdpa_backends_enabled": sdpa_backends() if device.type == "cuda" else None,
        "heads_by_variant": {n: [c.num_query_heads, c.num_kv_heads] for n, c in cfgs.items()},
        "records": records,
        "bare_sdpa": bare,
    }
    print_table(
        f"Attention layer, D={args.dim}, H={args.num_heads}, {args.dtype}, {payload['device']}",
        records,
        "variant",
        list(cfgs),
        args.seq_lens,
    )
    print_table("Bare SDPA (no projections)", bare, "heads", bare_names, args.seq_lens)
    write_json_atomic(args.out, payload)
    print(f"\nwrote {args.out}")
    return payload


def _progress(done: int, total: int, name: str, t: int, kind: str, r: dict) -> None:
    ms = f"{r['ms']:.3f} ms" if r["ms"] is not None else r.get("error", "failed")
    print(f"[{done}/{total}] {name} T={t} {kind}: {ms}", file=sys.stderr, flush=True)


if __name__ == "__main__":
    main()

"""Experimental attention (GMA, DMA, Flex-SQA) against SQA and GQA: forward speed and a tiny quality check.

Speed: one causal self-attention layer, batch 1, forward only (``torch.no_grad``), at 4k..256k tokens. CUDA events
around each iteration after warm-up, median over iterations (on CPU ``time.perf_counter``: smoke tests only).
Flex-SQA's compile and block-mask construction happen in warm-up and are cached per sequence length, so they are
*not* in the timed numbers (``flex_setup_ms`` records the first call separately). Out-of-memory and other
failures are recorded per point, not raised.

Quality: ExperimentalAttentionTransformer per variant at tiny scale, same seed, data order, steps and token
budget, trained on chitchat interactions (``training.data.adapters.chitchat_interactions``, tokenised with
``RxTokenizer.default()`` through the interaction template, concatenated and cut into fixed-length rows).
Reports final train loss (mean of the last steps) and held-out loss on the last 10% of the token stream. A
handful of steps at tiny scale says little about the variants at scale; it is a sanity check, labelled as such.

    python benchmarks/experimental_attention.py                     # GPU; writes benchmarks/results/...json
    python benchmarks/experimental_attention.py --device cpu --seq-lens 256 512 --quality-steps 5 \\
        --out /tmp/experimental_attention.json                      # CPU smoke test (never under results/)
"""

from __future__ import annotations

import argparse
import json
import platform
import shlex
import statistics
import sys
import time
from pathlib import Path

import torch
from bench_utils import RESULTS_DIR, inside, time_ms

_ROOT = Path(__file__).resolve().parents[1]
if str(_ROOT) not in sys.path:
    sys.path.insert(0, str(_ROOT))

from rxt.attention import Attention
from rxt.attention_config import AttentionConfig
from rxt.experimental.flex_sqa import FlexSQAAttention
from rxt.experimental.gma import DeepMoEAttention, GroupedMoEAttention
from rxt.experimental.lm import ExperimentalAttentionTransformer, ExperimentalLMConfig

DEFAULT_SEQ_LENS = (4096, 8192, 16384, 32768, 65536, 131072, 262144)
VARIANTS = ("gqa", "sqa", "gma", "dma", "flex-sqa")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument(
        "--dtype",
        default=None,
        choices=("bfloat16", "float16", "float32"),
        help="default bfloat16 on CUDA, float32 on CPU",
    )
    p.add_argument("--seq-lens", type=int, nargs="+", default=list(DEFAULT_SEQ_LENS))
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    p.add_argument("--dim", type=int, default=1024)
    p.add_argument("--num-heads", type=int, default=16)
    p.add_argument("--window", type=int, default=1024, help="Flex-SQA window W (speed runs)")
    p.add_argument("--num-global", type=int, default=16)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--iters", type=int, default=10)
    p.add_argument("--quality-steps", type=int, default=300)
    p.add_argument("--quality-seq-len", type=int, default=128)
    p.add_argument("--quality-batch", type=int, default=16)
    p.add_argument("--quality-window", type=int, default=32)
    p.add_argument("--skip-quality", action="store_true")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=RESULTS_DIR / "experimental_attention.json")
    args = p.parse_args(argv)
    if args.dtype is None:
        args.dtype = "bfloat16" if args.device.startswith("cuda") else "float32"
    if torch.device(args.device).type != "cuda" and inside(args.out, RESULTS_DIR):
        p.error(f"--out={args.out} is under {RESULTS_DIR}, which holds GPU results only; pass another --out")
    if min(args.seq_lens) < 1 or args.iters < 1 or args.quality_steps < 1:
        p.error("--seq-lens, --iters and --quality-steps must be >= 1")
    return args


# -- speed ----------------------------------------------------------------------------------------------------
def head_counts(name: str, h: int) -> dict:
    """Head layout per variant (recorded in the JSON)."""
    if name == "gqa":
        return {"num_query_heads": h, "num_kv_heads": max(1, h // 4)}
    if name in ("sqa", "flex-sqa"):
        return {"num_query_heads": max(1, h // 2), "num_kv_heads": max(1, h // 4)}
    kv = max(1, h // 4)
    out = {"num_query_heads": h, "num_kv_heads": kv, "kv_top_k": max(1, kv // 2)}
    if name == "dma":
        out["query_top_k"] = max(1, h // 2)
    return out


def build(name: str, args: argparse.Namespace, window: int) -> torch.nn.Module:
    heads = head_counts(name, args.num_heads)
    cfg = AttentionConfig(args.dim, args.num_heads, heads["num_query_heads"], heads["num_kv_heads"])
    if name == "gma":
        return GroupedMoEAttention(cfg, kv_top_k=heads["kv_top_k"])
    if name == "dma":
        return DeepMoEAttention(cfg, kv_top_k=heads["kv_top_k"], query_top_k=heads["query_top_k"])
    if name == "flex-sqa":
        return FlexSQAAttention(cfg, window=window, num_global=args.num_global, backend="auto")
    return Attention(cfg)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_forward(module: torch.nn.Module, x: torch.Tensor, warmup: int, iters: int) -> dict:
    device = x.device

    def run() -> None:
        with torch.no_grad():
            module(x, causal=True)

    t0 = time.perf_counter()
    run()  # first call: compile / block mask for flex
    _sync(device)
    first_ms = (time.perf_counter() - t0) * 1e3
    return {"ms": time_ms(run, device, warmup, iters, sync_each=False), "first_call_ms": first_ms}


def speed(args: argparse.Namespace, device: torch.device, dtype: torch.dtype) -> list[dict]:
    rows = []
    for t in args.seq_lens:
        for name in args.variants:
            row = {"variant": name, "seq_len": t, **head_counts(name, args.num_heads)}
            if name == "flex-sqa":
                row.update(window=args.window, num_global=args.num_global)
            try:
                torch.manual_seed(args.seed)
                module = build(name, args, args.window).to(device=device, dtype=dtype).eval()
                x = torch.randn(1, t, args.dim, device=device, dtype=dtype)
                row.update(time_forward(module, x, args.warmup, args.iters))
                if name == "flex-sqa":
                    row["flex_path"] = (
                        "flex" if module.fallback_reason is None and device.type == "cuda" else "sdpa"
                    )
                    row["fallback_reason"] = module.fallback_reason
            except torch.cuda.OutOfMemoryError as exc:
                row.update(ms=None, error=f"out of memory: {str(exc).splitlines()[0]}")
            except RuntimeError as exc:  # e.g. a dense CPU mask too large
                row.update(ms=None, error=f"{type(exc).__name__}: {str(exc).splitlines()[0][:300]}")
            finally:
                module = x = None
                if device.type == "cuda":
                    torch.cuda.empty_cache()
            print(json.dumps(row), flush=True)
            rows.append(row)
    gqa = {r["seq_len"]: r["ms"] for r in rows if r["variant"] == "gqa" and r.get("ms")}
    for r in rows:
        base = gqa.get(r["seq_len"])
        r["vs_gqa"] = round(r["ms"] / base, 3) if r.get("ms") and base else None
    return rows


# -- quality --------------------------------------------------------------------------------------------------
def chitchat_tokens(max_tokens: int) -> tuple[torch.Tensor, int]:
    from rxt.template import InteractionTemplate
    from rxt.tokenizer import RxTokenizer
    from training.data.adapters import chitchat_interactions

    tok = RxTokenizer.default()
    template = InteractionTemplate(tok)
    ids: list[int] = []
    for rec in chitchat_interactions():
        ids.extend(template.interaction_ids(rec.query, rec.answer))
        if len(ids) >= max_tokens:
            break
    return torch.tensor(ids, dtype=torch.long), tok.vocab_size


def quality(args: argparse.Namespace, device: torch.device) -> dict:
    seq, batch, steps = args.quality_seq_len, args.quality_batch, args.quality_steps
    budget = steps * batch * seq
    stream, vocab = chitchat_tokens(int(budget * 1.12) + seq)
    n_eval = max(seq * 4, len(stream) // 10)
    train, held = stream[:-n_eval], stream[-n_eval:]
    rows_train = train[: (len(train) // seq) * seq].view(-1, seq)
    rows_eval = held[: (len(held) // seq) * seq].view(-1, seq)
    results = {}
    for name in args.variants:
        torch.manual_seed(args.seed)
        cfg = ExperimentalLMConfig(
            vocab_size=vocab,
            dim=128,
            num_layers=2,
            num_heads=8,
            ffn_hidden_dim=384,
            max_seq_len=seq,
            attention=name,
            window=args.quality_window,
            num_global=4,
        )
        model = ExperimentalAttentionTransformer(cfg).to(device)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.0)
        gen = torch.Generator().manual_seed(args.seed)
        losses = []
        t0 = time.perf_counter()
        for _ in range(steps):
            idx = torch.randint(0, rows_train.shape[0], (batch,), generator=gen)
            ids = rows_train[idx].to(device)
            out = model(ids, labels=ids)
            opt.zero_grad(set_to_none=True)
            out.loss.backward()
            opt.step()
            losses.append((out.loss - out.aux_loss).item())
        _sync(device)
        train_s = time.perf_counter() - t0
        model.eval()
        with torch.no_grad():
            ev = [model(r[None].to(device), labels=r[None].to(device)) for r in rows_eval[:32]]
            eval_loss = statistics.mean((o.loss - o.aux_loss).item() for o in ev)
        tail = losses[-max(1, steps // 10) :]
        results[name] = {
            "final_train_loss": statistics.mean(tail),
            "heldout_loss": eval_loss,
            "train_seconds": train_s,
            "parameters": model.num_parameters(),
            "tokens_seen": budget,
        }
        print(json.dumps({"quality": name, **results[name]}), flush=True)
    return {
        "setup": {
            "seq_len": seq,
            "batch": batch,
            "steps": steps,
            "token_budget": budget,
            "lr": 1e-3,
            "model": "dim 128, 2 layers, 8 heads, SwiGLU 384",
            "flex_window": args.quality_window,
            "corpus": "chitchat interactions, template [BOS][Q]q[A]a[EOS], concatenated",
            "heldout_rows": int(min(32, rows_eval.shape[0])),
        },
        "results": results,
    }


def honest_notes(rows: list[dict], qual: dict | None, device: torch.device) -> list[str]:
    notes = [
        "GMA/DMA project K/V for all candidate heads and attend each query head to M = H_kv - k + 1 candidate "
        "heads, then keep one: their attention cost is M x GQA's by construction; DMA gates query heads densely "
        "(no FLOP saving).",
        "Flex-SQA attends only W + G keys per query; it changes the model (sliding window), so its speed is not "
        "a like-for-like comparison with full attention.",
    ]
    if device.type != "cuda":
        notes.append(
            "CPU run: smoke test only; timings are not results and Flex-SQA used the dense SDPA path."
        )
    slower = sorted({r["variant"] for r in rows if r.get("vs_gqa") and r["vs_gqa"] > 1.0})
    if slower:
        notes.append(f"Slower than GQA at some length: {', '.join(slower)}.")
    failed = sorted({f"{r['variant']}@{r['seq_len']}" for r in rows if r.get("ms") is None})
    if failed:
        notes.append(f"Failed points (see 'error'): {', '.join(failed)}.")
    if qual and "gqa" in qual["results"]:
        ref = qual["results"]["gqa"]["heldout_loss"]
        worse = [n for n, r in qual["results"].items() if r["heldout_loss"] > ref]
        if worse:
            notes.append(f"Held-out loss worse than GQA at this tiny budget: {', '.join(sorted(worse))}.")
    return notes


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype)
    rows = speed(args, device, dtype)
    qual = None if args.skip_quality else quality(args, device)
    report = {
        "benchmark": "experimental_attention",
        "command": " ".join(shlex.quote(a) for a in [sys.executable, *sys.argv]),
        "device": torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else platform.processor() or "cpu",
        "versions": {
            "torch": torch.__version__,
            "cuda": torch.version.cuda,
            "python": platform.python_version(),
        },
        "dtype": args.dtype,
        "speed_setup": {
            "pass": "forward, no_grad, causal self-attention, batch 1",
            "dim": args.dim,
            "num_heads": args.num_heads,
            "warmup": args.warmup,
            "iters": args.iters,
            "statistic": "median ms (CUDA events on GPU)",
        },
        "speed": rows,
        "quality": qual,
        "notes": honest_notes(rows, qual, device),
        "is_gpu_result": device.type == "cuda",
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print(f"wrote {args.out}")
    return report


if __name__ == "__main__":
    main()

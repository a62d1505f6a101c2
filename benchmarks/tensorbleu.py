"""TensorBLEU (vectorised per-sentence BLEU on token ids) against NLTK's ``sentence_bleu`` in a Python loop.

For each batch size and sequence length: a batch of random reference token ids and candidates that copy their
reference with a fraction of the tokens replaced (so that every n-gram order has matches), all rows full length.

* TensorBLEU: ``tensor_sentence_bleu`` on ``--device``, float32, from ids already on the device to the ``(B,)``
  scores; CUDA events around each call after warm-up (median), ``time.perf_counter`` on CPU.
* NLTK: ``sentence_bleu`` called once per row on Python lists of int token ids that are already on the host (the
  device-to-host copy and ``tolist`` are not charged to NLTK), timed with ``time.perf_counter`` on the CPU; fewer
  repetitions at large sizes.

Both use the same smoothing (default ``floor`` = NLTK ``SmoothingFunction().method1``); the largest absolute
difference between the two is recorded per size.

    python benchmarks/tensorbleu.py                       # GPU, batch 16..512 x length 256, 1024
    python benchmarks/tensorbleu.py --device cpu --batch-sizes 4 16 --seq-lens 32 64 --iters 3 --warmup 1 \\
        --out /tmp/tensorbleu.json                        # smoke test
"""

from __future__ import annotations

import argparse
import platform
import shlex
import statistics
import sys
import time
import warnings
from pathlib import Path

import torch
from bench_utils import RESULTS_DIR, time_ms

_ROOT = Path(__file__).resolve().parents[1]
if str(_ROOT) not in sys.path:  # runnable as `python benchmarks/tensorbleu.py` without installing the package
    sys.path.insert(0, str(_ROOT))

from rxt.atomic_io import atomic_write_json
from training.rewards.tensorbleu import tensor_sentence_bleu

NLTK_METHODS = {"none": "method0", "floor": "method1", "add-k": "method2", "exp": "method3"}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[16, 64, 256, 512])
    p.add_argument("--seq-lens", type=int, nargs="+", default=[256, 1024])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--vocab-size", type=int, default=32000)
    p.add_argument("--noise", type=float, default=0.3, help="fraction of candidate tokens replaced at random")
    p.add_argument("--smoothing", default="floor", choices=sorted(NLTK_METHODS))
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--iters", type=int, default=20)
    p.add_argument("--nltk-iters", type=int, default=3, help="NLTK repetitions for small sizes")
    p.add_argument(
        "--nltk-big-tokens",
        type=int,
        default=64 * 1024,
        help="above this many candidate tokens per batch NLTK runs once",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=RESULTS_DIR / "tensorbleu.json")
    args = p.parse_args(argv)
    for name in ("warmup", "nltk_iters"):
        if getattr(args, name) < (0 if name == "warmup" else 1):
            p.error(f"--{name.replace('_', '-')} is too small")
    if args.iters < 1 or min(args.batch_sizes) < 1 or min(args.seq_lens) < 1:
        p.error("--iters, --batch-sizes and --seq-lens must be >= 1")
    if not 0.0 <= args.noise <= 1.0:
        p.error("--noise must be in [0, 1]")
    return args


def make_batch(batch: int, length: int, vocab: int, noise: float, gen: torch.Generator):
    refs = torch.randint(0, vocab, (batch, length), generator=gen)
    replace = torch.rand(batch, length, generator=gen) < noise
    cands = torch.where(replace, torch.randint(0, vocab, (batch, length), generator=gen), refs)
    return cands, refs


def nltk_loop(cands: list[list[int]], refs: list[list[int]], smoothing_fn) -> list[float]:
    from nltk.translate.bleu_score import sentence_bleu

    return [sentence_bleu([r], c, smoothing_function=smoothing_fn) for c, r in zip(cands, refs)]


def write_json_atomic(path: Path, payload: dict) -> None:
    atomic_write_json(path, payload)


def print_table(title: str, records: list[dict]) -> None:
    print(f"\n{title}")
    print(
        f"{'batch':>6} {'len':>6} | {'TensorBLEU ms':>13} | {'NLTK ms':>10} | {'speedup':>8} | {'max |diff|':>10}"
    )
    for r in records:
        print(
            f"{r['batch_size']:>6} {r['seq_len']:>6} | {r['tensorbleu_ms']:>13.3f} | {r['nltk_ms']:>10.1f} | "
            f"{r['speedup']:>7.1f}x | {r['max_abs_diff']:>10.2e}"
        )


def main(argv: list[str] | None = None) -> dict:
    import nltk
    from nltk.translate.bleu_score import SmoothingFunction

    args = parse_args(argv)
    device = torch.device(args.device)
    smoothing_fn = getattr(SmoothingFunction(), NLTK_METHODS[args.smoothing])
    gen = torch.Generator().manual_seed(args.seed)
    records = []
    for length in args.seq_lens:
        for batch in args.batch_sizes:
            cands, refs = make_batch(batch, length, args.vocab_size, args.noise, gen)
            cands_d, refs_d = cands.to(device), refs.to(device)
            lens_d = torch.full((batch,), length, device=device)

            def tensorbleu(cands_d=cands_d, refs_d=refs_d, lens_d=lens_d):
                return tensor_sentence_bleu(cands_d, refs_d, lens_d, lens_d, smoothing=args.smoothing)

            tb_ms = time_ms(tensorbleu, device, args.warmup, args.iters)
            scores = tensorbleu().double().cpu()

            cand_lists, ref_lists = cands.tolist(), refs.tolist()
            nltk_iters = 1 if batch * length > args.nltk_big_tokens else args.nltk_iters
            nltk_times = []
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                for _ in range(nltk_iters):
                    t0 = time.perf_counter()
                    expected = nltk_loop(cand_lists, ref_lists, smoothing_fn)
                    nltk_times.append((time.perf_counter() - t0) * 1e3)
            nltk_ms = statistics.median(nltk_times)
            diff = (scores - torch.tensor(expected, dtype=torch.float64)).abs().max().item()
            record = {
                "batch_size": batch,
                "seq_len": length,
                "tensorbleu_ms": tb_ms,
                "nltk_ms": nltk_ms,
                "speedup": nltk_ms / tb_ms,
                "nltk_iters": nltk_iters,
                "max_abs_diff": diff,
                "mean_bleu": float(scores.mean()),
            }
            records.append(record)
            print(
                f"batch {batch:>4} len {length:>5}: TensorBLEU {tb_ms:9.3f} ms, NLTK {nltk_ms:10.1f} ms, "
                f"{record['speedup']:7.1f}x, max |diff| {diff:.1e}",
                flush=True,
            )

    payload = {
        "benchmark": "tensorbleu",
        "device": torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else f"cpu ({platform.processor()})",
        "device_type": device.type,
        "cpu_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "nltk": nltk.__version__,
        "python": platform.python_version(),
        "command": shlex.join(["python", *sys.argv]) if argv is None else shlex.join(["python", *argv]),
        "smoothing": args.smoothing,
        "nltk_smoothing": f"SmoothingFunction().{NLTK_METHODS[args.smoothing]}",
        "vocab_size": args.vocab_size,
        "noise": args.noise,
        "dtype": "float32",
        "warmup": args.warmup,
        "iters": args.iters,
        "timer": "cuda_events_median" if device.type == "cuda" else "perf_counter_median",
        "nltk_timer": "perf_counter median on the CPU over nltk_iters runs of a Python loop of sentence_bleu "
        "on lists of int ids (host conversion not timed)",
        "records": records,
    }
    print_table(
        f"TensorBLEU ({payload['device']}) vs NLTK {nltk.__version__} (CPU), {args.smoothing}", records
    )
    write_json_atomic(args.out, payload)
    print(f"\nwrote {args.out}")
    return payload


if __name__ == "__main__":
    main()

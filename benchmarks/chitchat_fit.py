"""Does a model generalise on chitchat, or has it memorised its training conversations? Answer perplexity on
conversations it trained on beside held-out ones, per model, scored exactly as `memory_retention.py` scores chitchat
(teacher-forced, the RxT through its memory, the stateless baseline with the whole history).

    train      ``--conversations`` chitchat conversations of the adapters' "train" split, spread over it (every
               training source of the recipes reads this split; the RxT's last SMAT step reads all of it)
    held_out   the first ``--conversations`` of the "eval" split (no training source reads it), which are NOT the
               ones `memory_retention.py` reports (the last 32 of that split)
    benchmark  those last ``--benchmark`` conversations: `memory_retention.json`'s ``chitchat`` figure

A held-out perplexity many times the training one is memorisation: the model learnt those conversations, not how
such conversations go. The result (JSON) records the device, versions and the exact command.

    python benchmarks/chitchat_fit.py --rxt stage4=runs/nano/4_smat/final --baseline base=runs/nano/baseline/final \\
        --out benchmarks/results/chitchat_fit.json
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:  # memory_retention.py sits beside this script (imported as a module too)
    sys.path.insert(0, str(HERE))

from memory_retention import environment, evaluate_chitchat, load_systems

from rxt.atomic_io import atomic_write_json
from training.data.adapters import chitchat_episodes


def splits(conversations: int, benchmark: int) -> dict[str, list]:
    """The three sets of conversations (chunks of at most 8 turns, as the benchmark cuts them)."""
    train = chitchat_episodes(max_turns=8, split="train")
    held_out = chitchat_episodes(max_turns=8, split="eval")
    if conversations < 1 or benchmark < 1:
        raise ValueError(f"--conversations ({conversations}) and --benchmark ({benchmark}) must be >= 1")
    if conversations + benchmark > len(held_out):
        raise ValueError(f"--conversations + --benchmark must be at most {len(held_out)} (the held-out split)")
    stride = max(1, len(train) // conversations)
    return {"train": train[::stride][:conversations], "held_out": held_out[:conversations],
            "benchmark": held_out[-benchmark:]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rxt", action="append", default=[], metavar="[LABEL=]DIR", help="an RxT model directory")
    parser.add_argument("--baseline", action="append", default=[], metavar="[LABEL=]DIR",
                        help="a stateless DecoderLM directory (scored with the whole history)")
    parser.add_argument("--conversations", type=int, default=32, help="conversations per split (default 32)")
    parser.add_argument("--benchmark", type=int, default=32, help="memory_retention.py's --chitchat (default 32)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", type=Path, default=None, help="JSON output (written atomically)")
    args = parser.parse_args(argv)
    if not args.rxt and not args.baseline:
        parser.error("give at least one --rxt or --baseline model")
    try:
        sets = splits(args.conversations, args.benchmark)
    except ValueError as exc:
        parser.error(str(exc))
    device = torch.device(args.device)
    systems = [s for s in load_systems(args.rxt, args.baseline, device) if s.ablation_of is None]
    results = {}
    for system in systems:
        start = time.perf_counter()
        entry = {"kind": system.kind, "path": system.path}
        for name, conversations in sets.items():
            entry[name] = evaluate_chitchat(system, conversations)
        entry["held_out_over_train_ppl"] = entry["held_out"]["answer_ppl"] / entry["train"]["answer_ppl"]
        entry["seconds"] = time.perf_counter() - start
        results[system.name] = entry
        print(f"{system.name:>12}: answer ppl train {entry['train']['answer_ppl']:8.1f}  held-out "
              f"{entry['held_out']['answer_ppl']:8.1f}  benchmark {entry['benchmark']['answer_ppl']:8.1f}  "
              f"(held-out / train {entry['held_out_over_train_ppl']:.1f}x)", flush=True)
    doc = {"benchmark": "chitchat_fit", **environment(device), "command": " ".join(["python", "benchmarks/chitchat_fit.py",
                                                                   *(sys.argv[1:] if argv is None else argv)]),
           "settings": {"conversations": args.conversations, "benchmark": args.benchmark, "max_turns": 8},
           "systems": results}
    if args.out:
        atomic_write_json(args.out, doc)
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

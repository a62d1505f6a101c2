"""Memory diagnostics of saved RxT models: residual-gate values, decoder read-attention entropy over the slots
and how much the written STM depends on its input (`training.memory_diagnostics`), on held-out synthetic
episodes. Compare a model before and after the memory stages:

    python benchmarks/memory_diagnostics.py --rxt sft=runs/nano/2_sft/final --rxt smat=runs/nano/4_smat/final \\
        --out benchmarks/results/memory_diagnostics.json
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import torch

from rxt.atomic_io import atomic_write_json
from rxt.model import RxT
from training.data.synthetic import SyntheticDialogueConfig, generate_episodes
from training.memory_diagnostics import diagnose
from training.model_loading import load_tokenizer


def run(argv: Sequence[str]) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rxt", action="append", required=True, metavar="LABEL=DIR")
    parser.add_argument("--episodes", type=int, default=64)
    parser.add_argument("--seed", type=int, default=4321)
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/memory_diagnostics.json"))
    args = parser.parse_args(argv)
    if args.episodes < 2:
        parser.error("--episodes must be >= 2")
    device = torch.device(args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu"))
    episodes = generate_episodes(SyntheticDialogueConfig(num_episodes=args.episodes, distance=(1, 2, 4, 8),
                                                         split="eval", seed=args.seed))
    doc: dict = {"benchmark": "memory_diagnostics", "device": str(device), "torch": torch.__version__,
                 "command": " ".join(["python", "benchmarks/memory_diagnostics.py", *argv]), "models": {}}
    for spec in args.rxt:
        label, _, path = spec.rpartition("=") if "=" in spec else (Path(spec).parent.name, "", spec)
        model = RxT.from_pretrained(path).to(device)
        result = diagnose(model, load_tokenizer(None, Path(path)), episodes)
        doc["models"][label] = {"path": path, **result}
        gates = " ".join(f"{g['mean']:.3f}" for g in result["gates"])
        print(f"{label:>12}: gates {gates} | read entropy {result['read_entropy']} of max "
              f"{result['read_entropy_max']} | write cosine {result['write_cosine']}", flush=True)
    atomic_write_json(args.out, doc)
    print(f"wrote {args.out}")
    return doc


def main(argv: Sequence[str] | None = None) -> int:
    run(list(sys.argv[1:] if argv is None else argv))
    return 0


if __name__ == "__main__":
    sys.exit(main())

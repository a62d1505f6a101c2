"""The copy gate (`training.copy_gate`) at nano-like size on a GPU: which data mix and learning rate let the RxT
stack learn held-out recall through its memory, before the nano recipe spends its GPU-minutes on them.

The variants run at once as separate processes (small models are host-bound, so several share one GPU), each
for at most ``--seconds`` of training; each then reports its held-out recall at k = 1 with the memory, with the
memory reset and in context. The merged report goes to ``--out``::

    python benchmarks/copy_gate_sweep.py --device cuda --seconds 400 --out benchmarks/results/copy_gate_sweep.json
    python benchmarks/copy_gate_sweep.py --list          # the variants and their overrides
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

# nano's width and depth; 64 STM slots (the CPU gate found 16 and 256 alike); 128 episodes a step
BASE = ["dim=256", "num_layers=6", "stm_slots=64", "batch_size=128", "train_episodes=60000", "copy_steps=2000",
        "memory_steps=20000"]
MIX = ["groups=null", "num_facts=[2, 4]"]  # the recipe's data: every fact group, 2-4 facts of one group
VARIANTS: dict[str, list[str]] = {
    "mix_lr1e-3": [*MIX, "lr=1e-3"],
    "mix_lr3e-3": [*MIX, "lr=3e-3"],
    "mix_warm_1fact": [*MIX, "lr=1e-3", "warm_memory_steps=1500", 'warm_data={"num_facts": 1}'],
    "allgroups_1fact": ["groups=null", "num_facts=1", "lr=1e-3"],
    "mix_copy6000": [*MIX, "lr=1e-3", "copy_steps=6000"],
    "mix_dim128_lr2e-3": [*MIX, "lr=2e-3", "dim=128", "num_layers=4"],
}


def command(name: str, device: str, seconds: float, out: Path) -> list[str]:
    overrides = [*BASE, f"max_seconds={seconds}", f'device="{device}"', *VARIANTS[name]]
    return [sys.executable, "-m", "training.copy_gate", *[a for o in overrides for a in ("--set", o)],
            "--out", str(out / f"gate_{name}.json")]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--seconds", type=float, default=400.0, help="training seconds per variant (default 400)")
    parser.add_argument("--variants", nargs="*", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--work", default="/tmp/copy_gate_sweep", help="per-variant reports and logs")
    parser.add_argument("--out", default="benchmarks/results/copy_gate_sweep.json")
    parser.add_argument("--list", action="store_true", help="print the variants and exit")
    args = parser.parse_args(argv)
    if args.list:
        for name in VARIANTS:
            print(name, " ".join(VARIANTS[name]))
        return 0
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    start = time.time()
    logs = {name: (work / f"gate_{name}.log").open("w") for name in args.variants}
    procs = {name: subprocess.Popen(command(name, args.device, args.seconds, work), stdout=logs[name],
                                    stderr=subprocess.STDOUT) for name in args.variants}
    runs = []
    for name, proc in procs.items():
        proc.wait()
        logs[name].close()
        report = work / f"gate_{name}.json"
        if not report.is_file():
            runs.append({"variant": name, "overrides": VARIANTS[name], "error": f"exit {proc.returncode}"})
            continue
        doc = json.loads(report.read_text())
        runs.append({"variant": name, "overrides": VARIANTS[name],
                     **{k: doc[k] for k in ("recall", "recall_memory_reset", "recall_in_context", "steps",
                                            "train_seconds", "parameters")}})
        print(json.dumps(runs[-1]), flush=True)
    import torch

    from rxt.atomic_io import atomic_write_json

    result = {"benchmark": "copy_gate_sweep", "base": BASE, "runs": runs, "concurrent_processes": len(procs),
              "wall_s": round(time.time() - start, 1),
              "device": torch.cuda.get_device_name() if args.device.startswith("cuda") else platform.machine(),
              "versions": {"python": platform.python_version(), "torch": torch.__version__},
              "command": " ".join(["python benchmarks/copy_gate_sweep.py", *(argv or sys.argv[1:])])}
    atomic_write_json(args.out, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Where an MRL IMPO update goes, on any device: seconds and torch ops dispatched by one collection and one update.

Builds the update exactly as `benchmarks/train_throughput.py`'s ``mrl`` stage does (its `mrl` function), collects
once untimed, then times and counts one collection and one update. Ops are counted with a `TorchDispatchMode`
in the threads that issue them: the runtime's lane (every `ReactiveModel._step`) and the calling thread (the
collection's own work, the update, its backward on the CPU). On a CPU with a model of the preset's depth,
slots and lengths but a small width (``--dim``), the count is the GPU's launch count to within views and the
CPU-only optimizer (single-tensor AdamW on the CPU, fused on CUDA), and the host cost per op is what dominates
a step of this size on the GPU::

    python benchmarks/mrl_ops.py --preset nano --dim 64 --mrl 128x8 --out /tmp/mrl_ops.json
    OMP_NUM_THREADS=1 python benchmarks/mrl_ops.py --preset nano --dim 64 --mrl 128x8 \
        --append benchmarks/results/mrl_ops.json --note "after ..."

``--append FILE`` adds the row (with the commit it was measured on) to FILE's ``records``, keeping the earlier
ones (a file of one bare record, the earlier format, becomes the first record).
"""

from __future__ import annotations

import argparse
import gc
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.train_throughput import mrl
from rxnn_runtime.reactive_model import ReactiveModel
from rxt.atomic_io import atomic_write_json
from rxt.config import RxTConfig
from rxt.tokenizer import RxTokenizer


class OpCounter(TorchDispatchMode):
    """Counts every op dispatched while it is active (in the thread that entered it)."""

    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.count += 1
        return func(*args, **(kwargs or {}))


def measure(preset: str, size: str, device: str, dim: int | None = None) -> dict:
    from training.mrl.trainer import MRLTrainer

    counter = OpCounter()
    original_step, original_preset = ReactiveModel._step, RxTConfig.preset  # (bound to RxTConfig)
    own_preset = RxTConfig.__dict__.get("preset")  # None: inherited from TransformerConfig

    def counted_step(self):  # the lane thread: enter the counter there
        with counter:
            return original_step(self)

    def preset_with_dim(name, **overrides):
        width = {"dim": dim, "ffn_hidden_dim": 2 * dim} if dim else {}
        return original_preset(name, **{**overrides, **width})

    ReactiveModel._step = counted_step
    RxTConfig.preset = staticmethod(preset_with_dim)  # what `mrl` builds its model from
    try:
        with tempfile.TemporaryDirectory() as tmp:
            args = argparse.Namespace(preset=preset, mrl=size, device=device, mrl_cuda_graphs=False,
                                      mrl_update_graphs="auto", mrl_sample_stacks=False)
            built = mrl(args, torch.device(device), RxTokenizer.default(), tmp)  # its step holds the trainer
            trainer = next(o for o in gc.get_objects() if isinstance(o, MRLTrainer))
            del built
            stage = trainer.config.curriculum[0]
            episodes = trainer.stage_episodes(stage, 0, count=int(size.split("x")[0]))
            trainer.collect(episodes, stage, reset_prob=1.0)  # warm
            row = {"preset": preset, "dim": trainer.policy.config.dim, "episodes_x_steps": size, "device": device}
            for phase in ("collect", "update"):
                counter.count = 0
                start = time.perf_counter()
                with counter:
                    if phase == "collect":
                        logs = trainer.collect(episodes, stage, reset_prob=1.0)
                    else:
                        trainer.update(logs)
                row[f"{phase}_s"] = time.perf_counter() - start
                row[f"{phase}_ops"] = counter.count
            row["action_tokens"] = sum(len(s.action_ids) for log in logs for s in log.steps)
            trainer.close()
    finally:
        ReactiveModel._step = original_step
        if own_preset is None:
            del RxTConfig.preset
        else:
            RxTConfig.preset = own_preset
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--dim", type=int, default=None, help="override the preset's width (ffn 2x): op counts of "
                        "the preset at a small model's CPU arithmetic")
    parser.add_argument("--mrl", default="32x8", help="EPISODESxSTEPS")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--append", type=Path, default=None, help="add the row to this file's records")
    parser.add_argument("--note", default=None, help="a note stored with the row")
    args = parser.parse_args(argv)
    torch.set_num_threads(1) if args.device == "cpu" else None
    row = measure(args.preset, args.mrl, args.device, args.dim)
    report(row, args, "benchmarks/mrl_ops.py", argv)
    return 0


def report(row: dict, args: argparse.Namespace, script: str, argv: list[str] | None, benchmark: str = "mrl_ops"
           ) -> None:
    """Adds the command, commit, threads, torch version and ``args.note`` to ``row``, prints it and writes it to
    ``args.out`` and/or appends it to ``args.append``'s records (a ``benchmark`` document)."""
    row["command"] = " ".join(["python", script, *(argv if argv is not None else sys.argv[1:])])
    row.update(commit=_commit(), threads=torch.get_num_threads(), torch=torch.__version__)
    if args.note:
        row["note"] = args.note
    print(json.dumps(row), flush=True)
    if args.out:
        atomic_write_json(args.out, row)
    if args.append:
        atomic_write_json(args.append, with_record(args.append, row, benchmark))


def _commit() -> str | None:
    """The checkout's short commit hash (None outside a git checkout); a dirty tree is marked."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                              check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                               capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None
    return f"{head}+dirty" if dirty else head


def with_record(path: Path, row: dict, benchmark: str = "mrl_ops") -> dict:
    """``{"benchmark": benchmark, "records": [...]}`` of ``path`` (if any) with ``row`` appended; the file's other
    keys (e.g. a ``summary``) are kept."""
    doc = {"benchmark": benchmark, "records": []}
    if path.is_file():
        old = json.loads(path.read_text())
        if "records" in old:
            doc = {**old, "benchmark": benchmark, "records": list(old["records"])}
        else:
            doc["records"] = [old]
    doc["records"].append(row)
    return doc


if __name__ == "__main__":
    sys.exit(main())

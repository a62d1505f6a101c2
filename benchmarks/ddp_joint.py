"""The joint stage on 1 and 2 GPUs (DDP over NCCL): real tokens/s, the scaling factor, and the loss curves.

Run once per world size under torchrun, then merge::

    torchrun --nproc_per_node 1 benchmarks/ddp_joint.py --out /tmp/ddp_1.json
    torchrun --nproc_per_node 2 benchmarks/ddp_joint.py --out /tmp/ddp_2.json
    python benchmarks/ddp_joint.py --merge /tmp/ddp_1.json /tmp/ddp_2.json --out benchmarks/results/ddp.json

Each run trains the `nano` RxT with `JointLMTrainer` on the same packed synthetic rows with the same global batch
(``--rows`` rows of 256 tokens, split over the ranks), encoder noise off, so the two runs see the same rows and
the same MLM masks step by step (`training.data.packing.mask_tokens` draws for the global micro-batch): their
loss curves must match up to bf16 reduction order. Steps run back to back as in training: nothing is read back
from the device except at log steps (every ``--log-every`` steps and the last), where the losses of every step
since the last one come back in one all-reduced transfer (`training.step_metrics`), so the loss curve still has
every step. Each step's time on rank 0 is the gap between CUDA events recorded at the ends of consecutive steps
(no host sync per step; a log step's time includes its read-back), the median after ``--warmup`` steps.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from rxt.atomic_io import atomic_write_json


def run(args) -> None:
    from rxt.config import RxTConfig
    from rxt.model import RxT
    from rxt.tokenizer import RxTokenizer
    from training.config import TrainConfig
    from training.data.datasets import JointLMDataset
    from training.data.packing import pack_dataset
    from training.data.records import TextRecord
    from training.data.synthetic import SyntheticDialogueConfig, generate_episodes
    from training.distributed import cleanup_distributed, dist_env
    from training.heads import MLMHead
    from training.stages.joint_lm import JointLMModel, JointLMTrainer, freeze_unused_memory_system

    world = dist_env().world_size
    cuda = args.device == "cuda"
    if args.rows % world:
        raise SystemExit(f"--rows {args.rows} must divide over {world} ranks")
    tok = RxTokenizer.default()
    eps = generate_episodes(SyntheticDialogueConfig(num_episodes=args.documents // 4, num_turns=3, seed=1))
    texts = [TextRecord(f"{t.query} {t.answer}") for e in eps for t in e.turns]
    rows = pack_dataset(JointLMDataset(texts, tok, args.row_len), args.row_len, source="synthetic",
                        max_len=args.row_len,
                        special_ids=tok.special_ids, pad_id=tok.pad_id)
    torch.manual_seed(0)
    rxt = RxT(RxTConfig.preset(args.preset, vocab_size=tok.vocab_size))
    freeze_unused_memory_system(rxt)  # as run_stage: stages 1-2 never run memory attention or the STM
    model = JointLMModel(rxt, MLMHead(rxt.config.dim, tok.vocab_size, tie_to=rxt.embedding), tok,
                         encoder_noise_std=0.0)
    with tempfile.TemporaryDirectory() as tmp:
        cfg = TrainConfig(batch_size=args.rows // world, max_steps=10_000, warmup_steps=5, lr=1e-3,
                          precision="bf16" if cuda else "fp32", device=args.device, compile=args.compile, log_every=10_000, output_dir=tmp,
                          keep_last=0)
        trainer = JointLMTrainer(model, cfg, rows, pad_id=tok.pad_id, mask_prob=0.15)
        batches = trainer._loader()
        losses, pending, ends = [], [], []
        start = _mark(cuda)
        for i in range(args.steps):
            if trainer.position + trainer.step_samples > trainer.steps_per_epoch * trainer.step_samples:
                trainer.epoch, trainer.position = trainer.epoch + 1, 0
                batches = trainer._loader()
            pending.append(trainer._train_step(batches))  # the step's metrics stay on the device
            if (i + 1) % args.log_every == 0 or i == args.steps - 1:  # a log step: every pending loss, one read
                losses += [m["loss"] for m in pending]
                pending = []
            ends.append(_mark(cuda))
        if cuda:
            torch.cuda.synchronize()
        times = [_seconds(a, b) for a, b in zip([start, *ends[:-1]], ends, strict=True)]
        real_per_step = rows.real_tokens / len(rows) * args.rows
        step_s = statistics.median(times[args.warmup:])
        if trainer.is_main:
            atomic_write_json(args.out, {
                "world_size": world, "rows_per_step": args.rows, "rows_per_rank": args.rows // world,
                "compiled": bool(args.compile), "step_ms": step_s * 1e3, "real_tokens_per_step": real_per_step,
                "real_tokens_per_s": real_per_step / step_s, "loss_curve": losses,
                "step_ms_all": [t * 1e3 for t in times], "pack_fill": rows.fill,
                "device": torch.cuda.get_device_name() if cuda else "cpu", "versions": {"torch": torch.__version__,
                                                                      "cuda": torch.version.cuda,
                                                                      "python": platform.python_version()},
            })
        trainer.close()
    cleanup_distributed()


def _mark(cuda: bool):
    """A point on the device's timeline (a recorded CUDA event; on the CPU, the host clock)."""
    if not cuda:
        return time.perf_counter()
    event = torch.cuda.Event(enable_timing=True)
    event.record()
    return event


def _seconds(a, b) -> float:
    return a.elapsed_time(b) / 1e3 if isinstance(a, torch.cuda.Event) else b - a


def merge(args) -> None:
    one, two = (json.loads(Path(p).read_text()) for p in args.merge)
    if (one["world_size"], two["world_size"]) != (1, 2):
        raise SystemExit("--merge needs the 1-GPU result first, then the 2-GPU one")
    diffs = [abs(a - b) for a, b in zip(one["loss_curve"], two["loss_curve"])]
    doc = {"benchmark": "ddp_joint", "device": one["device"], "versions": one["versions"],
           "command": args.command or " ".join(["python", "benchmarks/ddp_joint.py", *sys.argv[1:]]),
           "stage": "joint (packed rows, nano)", "gpus_1": one, "gpus_2": two,
           "scaling": two["real_tokens_per_s"] / one["real_tokens_per_s"],
           "loss_max_abs_diff": max(diffs), "loss_final": [one["loss_curve"][-1], two["loss_curve"][-1]]}
    atomic_write_json(args.out, doc)
    print(json.dumps({k: v for k, v in doc.items() if k not in ("gpus_1", "gpus_2")}, indent=1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=512, help="packed rows of 256 tokens per step (global)")
    parser.add_argument("--steps", type=int, default=14)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--log-every", type=int, default=10,
                        help="read the pending losses back every N steps (and after the last), as a log step does")
    parser.add_argument("--documents", type=int, default=16_000)
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--preset", default="nano")
    parser.add_argument("--row-len", type=int, default=256)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--merge", nargs=2, type=Path)
    parser.add_argument("--command", default=None, help="the full command line to record (with --merge)")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    merge(args) if args.merge else run(args)


if __name__ == "__main__":
    main()

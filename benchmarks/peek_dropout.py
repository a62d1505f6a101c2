"""Does peek dropout (`JointLMConfig.peek_dropout`) make the joint stage teach in-context copying? A CPU toy.

The toy is the copy gate's (`training.copy_gate`: a `tiny` RxT widened to dim 64, 2 layers, 16 STM slots, a
512-token BPE trained on the generator's texts). It runs the real joint stage (`training.stages.joint_lm`,
packed rows) on the gate's in-context texts (one fact group, one fact, each question in one text with its
statement), once per ``--peek-dropout`` value, then measures held-out in-context recall by generation: the
question and its statement in one query, the decoder reading the initial STM (`training.recall_eval.recall`).

    python benchmarks/peek_dropout.py --steps 2400 --peek-dropout 0 0.5 --out benchmarks/results/peek_dropout.json
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

from rxt.atomic_io import atomic_write_json
from rxt.config import RxTConfig
from rxt.model import RxT
from training.config import load_config
from training.copy_gate import CopyGateConfig
from training.data.synthetic import generate_episodes
from training.recall_eval import recall
from training.stages.joint_lm import JointLMConfig, run_stage
from training.tokenizer_training import TokenizerTrainingConfig, train_tokenizer


def run(peek_dropout: float, steps: int, work: Path) -> dict:
    gate = CopyGateConfig()
    torch.manual_seed(0)
    dialogues = generate_episodes(gate.synthetic(num_episodes=3000, distance=gate.train_distances, seed=0))
    tok = train_tokenizer([f"{t.query} {t.answer}" for e in dialogues for t in e.turns],
                          TokenizerTrainingConfig(kind="byte_bpe", vocab_size=gate.vocab_size))
    model = RxT(RxTConfig.preset("tiny", vocab_size=tok.vocab_size, dim=64, num_layers=2, stm_slots=16,
                                 ffn_hidden_dim=128, max_seq_len=128))
    model.save_pretrained(work / "init")
    tok.save_pretrained(work / "init")
    texts = {"num_episodes": 4000, "distance": [0, 1], "groups": ["pet"], "num_facts": 1, "seed": 1}
    raw = {"model": str(work / "init"), "max_len": 128, "peek_dropout": peek_dropout, "val_fraction": 0.0,
           "data": [{"kind": "synthetic", "synthetic": texts}],
           "train": {"lr": 3e-3, "batch_size": 16, "max_steps": steps, "warmup_steps": 30, "log_every": 100,
                     "save_every": 0, "keep_last": 1, "output_dir": str(work / "joint"), "device": "cpu",
                     "precision": "fp32", "num_workers": 0, "seed": 0}}
    start = time.time()
    final = run_stage(load_config(raw, JointLMConfig))
    rxt = RxT.from_pretrained(final).eval()
    held_out = generate_episodes(gate.synthetic(num_episodes=64, distance=1, split="eval", seed=2,
                                                form="in_context"))
    return {"peek_dropout": peek_dropout, "steps": steps, "in_context_recall": recall(rxt, tok, held_out,
                                                                                     max_new_tokens=16),
            "held_out_episodes": len(held_out), "seconds": round(time.time() - start, 1)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=2400)
    parser.add_argument("--peek-dropout", type=float, nargs="+", default=[0.0, 0.5])
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    runs = []
    for p in args.peek_dropout:
        with tempfile.TemporaryDirectory() as work:
            runs.append(run(p, args.steps, Path(work)))
        print(json.dumps(runs[-1]), flush=True)
    result = {"benchmark": "peek_dropout", "runs": runs, "device": f"cpu ({torch.get_num_threads()} threads)",
              "versions": {"python": platform.python_version(), "torch": torch.__version__},
              "command": " ".join(["python benchmarks/peek_dropout.py", *(argv or sys.argv[1:])])}
    if args.out:
        atomic_write_json(args.out, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())

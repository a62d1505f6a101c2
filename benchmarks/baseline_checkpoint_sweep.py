"""The stateless baseline of examples/train_nano.py (the recipe's data and budget) with a checkpoint every
``--every`` steps, each written as a loadable `DecoderLM` directory (``<out>/ckpt_step-XXXXXXXX``), so that its
held-out chitchat perplexity can be read along the run with benchmarks/memory_retention.py: the baseline overfits
chitchat, and its final weights are not its best point (benchmarks/results/baseline_checkpoint_sweep.json).

    python benchmarks/baseline_checkpoint_sweep.py --out /tmp/bsw --minutes 4.0 --every 600
    python benchmarks/memory_retention.py --baseline b600=/tmp/bsw/ckpt_step-00000600 ... --distances 1 \
        --episodes-per-k 8 --chitchat 32
    python benchmarks/baseline_checkpoint_sweep.py --preset tiny --steps 2 --every 2 --device cpu --out /tmp/b
"""
import argparse
import json
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
for path in (ROOT, ROOT / "examples"):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))
import train_nano

from rxt.classic import DecoderLM
from training.checkpoint import list_checkpoints, load_checkpoint
from training.stages.baseline_lm import BaselineLMModel


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="nano")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--minutes", type=float, default=4.0)
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--every", type=int, default=600, help="steps between checkpoints (>= 1)")
    p.add_argument("--device", default="cuda")
    a = p.parse_args(argv)
    if a.every < 1 or a.minutes <= 0:
        p.error(f"--every must be >= 1 (got {a.every}) and --minutes > 0 (got {a.minutes})")
    stage = a.out / "baseline"
    raw = train_nano.baseline_config_dict(a.preset, match=train_nano.PRESETS[a.preset]["model"], output_dir=stage,
                                          steps=a.steps, device=a.device, minutes=a.minutes)
    raw["train"]["save_every"] = a.every
    raw["train"]["keep_last"] = 0
    module, config = train_nano.build_stage_config("baseline", raw)
    stage.mkdir(parents=True, exist_ok=True)
    final = Path(module.run_stage(config))
    models = []
    for ckpt in list_checkpoints(stage / "checkpoints"):
        # the trainer's own module and loader: the checkpoint holds BaselineLMModel's state (its "lm." is the model)
        model = BaselineLMModel(DecoderLM.from_pretrained(final))
        load_checkpoint(ckpt, model=model, restore_rng=False)
        target = model.save_pretrained(a.out / f"ckpt_{ckpt.name}")
        shutil.rmtree(ckpt)
        models.append(str(target))
    print(json.dumps({"final": str(final), "checkpoints": models}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

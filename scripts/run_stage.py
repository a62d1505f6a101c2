"""Run one recipe step from its config file with fields overridden: ``--set dotted.key=yaml_value`` (repeatable;
e.g. ``--set reward.value_weight=3.0``, ``--set 'curriculum=[{steps: 2, epochs: 4}]'``), plus shorthands for the
model, output folder, seed, time budget and device. Validated as ``rxnn train`` validates it
(`build_stage_config`). How the eighth session ran its IMPO variants and its SMAT experiment.

    python scripts/run_stage.py --config training/presets/nano/5_mrl.yaml --stage mrl --model runs/nano/4_smat/final \
        --out /tmp/v3 --set reward.value_weight=3.0
    python scripts/run_stage.py --config training/presets/nano/4_smat.yaml --stage smat --model runs/nano/4_smat/final \
        --out /tmp/p8 --minutes 3.2 --set 'data=[{kind: synthetic, synthetic: {num_episodes: 1000, chain: 2}}]'
"""

import argparse
import sys
from pathlib import Path

import yaml

import training

REPO = Path(training.__file__).resolve().parents[1]  # wherever this file lies: the repo on PYTHONPATH
sys.path.insert(0, str(REPO / "examples"))
import train_nano  # noqa: E402


def override(raw: dict, assignment: str) -> None:
    """``a.b.c=value``: set ``raw["a"]["b"]["c"]`` to the YAML-parsed value; the keys above the last must exist."""
    key, sep, text = assignment.partition("=")
    if not sep or not key:
        raise SystemExit(f"--set {assignment!r}: expected dotted.key=value")
    *parents, leaf = key.split(".")
    node = raw
    for name in parents:
        if not isinstance(node.get(name), dict):
            raise SystemExit(f"--set {assignment!r}: {name!r} is not a section of the config")
        node = node[name]
    node[leaf] = yaml.safe_load(text)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", required=True, type=Path, help="a recipe step's YAML, e.g. training/presets/nano/5_mrl.yaml")
    p.add_argument("--stage", required=True, help="its stage: joint, sft, mem-attn, smat, mrl, baseline")
    p.add_argument("--model", default=None, help="model (the step's input)")
    p.add_argument("--out", default=None, help="train.output_dir")
    p.add_argument("--seed", type=int, default=None, help="train.seed")
    p.add_argument("--minutes", type=float, default=None, help="train.max_minutes")
    p.add_argument("--device", default=None, help="train.device")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="assignments")
    a = p.parse_args(argv)
    raw = yaml.safe_load(a.config.read_text())
    if a.model is not None:
        raw["model"] = a.model
    shorthands = {"output_dir": a.out, "seed": a.seed, "max_minutes": a.minutes, "device": a.device}
    raw.setdefault("train", {}).update({k: v for k, v in shorthands.items() if v is not None})
    for assignment in a.assignments:
        override(raw, assignment)
    module, config = train_nano.build_stage_config(a.stage, raw)
    print(module.run_stage(config), flush=True)


if __name__ == "__main__":
    main()

"""One IMPO variant from a stage-4 model: the recipe's MRL config (training/presets/<preset>/5_mrl.yaml) with the
model, output folder, seed and device set, and any field overridden with ``--set dotted.key=yaml_value``
(e.g. ``--set reward.value_weight=3.0``). Validated as ``rxnn train`` validates it (`build_stage_config`).

    python scripts/mrl_variant.py --model runs/nano/4_smat/final --out /tmp/v3 --set reward.value_weight=3.0
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
    p.add_argument("--preset", default="nano")
    p.add_argument("--model", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--minutes", type=float, default=None, help="train.max_minutes (checked between updates)")
    p.add_argument("--device", default="cuda")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="assignments")
    a = p.parse_args(argv)
    raw = yaml.safe_load((REPO / "training" / "presets" / a.preset / "5_mrl.yaml").read_text())
    raw["model"] = a.model
    raw["train"].update(output_dir=a.out, seed=a.seed, device=a.device)
    if a.minutes:
        raw["train"]["max_minutes"] = a.minutes
    for assignment in a.assignments:
        override(raw, assignment)
    print("reward:", raw["reward"], flush=True)
    module, config = train_nano.build_stage_config("mrl", raw)
    print(module.run_stage(config), flush=True)


if __name__ == "__main__":
    main()

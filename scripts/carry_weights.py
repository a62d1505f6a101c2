"""Carry trained models between machines in files of bounded size: bf16 copies, tarred, split into parts.

A lent GPU machine returns at most a few files of 16 MB each, and a nano RxT is 25 MB in bf16, so a run that is
split into several calls carries its models as parts:

    python scripts/carry_weights.py pack --root runs/nano --out $OUT --name nano_a runs/nano/4_smat_k4/final
    python scripts/carry_weights.py unpack --root runs/nano carried/nano_a.tgz.part-*

``pack`` writes a bf16 copy of every model directory (`half_precision_copy`: the weights in bf16, the tokenizer
and the small files beside them as they are), plus the ``metrics.json`` / curves of the stage folders under
``--root``, into one gzip'd tar whose paths are relative to ``--root``, split into ``NAME.tgz.part-000``,
``-001`` ... of at most ``--part-mb`` MB each. ``unpack`` joins the parts (in name order), checks the size and
sha256 recorded in ``NAME.tgz.manifest.json``, and extracts them under ``--root``. A model loaded from the
carried copy is upcast to fp32 by ``from_pretrained``'s caller (``.float()``) and trained on with a fresh
optimizer: `tests/scripts/test_carry_weights.py` checks that its next-step loss equals the fp32 model's within
bf16 rounding.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import shutil
import sys
import tarfile
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
for path in (ROOT, ROOT / "scripts"):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

from half_precision_copy import half_precision_copy  # noqa: E402

LOG_FILES = ("metrics.json", "loss_curves.png", "reward_curve.png", "recipe_config.yaml", "diagnostics.json")
DEFAULT_PART_MB = 15.0


def _relative(path: Path, root: Path) -> Path:
    try:
        return path.resolve().relative_to(root.resolve())
    except ValueError:
        raise ValueError(f"{path} is not inside --root {root}") from None


def pack(models: list[Path], root: Path, out: Path, name: str, part_mb: float = DEFAULT_PART_MB) -> list[Path]:
    """bf16 copies of ``models`` and the logs under ``root``, as a tar split into parts; returns the parts."""
    if part_mb <= 0:
        raise ValueError(f"part_mb={part_mb} must be > 0")
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        staging = Path(tmp)
        for model in models:
            if not (model / "config.json").is_file():
                raise FileNotFoundError(f"{model} is not a save_pretrained directory (no config.json)")
            half_precision_copy(model, staging / _relative(model, root), "bf16")
        for log in sorted(p for pattern in LOG_FILES for p in root.glob(f"*/{pattern}")):
            target = staging / _relative(log, root)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(log, target)
        for summary in root.glob("*.json"):
            shutil.copy2(summary, staging / summary.name)
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
            for item in sorted(staging.rglob("*")):
                if item.is_file():
                    tar.add(item, arcname=str(item.relative_to(staging)))
    data = buffer.getvalue()
    size = int(part_mb * 1024 * 1024)
    for old in out.glob(f"{name}.tgz.part-*"):
        old.unlink()
    parts = []
    for i in range(0, max(1, -(-len(data) // size))):
        part = out / f"{name}.tgz.part-{i:03d}"
        part.write_bytes(data[i * size : (i + 1) * size])
        parts.append(part)
    manifest = {"name": name, "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest(),
                "parts": [p.name for p in parts], "models": [str(_relative(m, root)) for m in models]}
    (out / f"{name}.tgz.manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return parts


def unpack(parts: list[Path], root: Path) -> list[str]:
    """Join ``parts`` (sorted by name), check them against their manifest when present, extract under ``root``;
    returns the extracted file names."""
    if not parts:
        raise ValueError("unpack needs at least one part")
    parts = sorted(parts, key=lambda p: p.name)
    data = b"".join(p.read_bytes() for p in parts)
    manifest_file = parts[0].with_name(parts[0].name.split(".tgz.part-")[0] + ".tgz.manifest.json")
    if manifest_file.is_file():
        manifest = json.loads(manifest_file.read_text())
        if [p.name for p in parts] != manifest["parts"]:
            raise ValueError(f"parts {[p.name for p in parts]} do not match the manifest's {manifest['parts']}")
        if len(data) != manifest["bytes"] or hashlib.sha256(data).hexdigest() != manifest["sha256"]:
            raise ValueError(f"the joined parts ({len(data)} bytes) do not match {manifest_file.name}")
    root.mkdir(parents=True, exist_ok=True)
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        names = tar.getnames()
        tar.extractall(root, filter="data")
    return names


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("pack", help="bf16 copies of model directories, tarred and split")
    p.add_argument("models", type=Path, nargs="+")
    p.add_argument("--root", type=Path, required=True, help="the run folder the archive paths are relative to")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--name", required=True)
    p.add_argument("--part-mb", type=float, default=DEFAULT_PART_MB)
    u = sub.add_parser("unpack", help="join the parts and extract them under --root")
    u.add_argument("parts", type=Path, nargs="+")
    u.add_argument("--root", type=Path, required=True)
    args = parser.parse_args(argv)
    try:
        if args.command == "pack":
            for part in pack(args.models, args.root, args.out, args.name, args.part_mb):
                print(f"{part}: {part.stat().st_size / 1e6:.1f} MB")
        else:
            print(f"extracted {len(unpack(args.parts, args.root))} files under {args.root}")
    except (FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

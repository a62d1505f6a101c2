"""Copy a saved model directory (RxT or DecoderLM ``save_pretrained`` output) with its floating-point weights in
bf16 or fp16: how the packaged default model is made small enough to ship (< 30 MB), and how trained weights
travel between machines. The tokenizer and any other small files beside the weights are copied as they are.

    python scripts/half_precision_copy.py runs/nano/5_mrl/final rxt/assets/default_model --dtype bf16
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from rxt.classic import DecoderLM, EncoderLM  # noqa: E402
from rxt.model import RxT  # noqa: E402

MODEL_CLASSES = {cls.__name__: cls for cls in (RxT, DecoderLM, EncoderLM)}
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
SKIPPED = {"config.json", "model.safetensors", "critic.pt"}  # rewritten, or training-only state


def half_precision_copy(src: Path, dst: Path, dtype: str = "bf16") -> Path:
    if dtype not in DTYPES:
        raise ValueError(f"dtype={dtype!r} must be one of {sorted(DTYPES)}")
    config_file = src / "config.json"
    if not config_file.is_file():
        raise FileNotFoundError(f"{src} has no config.json: not a save_pretrained directory")
    model_type = json.loads(config_file.read_text()).get("model_type", "RxT")
    if model_type not in MODEL_CLASSES:
        raise ValueError(f"{src}: model_type {model_type!r} is not one of {sorted(MODEL_CLASSES)}")
    model = MODEL_CLASSES[model_type].from_pretrained(src, load_tokenizer=False)  # copied below as it is
    model.save_pretrained(dst, dtype=DTYPES[dtype])
    for extra in sorted(src.iterdir()):
        if extra.is_file() and extra.name not in SKIPPED and not (dst / extra.name).exists():
            shutil.copy2(extra, dst / extra.name)
    return dst


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("src", type=Path)
    parser.add_argument("dst", type=Path)
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="bf16")
    args = parser.parse_args(argv)
    try:
        out = half_precision_copy(args.src, args.dst, args.dtype)
    except (FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    size = sum(p.stat().st_size for p in out.iterdir() if p.is_file())
    print(f"{out}: {size / 1e6:.1f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())

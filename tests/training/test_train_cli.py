"""`rxnn train`: the entry-point plugin, exit codes, and the example config run end to end."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from rxnn_runtime.cli import build_parser, main
from rxt.model import RxT

ROOT = Path(__file__).resolve().parents[2]
JOINT_YAML = ROOT / "examples" / "configs" / "tiny_joint.yaml"
SFT_YAML = ROOT / "examples" / "configs" / "tiny_sft.yaml"
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}


def test_rxnn_runtime_never_imports_training_statically():
    for path in (ROOT / "rxnn_runtime").rglob("*.py"):
        text = path.read_text()
        assert "import training" not in text and "from training" not in text, path


def test_train_is_registered_through_the_entry_point():
    parser = build_parser()
    args = parser.parse_args(["train", "joint", "--config", "x.yaml", "--output-dir", "d", "--resume"])
    assert (args.stage, args.config, args.output_dir, args.resume) == ("joint", "x.yaml", "d", True)


def test_unknown_stage_exits_2(capsys):
    with pytest.raises(SystemExit) as info:
        main(["train", "nope", "--config", str(JOINT_YAML)])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "nope" in err and "joint" in err and "sft" in err


def test_config_errors_exit_2_with_one_line_naming_the_key(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text(JOINT_YAML.read_text() + "\nmask_probability: 0.2\n")
    assert main(["train", "joint", "--config", str(bad)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "mask_probability" in err
    wrong_type = tmp_path / "wrong.yaml"
    wrong_type.write_text(JOINT_YAML.read_text().replace("max_len: 64", "max_len: [64]"))
    assert main(["train", "joint", "--config", str(wrong_type)]) == 2
    assert "'max_len'" in capsys.readouterr().err
    missing = tmp_path / "missing.yaml"
    missing.write_text(JOINT_YAML.read_text().replace("kind: chitchat ", f"{{kind: jsonl, path: {tmp_path}/x.jsonl}}\n"
                                                      "  - kind: chitchat "))
    assert main(["train", "joint", "--config", str(missing), "--output-dir", str(tmp_path / "o")]) == 2
    assert "'data[1].path'" in capsys.readouterr().err
    assert main(["train", "joint", "--config", str(tmp_path / "none.yaml")]) == 2
    assert "none.yaml" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_sft_example_config_parses():
    from training.config import load_config
    from training.stages.sft import SFTConfig

    cfg = load_config(SFT_YAML, SFTConfig)
    assert cfg.model == "runs/tiny_joint/final" and cfg.train.max_steps > 0


def test_example_joint_config_runs_via_subprocess(tmp_path):
    out = tmp_path / "run"
    result = subprocess.run(
        [sys.executable, "-m", "rxnn_runtime.cli", "train", "joint", "--config", str(JOINT_YAML),
         "--output-dir", str(out)],
        capture_output=True, text=True, env=ENV, cwd=tmp_path, timeout=300, check=False,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    final = Path(result.stdout.strip().splitlines()[-1])
    assert final == out / "final"
    RxT.from_pretrained(final)
    assert (out / "metrics.json").is_file()

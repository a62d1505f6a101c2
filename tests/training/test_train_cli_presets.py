"""`rxnn train --preset P --stage S` from the packaged configs, `--model DIR_OR_ID`, the README's training
commands run in order without edits, a messages-format dataset (save_to_disk) trains a tiny SFT stage, and a
missing extra is named."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import datasets
import pytest

from rxnn_runtime.cli import main
from rxt.model import RxT
from training.cli import PRESET_STAGES, PRESETS, preset_config_path
from training.config import load_config
from training.stages import get_stage
from training.stages.sft import SFTConfig
from training.stages.sft import run_stage as run_sft

ROOT = Path(__file__).resolve().parents[2]
SFT_YAML = ROOT / "examples" / "configs" / "tiny_sft.yaml"


def readme_commands(prefix: str) -> list[list[str]]:
    """The README's shell lines that start with ``prefix``, comments stripped, split like a shell."""
    lines = []
    for line in (ROOT / "README.md").read_text().splitlines():
        if line.startswith(prefix):
            lines.append(shlex.split(line.split("#", 1)[0]))
    return lines


@pytest.mark.parametrize("preset", PRESETS)
def test_packaged_presets_chain_and_match_the_recipe_script(tmp_path, preset, load_script):
    recipe = load_script("examples/train_nano.py")
    recipe.dump_configs(preset, tmp_path, Path(f"runs/{preset}"), reuse_tokenizer=True)

    def body(path: Path) -> str:
        return "".join(line for line in path.read_text().splitlines(keepends=True) if not line.startswith("#"))

    previous = preset
    for stage, name in PRESET_STAGES.items():
        packaged = preset_config_path(preset, stage)
        assert body(packaged) == body(tmp_path / name), f"regenerate {packaged.parent}: see its header"
        config = load_config(packaged, get_stage(stage).CONFIG_CLASS)
        assert config.model == previous and config.tokenizer is None  # the packaged tokenizer, then the saved one
        previous = str(Path(config.train.output_dir) / "final")


def test_usage_errors_exit_2(capsys):
    assert main(["train", "--preset", "tiny"]) == 2
    assert "name the stage" in capsys.readouterr().err
    assert main(["train", "sft", "--preset", "tiny", "--stage", "joint"]) == 2
    assert "differs" in capsys.readouterr().err
    assert main(["train", "joint", "--preset", "tiny", "--config", "x.yaml"]) == 2
    assert "not both" in capsys.readouterr().err
    assert main(["train", "joint"]) == 2
    assert "needs --config" in capsys.readouterr().err
    assert main(["train", "baseline", "--preset", "tiny"]) == 2
    assert "the presets hold the stages" in capsys.readouterr().err


def test_model_option_replaces_the_config_model(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs").mkdir()
    assert main(["train", "sft", "--config", str(SFT_YAML), "--model", "runs/nosuch",
                 "--output-dir", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "'runs/nosuch' is not a directory (no such path) and not a Hub repo id" in err, err


def test_readme_training_commands_run_in_order(tmp_path, monkeypatch, capsys, single_torch_thread):
    commands = readme_commands("rxnn train --preset tiny")
    assert [c[c.index("--stage") + 1] for c in commands] == list(PRESET_STAGES)
    monkeypatch.chdir(tmp_path)
    for command in commands:
        assert main(command[1:]) == 0, capsys.readouterr().err
    final = tmp_path / "runs" / "tiny" / "5_mrl" / "final"
    assert capsys.readouterr().out.strip().splitlines()[-1] == "runs/tiny/5_mrl/final"
    model = RxT.from_pretrained(final)
    assert model.tokenizer is not None and model.tokenizer.vocab_size == model.config.vocab_size
    (chat,) = readme_commands("rxnn chat --model runs/tiny")
    result = subprocess.run([sys.executable, "-m", "rxnn_runtime.cli", *chat[1:], "--max-new-tokens", "3"],
                            input="hello\n", capture_output=True, text=True, cwd=tmp_path, timeout=180,
                            env={**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}, check=False)
    assert result.returncode == 0 and "rxt> " in result.stdout, result.stderr


def test_messages_dataset_saved_to_disk_trains_a_tiny_sft_stage(tmp_path, single_torch_thread):
    chats = [{"messages": [{"role": "system", "content": "Be brief."},
                           {"role": "user", "content": f"My number is {i}."},
                           {"role": "assistant", "content": f"Noted: {i}."},
                           {"role": "user", "content": "What is it?"},
                           {"role": "assistant", "content": f"It is {i}."}]} for i in range(40)]
    datasets.Dataset.from_list(chats).save_to_disk(str(tmp_path / "chats"))
    raw = {"model": "tiny", "max_len": 48, "val_fraction": 0.1,
           "data": [{"kind": "hub", "name": str(tmp_path / "chats")}],
           "train": {"output_dir": str(tmp_path / "sft"), "max_steps": 20, "warmup_steps": 2, "batch_size": 8,
                     "lr": 3e-3, "device": "cpu", "log_every": 1, "keep_last": 1}}
    final = run_sft(load_config(raw, SFTConfig))
    metrics = json.loads((tmp_path / "sft" / "metrics.json").read_text())
    losses = [e["loss"] for e in metrics["train"]]
    assert metrics["step"] == 20 and sum(losses[-5:]) / 5 < sum(losses[:5]) / 5 - 0.5, losses  # it learns
    assert metrics["eval"] and "val_answer_acc" in metrics["eval"][-1]
    assert RxT.from_pretrained(final).tokenizer is not None


class _Without:
    def __init__(self, module: str) -> None:
        self.module = module

    def find_spec(self, name, path=None, target=None):
        if name == self.module or name.startswith(self.module + "."):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None


def test_a_missing_extra_is_named(tmp_path, capsys, monkeypatch):
    for name in [m for m in sys.modules if re.fullmatch(r"chitchat_dataset(\..*)?", m)]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setattr(sys, "meta_path", [_Without("chitchat_dataset"), *sys.meta_path])
    joint = preset_config_path("tiny", "joint")
    assert main(["train", "joint", "--config", str(joint), "--output-dir", str(tmp_path / "o")]) == 1
    err = capsys.readouterr().err
    assert "module 'chitchat_dataset' is not installed: install the 'train' extra" in err, err
    assert "pip install 'rxnn-runtime[train]'" in err

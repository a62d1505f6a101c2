"""The one-command recipe (`examples/train_nano.py`): stages 0-4 run end to end on CPU with the tiny preset, every
stage's ``final/`` loads, and the reference nano YAMLs match what the script builds."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from rxt.model import RxT
from training.config import load_config
from training.stages import get_stage

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "examples" / "train_nano.py"
NANO_DIR = ROOT / "examples" / "configs" / "nano"



def test_tiny_recipe_runs_every_stage(tmp_path):
    out = tmp_path / "run"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TQDM_DISABLE": "1"}
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--preset", "tiny", "--steps", "3", "--reuse-tokenizer",
         "--output-dir", str(out)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    summary = json.loads((out / "recipe_summary.json").read_text())
    assert list(summary["stages"]) == ["joint", "sft", "mem-attn", "smat-k2", "smat-k4", "smat-k8", "smat"]
    previous = "tiny"
    for stage, entry in summary["stages"].items():
        final = Path(entry["final"])
        assert final.is_dir() and f"{stage} done" in proc.stdout and str(final) in proc.stdout
        model = RxT.from_pretrained(final)
        assert model.num_parameters() > 0
        assert (final / "tokenizer.json").is_file()
        assert entry["metrics"]["train"]["step"] == 3
        # each stage started from the previous one's final/
        module = get_stage("smat" if stage.startswith("smat") else stage)
        config = load_config(str(final.parent / "recipe_config.yaml"), module.CONFIG_CLASS)
        assert config.model == previous and config.train.max_steps == 3
        previous = str(final)


NANO_STEPS = ["joint", "sft", "mem-attn", "smat-k2", "smat-k4", "smat-k8", "smat", "mrl"]


def test_nano_steps_and_their_files(load_script):
    recipe = load_script("examples/train_nano.py")
    assert recipe.recipe_steps("nano") == NANO_STEPS
    assert sorted(p.name for p in NANO_DIR.glob("*.yaml")) == sorted(recipe.config_file(s) for s in NANO_STEPS)


@pytest.mark.parametrize("stage", NANO_STEPS)
def test_nano_reference_configs_match_the_script(tmp_path, stage, load_script):
    recipe = load_script("examples/train_nano.py")
    recipe.dump_configs("nano", tmp_path, Path("runs/nano"), reuse_tokenizer=False)
    name = recipe.config_file(stage)

    def body(path: Path) -> str:
        return "".join(line for line in path.read_text().splitlines(keepends=True) if not line.startswith("#"))

    assert body(NANO_DIR / name) == body(tmp_path / name), f"regenerate {NANO_DIR}: see the script's docstring"
    config = load_config(NANO_DIR / name, get_stage(recipe.stage_module(stage)).CONFIG_CLASS)
    assert config.train.device != "cpu"
    if stage.startswith("smat"):  # the curriculum: questions never cut off, gradients through every update
        distances = [d for source in config.data if source.kind == "synthetic"
                     for d in source.synthetic_config().distance]
        assert config.max_turns == config.bptt_depth == max(distances) + 3


def test_stage_minutes_reach_the_train_configs(tmp_path, load_script):
    recipe = load_script("examples/train_nano.py")
    args = recipe.parse_args(["--preset", "nano", "--minutes", "joint=2.5", "--minutes", "baseline=1"])
    assert args.minutes == {"joint": 2.5, "baseline": 1.0}
    raw = recipe.stage_config_dict("nano", "joint", model="nano", tokenizer=None, output_dir=tmp_path,
                                   minutes=args.minutes.get("joint"))
    _, config = recipe.build_stage_config("joint", raw)
    assert config.train.max_minutes == 2.5
    base = recipe.baseline_config_dict("nano", match="m", output_dir=tmp_path, minutes=1.0)
    assert base["train"]["max_minutes"] == 1.0


@pytest.mark.parametrize("bad", ["joint", "nope=1", "joint=0", "joint=x"])
def test_bad_stage_minutes_exit_with_a_usage_error(capsys, bad, load_script):
    recipe = load_script("examples/train_nano.py")
    with pytest.raises(SystemExit) as exc:
        recipe.parse_args(["--minutes", bad])
    assert exc.value.code == 2
    assert "--minutes" in capsys.readouterr().err


def test_start_at_mrl_continues_from_a_copied_stage4(tmp_path, monkeypatch, load_script):
    from rxt.config import RxTConfig
    from rxt.tokenizer import RxTokenizer

    recipe = load_script("examples/train_nano.py")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    out = tmp_path / "run"
    args = recipe.parse_args(["--preset", "tiny", "--with-mrl", "--start-at", "mrl", "--output-dir", str(out)])
    with pytest.raises(SystemExit, match="4_smat/final"):  # nothing to start from yet
        recipe.run_recipe(args)
    tokenizer = RxTokenizer.default()
    smat = out / "4_smat" / "final"
    RxT(RxTConfig.preset("tiny", vocab_size=tokenizer.vocab_size)).save_pretrained(smat)
    tokenizer.save_pretrained(smat)
    summary = recipe.run_recipe(args)
    assert list(summary["stages"]) == ["smat", "mrl"]
    assert summary["stages"]["smat"]["final"] == str(smat)
    assert (out / "5_mrl" / "final" / "model.safetensors").is_file()
    assert not (out / "1_joint").exists()
    with pytest.raises(SystemExit):
        recipe.parse_args(["--start-at", "mrl"])  # without --with-mrl


def test_split_gpu_run_dry_runs_on_cpu(tmp_path):
    """examples/nano_gpu_run.sh, both phases, at toy size on CPU: phase b starts from phase a's bf16 parts only,
    each phase leaves at most 8 files of at most 15 MB, and the results hold every system."""
    runs_a, runs_b = tmp_path / "machine_a", tmp_path / "machine_b"
    out_a, out_b, carried = tmp_path / "out_a", tmp_path / "out_b", tmp_path / "carried"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TQDM_DISABLE": "1", "PRESET": "tiny", "DEVICE": "cpu",
           "STEPS": "2", "EPISODES": "2", "CHITCHAT": "2", "CARRIED": str(carried),
           "PATH": f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}"}
    script = str(ROOT / "examples" / "nano_gpu_run.sh")
    proc = subprocess.run(["bash", script, "a"], cwd=ROOT, env={**env, "OUT": str(out_a), "RUNS": str(runs_a)},
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    carried.mkdir()
    for item in out_a.iterdir():
        if item.name != "phase_a.log":
            (carried / item.name).write_bytes(item.read_bytes())
    # a middle call (phase m): smat-k4 and smat-k8 on a third machine, from phase a's parts alone
    runs_m, out_m = tmp_path / "machine_m", tmp_path / "out_m"
    proc = subprocess.run(["bash", script, "m"], cwd=ROOT, env={**env, "OUT": str(out_m), "RUNS": str(runs_m)},
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert (runs_m / "4_smat_k8" / "final").is_dir() and not (runs_m / "4_smat" / "final").exists()
    for item in carried.glob("nano_a.tgz.*"):  # the next call carries only the last phase's parts
        item.unlink()
    for item in out_m.iterdir():
        if item.name != "phase_m.log":
            (carried / item.name).write_bytes(item.read_bytes())
    proc = subprocess.run(["bash", script, "b"], cwd=ROOT,
                          env={**env, "OUT": str(out_b), "RUNS": str(runs_b), "START_AT": "smat"},
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    for out in (out_a, out_m, out_b):
        files = list(out.iterdir())
        assert len(files) <= 8 and all(f.stat().st_size <= 15 * 1024 * 1024 for f in files), files
    results = json.loads((out_b / "memory_retention.json").read_text())
    assert set(results["systems"]) == {"stage4", "stage4/memory_reset", "mrl", "mrl/memory_reset", "baseline",
                                       "baseline/no_history"}
    summary = json.loads((runs_b / "recipe_summary.json").read_text())
    assert list(summary["stages"]) == ["joint", "sft", "mem-attn", "smat-k2", "smat-k4", "smat-k8", "smat", "mrl"]
    assert not (runs_b / "1_joint" / "final").exists()  # phase b had only the carried smat-k8 model
    assert not (runs_b / "4_smat_k2" / "final").exists()
    for step in ("2_sft", "3_mem_attn", "4_smat_k2", "4_smat_k4", "4_smat_k8", "4_smat"):
        assert "gates" in json.loads((runs_b / step / "diagnostics.json").read_text())["memory"], step
    restarted = load_config(runs_m / "4_smat_k4" / "recipe_config.yaml", get_stage("smat").CONFIG_CLASS)
    assert restarted.model == str(runs_m / "4_smat_k2" / "final") and restarted.train.warmup_steps <= 100
    last = load_config(runs_b / "4_smat" / "recipe_config.yaml", get_stage("smat").CONFIG_CLASS)
    assert last.model == str(runs_b / "4_smat_k8" / "final")
    diagnosed = json.loads((runs_b / "memory_diagnostics.json").read_text())
    assert set(diagnosed["models"]) == {"smat_k8", "stage4", "mrl"}  # the carried step's model, stage 4, MRL

"""``rxnn train``: one stage of the curriculum, from a config file or a packaged preset.

    rxnn train STAGE --config FILE.yaml [--model DIR_OR_ID] [--output-dir DIR] [--resume]
    rxnn train --preset tiny|nano --stage STAGE [--model DIR_OR_ID] [--output-dir DIR] [--resume]

``--preset`` reads the packaged recipe config ``training/presets/<preset>/<n>_<stage>.yaml`` (no repository
checkout needed). Stage N of a preset writes ``runs/<preset>/<n>_<stage>/final`` and stage N+1 starts from it, so
the commands chain when run in order from the same directory. ``--model`` replaces the config's ``model`` key: a
preset name, a ``save_pretrained`` directory or a Hub repo id (`rxt.resolve`).

Registered into the ``rxnn`` command line through the entry-point group ``rxnn.commands`` (``train =
"training.cli:register"`` in pyproject), so `rxnn_runtime` never imports `training`.

Exit codes: 0 done (prints the ``final/`` directory); 2 bad usage or bad config (unknown stage, unknown key,
wrong type, missing file, tokenizer/model vocab mismatch: one line naming the key, before training starts);
1 a failure while training, or a missing optional dependency (the message names the extra to install);
130 interrupted.
"""

from __future__ import annotations

import argparse
import sys
from importlib import resources
from pathlib import Path

from training.stages import STAGES

PRESETS: tuple[str, ...] = ("tiny", "nano")
PRESET_STAGES: dict[str, str] = {
    "joint": "1_joint.yaml", "sft": "2_sft.yaml", "mem-attn": "3_mem_attn.yaml", "smat-k2": "4_smat_k2.yaml",
    "smat-k4": "4_smat_k4.yaml", "smat-k8": "4_smat_k8.yaml", "smat": "4_smat.yaml", "mrl": "5_mrl.yaml",
}
"""Stage -> file name of the packaged preset configs (the recipe's order)."""

EXTRA_OF_MODULE: dict[str, str] = {
    "yaml": "train", "datasets": "train", "chitchat_dataset": "train", "chatterbot_corpus": "train",
    "tensorboard": "train", "matplotlib": "train", "pyarrow": "train", "nltk": "bench",
}
"""Optional modules -> the extra of ``rxnn-runtime`` that installs them."""


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``train`` command to an ``rxnn`` subparsers object."""
    parser = subparsers.add_parser(
        "train", help="run one training stage from a YAML/JSON config or a packaged preset",
        description="Run one stage of the training curriculum. The config file holds a 'train:' section "
        "(TrainConfig) and the stage's own keys (model, tokenizer, data, max_len, ...). "
        "With --preset tiny|nano --stage STAGE the packaged recipe config is used instead; stage N starts from "
        "runs/<preset>/<stage N-1>/final, so the stages chain when run in order.",
    )
    parser.add_argument("stage", nargs="?", choices=list(STAGES), metavar="STAGE",
                        help=f"one of: {', '.join(STAGES)}")
    parser.add_argument("--config", metavar="FILE.yaml", help="stage config (YAML or JSON)")
    parser.add_argument("--preset", choices=PRESETS, help="use the packaged recipe config of this preset")
    parser.add_argument("--stage", dest="stage_option", choices=list(PRESET_STAGES), metavar="STAGE",
                        help=f"with --preset: one of {', '.join(PRESET_STAGES)}")
    parser.add_argument("--model", metavar="DIR_OR_ID",
                        help="replaces the config's model: a preset name, a saved model directory or a Hub repo id")
    parser.add_argument("--output-dir", metavar="DIR", help="replaces train.output_dir of the config")
    parser.add_argument("--resume", action="store_true",
                        help="continue from the latest checkpoint under OUTPUT_DIR/checkpoints")
    parser.set_defaults(func=run_train)


def _one_line(exc: BaseException) -> str:
    return " ".join((str(exc).strip() or type(exc).__name__).split())


def _fail(code: int, message: str) -> int:
    print(f"rxnn train: error: {message}", file=sys.stderr)
    return code


def missing_extra(exc: BaseException) -> str | None:
    """For an exception caused (anywhere in its chain) by a missing optional module: what to install."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, ModuleNotFoundError) and current.name:
            top = current.name.split(".")[0]
            if top in EXTRA_OF_MODULE:
                extra = EXTRA_OF_MODULE[top]
                return (f"module {top!r} is not installed: install the {extra!r} extra "
                        f"(pip install 'rxnn-runtime[{extra}]')")
        current = current.__cause__ or current.__context__
    return None


def preset_config_path(preset: str, stage: str) -> Path:
    """The packaged config of ``stage`` in ``preset`` (a file inside the installed package)."""
    if preset not in PRESETS:
        raise ValueError(f"preset {preset!r} is unknown; choose one of {', '.join(PRESETS)}")
    if stage not in PRESET_STAGES:
        raise ValueError(f"the presets hold the stages {', '.join(PRESET_STAGES)}, not {stage!r}")
    return Path(str(resources.files("training") / "presets" / preset / PRESET_STAGES[stage]))


def with_output_dir(config, output_dir: str):
    """A copy of a stage config whose ``train.output_dir`` is ``output_dir`` (re-validated)."""
    import dataclasses

    return dataclasses.replace(config, train=dataclasses.replace(config.train, output_dir=output_dir))


def with_model(config, model: str):
    """A copy of a stage config whose ``model`` is ``model`` (re-validated); `ConfigError` for a stage without
    a ``model`` key."""
    import dataclasses

    from training.config import ConfigError

    if "model" not in {f.name for f in dataclasses.fields(config)}:
        raise ConfigError(f"--model: the {type(config).__name__} has no 'model' key")
    return dataclasses.replace(config, model=model)


def _stage_and_config(args: argparse.Namespace) -> tuple[str, str]:
    """(stage, config path) from ``STAGE --config`` or ``--preset P --stage STAGE``; ValueError on bad usage."""
    stage = args.stage
    if args.stage_option is not None:
        if stage is not None and stage != args.stage_option:
            raise ValueError(f"the stage is given twice and differs: {stage!r} and --stage {args.stage_option!r}")
        stage = args.stage_option
    if stage is None:
        raise ValueError("name the stage: rxnn train STAGE --config FILE, or rxnn train --preset P --stage STAGE")
    if args.preset is not None:
        if args.config is not None:
            raise ValueError("give --config or --preset, not both")
        return stage, str(preset_config_path(args.preset, stage))
    if args.config is None:
        raise ValueError(f"rxnn train {stage} needs --config FILE.yaml (or --preset {'|'.join(PRESETS)})")
    return stage, args.config


def run_train(args: argparse.Namespace) -> int:
    try:
        return _run_train(args)
    except ModuleNotFoundError as exc:
        hint = missing_extra(exc)
        if hint is None:
            raise
        return _fail(1, hint)


def _run_train(args: argparse.Namespace) -> int:
    try:
        stage_name, config_path = _stage_and_config(args)
    except ValueError as exc:
        return _fail(2, _one_line(exc))
    from training.config import ConfigError, load_config
    from training.data.records import RecordError
    from training.stages import StageUnavailableError, get_stage

    try:
        stage = get_stage(stage_name)
    except ValueError as exc:
        return _fail(2, _one_line(exc))
    except StageUnavailableError as exc:
        return _fail(1, missing_extra(exc) or _one_line(exc))
    try:
        config = load_config(config_path, stage.CONFIG_CLASS)
        if args.output_dir:
            config = with_output_dir(config, args.output_dir)
        if args.model:
            config = with_model(config, args.model)
    except ConfigError as exc:
        return _fail(2, _one_line(exc))
    try:
        final = stage.run_stage(config, resume=args.resume)
    except (ConfigError, RecordError) as exc:  # raised before the first step
        return _fail(2, _one_line(exc))
    except KeyboardInterrupt:
        return 130
    except Exception as exc:
        return _fail(1, missing_extra(exc) or f"{type(exc).__name__}: {_one_line(exc)}")
    print(final)
    return 0


__all__ = ["EXTRA_OF_MODULE", "PRESETS", "missing_extra", "preset_config_path", "register", "run_train"]

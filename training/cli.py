"""``rxnn train <stage> --config FILE.yaml [--output-dir DIR] [--resume]``.

Registered into the ``rxnn`` command line through the entry-point group ``rxnn.commands`` (``train =
"training.cli:register"`` in pyproject), so `rxnn_runtime` never imports `training`.

Exit codes: 0 done (prints the ``final/`` directory); 2 bad usage or bad config (unknown stage, unknown key,
wrong type, missing file, tokenizer/model vocab mismatch: one line naming the key, before training starts);
1 a failure while training; 130 interrupted.
"""

from __future__ import annotations

import argparse
import sys

from training.stages import STAGES


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``train`` command to an ``rxnn`` subparsers object."""
    parser = subparsers.add_parser(
        "train", help="run one training stage from a YAML/JSON config",
        description="Run one stage of the training curriculum. The config file holds a 'train:' section "
        "(TrainConfig) and the stage's own keys (model, tokenizer, data, max_len, ...).",
    )
    parser.add_argument("stage", choices=list(STAGES), metavar="STAGE", help=f"one of: {', '.join(STAGES)}")
    parser.add_argument("--config", required=True, metavar="FILE.yaml", help="stage config (YAML or JSON)")
    parser.add_argument("--output-dir", metavar="DIR", help="replaces train.output_dir of the config")
    parser.add_argument("--resume", action="store_true",
                        help="continue from the latest checkpoint under OUTPUT_DIR/checkpoints")
    parser.set_defaults(func=run_train)


def _one_line(exc: BaseException) -> str:
    return " ".join((str(exc).strip() or type(exc).__name__).split())


def _fail(code: int, message: str) -> int:
    print(f"rxnn train: error: {message}", file=sys.stderr)
    return code


def with_output_dir(config, output_dir: str):
    """A copy of a stage config whose ``train.output_dir`` is ``output_dir`` (re-validated)."""
    import dataclasses

    return dataclasses.replace(config, train=dataclasses.replace(config.train, output_dir=output_dir))


def run_train(args: argparse.Namespace) -> int:
    from training.config import ConfigError, load_config
    from training.data.records import RecordError
    from training.stages import StageUnavailableError, get_stage

    try:
        stage = get_stage(args.stage)
    except ValueError as exc:
        return _fail(2, _one_line(exc))
    except StageUnavailableError as exc:
        return _fail(1, _one_line(exc))
    try:
        config = load_config(args.config, stage.CONFIG_CLASS)
        if args.output_dir:
            config = with_output_dir(config, args.output_dir)
    except ConfigError as exc:
        return _fail(2, _one_line(exc))
    try:
        final = stage.run_stage(config, resume=args.resume)
    except (ConfigError, RecordError) as exc:  # raised before the first step
        return _fail(2, _one_line(exc))
    except KeyboardInterrupt:
        return 130
    except Exception as exc:
        return _fail(1, f"{type(exc).__name__}: {_one_line(exc)}")
    print(final)
    return 0


__all__ = ["register", "run_train"]

"""The training curriculum's stages, by name, imported lazily.

Every stage module exposes ``CONFIG_CLASS`` (a dataclass: a nested ``train: TrainConfig`` section plus the
stage's fields: ``model``, ``tokenizer``, ``data``, ``max_len``, ...) and ``run_stage(config, *, resume=False)
-> pathlib.Path`` (the ``final/`` model directory, loadable with ``RxT.from_pretrained`` and by the next stage).

    module = get_stage("joint")
    config = load_config("examples/configs/tiny_joint.yaml", module.CONFIG_CLASS)
    final_dir = module.run_stage(config)
"""

from __future__ import annotations

import importlib
from types import ModuleType

STAGES: dict[str, str] = {
    "joint": "training.stages.joint_lm",
    "sft": "training.stages.sft",
    "mem-attn": "training.stages.memory_attention_pretraining",
    "smat": "training.stages.smat",
    # the recipe's SMAT distance curriculum (examples/train_nano.py): the same stage on episodes up to k = 2, 4, 8
    "smat-k2": "training.stages.smat",
    "smat-k4": "training.stages.smat",
    "smat-k8": "training.stages.smat",
    "mrl": "training.stages.mrl",
    "baseline": "training.stages.baseline_lm",
}
"""Stage name -> module (``"module"`` or ``"module:attribute"`` for a stage object inside a module)."""


class StageUnavailableError(ImportError):
    """A registered stage whose module cannot be imported (not written yet, or a missing dependency)."""


def stage_names() -> list[str]:
    return list(STAGES)


def get_stage(name: str) -> ModuleType:
    """Import and return the stage ``name``; ``ValueError`` listing the known names for an unknown one."""
    if name not in STAGES:
        raise ValueError(f"unknown stage {name!r}; known stages: {', '.join(STAGES)}")
    target = STAGES[name]
    module_name, _, attribute = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name is not None and module_name.startswith(exc.name):
            raise StageUnavailableError(f"stage {name!r} is not available: module {module_name} does not exist "
                                        "yet") from exc
        raise StageUnavailableError(f"stage {name!r} is not available: {exc}") from exc
    stage = getattr(module, attribute) if attribute else module
    for required in ("CONFIG_CLASS", "run_stage"):
        if not hasattr(stage, required):
            raise StageUnavailableError(f"stage {name!r} ({target}) does not define {required}")
    return stage


__all__ = ["STAGES", "StageUnavailableError", "get_stage", "stage_names"]

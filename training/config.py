"""Training-loop configuration (`TrainConfig`) and a strict YAML/JSON loader for config dataclasses.

`load_config(path_or_dict, cls)` builds any (possibly nested) config dataclass from a file or a dict and fails
before training starts, naming the key: unknown keys, wrong types and missing files are all errors. A stage
config nests the loop settings as a section::

    @dataclass
    class JointStageConfig:
        train: TrainConfig = dataclasses.field(default_factory=TrainConfig)
        mlm_weight: float = 1.0

    cfg = load_config("stage1.yaml", JointStageConfig)   # yaml: {train: {lr: 3e-4}, mlm_weight: 0.5}
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml

PRECISIONS = ("fp32", "bf16", "fp16")
# Sanity bounds: values beyond them are typos that train to NaN (lr 1e30), not settings anyone means.
MAX_LR = 1.0
MAX_WEIGHT_DECAY = 10.0
DEVICES = ("auto", "cpu", "cuda")

T = TypeVar("T")


class ConfigError(ValueError):
    """A config file or dict does not match its dataclass; the message names the key."""


@dataclass
class TrainConfig:
    """Settings shared by every training stage. ``0`` turns the periodic features off where noted."""

    lr: float = 3e-4
    min_lr_ratio: float = 0.1  # final lr = lr * min_lr_ratio at max_steps
    weight_decay: float = 0.1
    betas: tuple[float, float] = (0.9, 0.95)
    eps: float = 1e-8
    warmup_steps: int = 100
    max_steps: int = 1000  # optimizer steps
    max_minutes: float = 0.0  # wall-clock budget of one `Trainer.train` call; 0 = none (see `Trainer`)
    batch_size: int = 8  # per rank, per micro-batch
    grad_accum_steps: int = 1
    max_grad_norm: float = 1.0  # 0 = no clipping
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    seed: int = 0
    log_every: int = 10
    eval_every: int = 0  # 0 = only at the end (when an eval set is given)
    save_every: int = 0  # 0 = only at the end
    output_dir: str = "runs/default"
    run_name: str = "run"
    keep_last: int = 3  # checkpoints kept on disk; 0 = keep all
    early_stopping_patience: int = 0  # evaluations without improvement; 0 = off
    compile: bool | None = None  # torch.compile the step; None = on CUDA for the stages that opt in, else eager
    device: Literal["auto", "cpu", "cuda"] = "auto"
    num_workers: int = 0
    push_to_hub: str | None = None  # Hub repo id pushed at every save
    nonfinite_loss_patience: int = 0  # consecutive NaN/inf steps (skipped on the device) tolerated before an error

    def __post_init__(self) -> None:
        if isinstance(self.betas, list):
            self.betas = tuple(self.betas)
        self.validate()

    def validate(self) -> None:
        def fail(name: str, limit: str) -> None:
            raise ConfigError(f"TrainConfig.{name}={getattr(self, name)!r} must be {limit}")

        for name in ("lr", "min_lr_ratio", "weight_decay", "eps", "max_grad_norm", "max_minutes"):
            if not math.isfinite(getattr(self, name)):  # NaN passes every comparison below as False
                fail(name, "a finite number")
        if not self.lr > 0:
            fail("lr", "> 0")
        if self.lr > MAX_LR:
            fail("lr", f"<= {MAX_LR}")
        if not 0.0 <= self.min_lr_ratio <= 1.0:
            fail("min_lr_ratio", "in [0, 1]")
        if not 0.0 <= self.weight_decay <= MAX_WEIGHT_DECAY:
            fail("weight_decay", f"in [0, {MAX_WEIGHT_DECAY}]")
        if len(self.betas) != 2 or not all(0.0 <= b < 1.0 for b in self.betas):
            fail("betas", "two values in [0, 1)")
        if not 0 < self.eps < 1:
            fail("eps", "in (0, 1)")
        for name in ("max_steps", "batch_size", "grad_accum_steps", "log_every"):
            if getattr(self, name) < 1:
                fail(name, ">= 1")
        for name in ("warmup_steps", "eval_every", "save_every", "keep_last", "early_stopping_patience",
                     "num_workers", "seed", "nonfinite_loss_patience"):
            if getattr(self, name) < 0:
                fail(name, ">= 0")
        if self.warmup_steps > self.max_steps:
            fail("warmup_steps", f"<= max_steps ({self.max_steps})")
        if not (self.max_minutes >= 0 and math.isfinite(self.max_minutes)):
            fail("max_minutes", ">= 0 (0 = no time budget)")
        if self.max_grad_norm < 0:
            fail("max_grad_norm", ">= 0 (0 = no clipping)")
        if self.precision not in PRECISIONS:
            fail("precision", f"one of {PRECISIONS}")
        if self.device not in DEVICES:
            fail("device", f"one of {DEVICES}")
        if not self.output_dir:
            fail("output_dir", "a non-empty path")
        if not self.run_name:
            fail("run_name", "a non-empty string")
        if self.push_to_hub is not None and self.push_to_hub.count("/") != 1:
            fail("push_to_hub", "a Hub repo id 'owner/name' or null")

    @property
    def global_batch_size(self) -> int:
        """Samples per optimizer step on one process (multiply by the world size under DDP)."""
        return self.batch_size * self.grad_accum_steps

    def to_dict(self) -> dict[str, Any]:
        return to_dict(self)


# ----------------------------------------------------------------------------------------------------- loading


class _Loader(yaml.SafeLoader):
    """SafeLoader that also reads ``1e-4`` (no dot) as a float, as JSON and Python do."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?$|^[-+]?\.(?:inf|Inf|INF)$|^\.(?:nan|NaN|NAN)$"),
    list("-+0123456789."),
)


def read_config_file(path: str | os.PathLike) -> dict[str, Any]:
    """A YAML (``.yaml``/``.yml``) or JSON file as a dict."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file {str(p)!r} does not exist")
    text = p.read_text()
    try:
        data = json.loads(text) if p.suffix.lower() == ".json" else yaml.load(text, Loader=_Loader)
    except (json.JSONDecodeError, yaml.YAMLError) as exc:
        raise ConfigError(f"config file {str(p)!r} is not valid {p.suffix.lstrip('.') or 'YAML'}: {exc}") from exc
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {str(p)!r} must hold a mapping at the top level, got {_tname(data)}")
    return data


def load_config(path_or_dict: str | os.PathLike | dict[str, Any], cls: type[T]) -> T:
    """Build dataclass ``cls`` from a YAML/JSON file or a dict, strictly (see the module docstring)."""
    data = path_or_dict if isinstance(path_or_dict, dict) else read_config_file(path_or_dict)
    return _build(cls, data, prefix="")


def to_dict(obj: Any) -> Any:
    """A dataclass (possibly nested) as plain JSON-able values; tuples become lists."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    return obj


def _build(cls: type[T], data: Any, prefix: str) -> T:
    where = prefix.rstrip(".") or "the top level"
    if not isinstance(data, dict):
        raise ConfigError(f"config key {where!r}: expected a mapping for {cls.__name__}, got {_tname(data)}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - names)
    if unknown:
        keys = ", ".join(repr(prefix + str(k)) for k in unknown)
        raise ConfigError(f"unknown config key(s) {keys} for {cls.__name__}; valid keys: {sorted(names)}")
    kwargs = {name: _convert(hints[name], value, prefix + name) for name, value in data.items()}
    try:
        return cls(**kwargs)
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}" if prefix else str(exc)) from exc
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"config section {where!r} ({cls.__name__}): {exc}") from exc


def _convert(tp: Any, value: Any, key: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, prefix=key + ".")
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _convert(arg, value, key)
            except ConfigError:
                continue
        raise _type_error(key, tp, value)
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"config key {key!r}: expected one of {list(args)}, got {value!r}")
        return value
    if origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            raise _type_error(key, tp, value)
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(value) != len(args):
                raise ConfigError(f"config key {key!r}: expected {len(args)} values ({_tname_t(tp)}), got "
                                  f"{len(value)}")
            return tuple(_convert(a, v, f"{key}[{i}]") for i, (a, v) in enumerate(zip(args, value)))
        item = args[0] if args else Any
        out = [_convert(item, v, f"{key}[{i}]") for i, v in enumerate(value)]
        return tuple(out) if origin is tuple else out
    if origin is dict:
        if not isinstance(value, dict):
            raise _type_error(key, tp, value)
        vt = args[1] if len(args) == 2 else Any
        return {k: _convert(vt, v, f"{key}.{k}") for k, v in value.items()}
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise _type_error(key, tp, value)
        if not math.isfinite(value):  # YAML .inf/.nan: no config field means them
            raise ConfigError(f"config key {key!r}: expected a finite number, got {value!r}")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise _type_error(key, tp, value)
        return value
    if isinstance(tp, type):
        if not isinstance(value, tp):
            raise _type_error(key, tp, value)
        return value
    return value


def _type_error(key: str, tp: Any, value: Any) -> ConfigError:
    return ConfigError(f"config key {key!r}: expected {_tname_t(tp)}, got {_tname(value)} ({value!r})")


def _tname(value: Any) -> str:
    return type(value).__name__


def _tname_t(tp: Any) -> str:
    if isinstance(tp, type) and not typing.get_args(tp):
        return tp.__name__
    return str(tp).replace("typing.", "")


__all__ = ["ConfigError", "TrainConfig", "load_config", "read_config_file", "to_dict"]

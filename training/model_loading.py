"""Where a stage's model and tokenizer come from: a preset name, a ``save_pretrained`` directory or a Hub repo id.

Everything here runs before training starts, and every error is a `ConfigError` naming the config key
(``model``, ``tokenizer``, ``model_overrides``) and the value or path at fault.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from rxt.config import PRESET_NAMES, RxTConfig
from rxt.hub import CONFIG_NAME, HUB_PATTERNS, WEIGHTS_NAME, load_weights
from rxt.model import RxT
from rxt.resolve import ModelNotFoundError, resolve_pretrained
from rxt.tokenizer import RxTokenizer
from training.config import ConfigError
from training.heads import MLM_HEAD_FILE, MLMHead

TOKENIZER_FILE = "tokenizer.json"


def load_tokenizer(tokenizer: str | None, model_dir: Path | None = None, key: str = "tokenizer") -> RxTokenizer:
    """``tokenizer``: a directory holding ``tokenizer.json``, the file itself, or a Hub repo id (`rxt.resolve`).
    ``None``: the saved model's own ``tokenizer.json`` when ``model_dir`` has one, else `RxTokenizer.default()`."""
    if tokenizer is None:
        if model_dir is not None and (model_dir / TOKENIZER_FILE).is_file():
            return RxTokenizer.from_pretrained(model_dir)
        return RxTokenizer.default()
    path = Path(tokenizer)
    if path.is_dir() and not (path / TOKENIZER_FILE).is_file():
        raise ConfigError(f"config key {key!r}: directory {str(path)!r} has no {TOKENIZER_FILE}")
    try:
        return RxTokenizer.from_pretrained(tokenizer)
    except ModelNotFoundError as exc:
        raise ConfigError(f"config key {key!r}: tokenizer {exc}") from exc
    except Exception as exc:  # a corrupt file: say which one
        raise ConfigError(f"config key {key!r}: cannot read tokenizer {str(path)!r}: {exc}") from exc


def _model_config(raw: dict[str, Any], overrides: dict[str, Any], source: str) -> RxTConfig:
    unknown = sorted(set(overrides) - set(RxTConfig.__dataclass_fields__))
    if unknown:
        raise ConfigError(
            f"config key 'model_overrides': unknown RxTConfig field(s) {unknown}; known: "
            f"{sorted(RxTConfig.__dataclass_fields__)}"
        )
    try:
        return RxTConfig.from_dict({**raw, **overrides})
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"config key 'model_overrides' (model {source}): {exc}") from exc


def load_model_and_tokenizer(
    model: str, tokenizer: str | None = None, overrides: dict[str, Any] | None = None
) -> tuple[RxT, RxTokenizer]:
    """Build or load the stage's `RxT` and its tokenizer.

    Args:
        model: a preset name (``"tiny"``, ``"nano"``, ...: a fresh model whose ``vocab_size`` is the tokenizer's),
            a directory written by ``save_pretrained`` (``config.json`` + ``model.safetensors``) or a Hub repo id of
            one (fetched into the Hub cache; `rxt.resolve` says which is which).
        tokenizer: see `load_tokenizer`.
        overrides: RxTConfig fields replacing the preset's or the saved config's (shape-changing overrides
            of a saved model fail when the weights are loaded).

    Raises:
        ConfigError: unknown preset / missing path (key ``model``), missing tokenizer or a tokenizer with more
            ids than the model's ``vocab_size`` (key ``tokenizer``), bad overrides (key ``model_overrides``).
    """
    overrides = dict(overrides or {})
    if not isinstance(model, str) or not model:
        raise ConfigError(f"config key 'model': expected a preset name or a model directory, got {model!r}")
    path = Path(model)
    if model in PRESET_NAMES and not path.is_dir():
        tok = load_tokenizer(tokenizer)
        base = {k: v for k, v in RxTConfig.preset(model).to_dict().items()}
        base["vocab_size"] = tok.vocab_size
        cfg = _model_config(base, overrides, f"preset {model!r}")
        if cfg.vocab_size < tok.vocab_size:
            raise ConfigError(
                f"config key 'tokenizer': the tokenizer has vocab_size={tok.vocab_size} but "
                f"model_overrides.vocab_size={cfg.vocab_size} is smaller"
            )
        return RxT(cfg), tok
    try:
        path = resolve_pretrained(model, allow_patterns=HUB_PATTERNS)
    except ModelNotFoundError as exc:
        raise ConfigError(f"config key 'model': not a preset ({', '.join(PRESET_NAMES)}); {exc}") from exc
    for name in (CONFIG_NAME, WEIGHTS_NAME):
        if not (path / name).is_file():
            raise ConfigError(f"config key 'model': {str(path)!r} is not a saved model directory (no {name})")
    tok = load_tokenizer(tokenizer, path)
    try:
        raw = json.loads((path / CONFIG_NAME).read_text())
    except json.JSONDecodeError as exc:
        raise ConfigError(f"config key 'model': {str(path / CONFIG_NAME)!r} is not valid JSON: {exc}") from exc
    model_type = raw.pop("model_type", "RxT")
    if model_type != "RxT":
        raise ConfigError(f"config key 'model': {str(path)!r} holds a {model_type}, not an RxT")
    for meta in ("architectures", "torch_dtype"):  # training runs in float32 whatever the weights are stored in
        raw.pop(meta, None)
    cfg = _model_config(raw, overrides, repr(str(path)))
    if tok.vocab_size > cfg.vocab_size:
        raise ConfigError(
            f"config key 'tokenizer': the tokenizer has vocab_size={tok.vocab_size} but model {str(path)!r} "
            f"has vocab_size={cfg.vocab_size}; use the tokenizer the model was trained with"
        )
    rxt = RxT(cfg)
    try:
        load_weights(rxt, path / WEIGHTS_NAME)
    except ValueError as exc:
        raise ConfigError(f"config key 'model': cannot load {str(path)!r}: {exc}") from exc
    return rxt, tok


def mlm_head_for(model: RxT, model_dir: str | Path | None, tie: bool) -> MLMHead:
    """The saved ``mlm_head.safetensors`` beside ``model_dir`` when there is one, else a fresh head
    (tied to the model's embedding when ``tie``)."""
    if model_dir is not None and (Path(model_dir) / MLM_HEAD_FILE).is_file():
        return MLMHead.load(model_dir, embedding=model.embedding)
    cfg = model.config
    return MLMHead(cfg.dim, cfg.vocab_size, norm_eps=cfg.norm_eps, tie_to=model.embedding if tie else None)


__all__ = ["TOKENIZER_FILE", "load_model_and_tokenizer", "load_tokenizer", "mlm_head_for"]

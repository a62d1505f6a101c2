"""Save and load models as ``config.json`` + ``model.safetensors`` (+ ``tokenizer.json``), locally or through the
Hugging Face Hub, with the keyword arguments Hugging Face users pass.

`HubMixin` is a `huggingface_hub.ModelHubMixin` (``isinstance(model, ModelHubMixin)`` holds) whose three methods
are written for this project's format:

- ``save_pretrained(dir, *, tokenizer=None, safe_serialization=True, dtype=None, push_to_hub=False, ...)`` writes
  ``config.json`` (with ``architectures`` and ``torch_dtype``), the weights and, when known, the tokenizer. The
  write is atomic: a new directory is written beside the target, fsynced and renamed into place; an existing one
  gets its files through temp files, each fsynced and `os.replace`d. Nothing half-written is left behind.
- ``from_pretrained(dir_or_repo_id, *, torch_dtype, device_map, revision, cache_dir, token, local_files_only,
  force_download, ...)`` through the one resolver (`rxt.resolve`). The model's own tokenizer, when the directory
  has one, is loaded with it (``model.tokenizer``); a tokenizer with more ids than the model's ``vocab_size`` is
  an error.
- ``push_to_hub(repo_id, *, commit_message, private, tokenizer, ...)`` uploads config, weights, tokenizer and a
  generated model card (`rxt.model_card`).

Loading is strict: a checkpoint whose tensors do not match the model's names and shapes fails with a message
listing the missing, unexpected and mis-shaped keys. Tensors shared between modules (the RxT embedding used
by the encoder, the decoder and a tied LM head) are stored once and re-linked on load.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

import torch
from huggingface_hub import ModelHubMixin
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from rxt.atomic_io import fsync_directory, fsync_tree
from rxt.resolve import HubOptions, resolve_pretrained

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
PT_WEIGHTS_NAME = "pytorch_model.bin"  # safe_serialization=False
MODEL_CARD_NAME = "README.md"
HUB_PATTERNS = ("*.json", "*.safetensors", PT_WEIGHTS_NAME, MODEL_CARD_NAME)
"""What ``from_pretrained`` fetches of a Hub repo: config, weights, tokenizer files, metrics and the card."""
_META_KEYS = ("model_type", "architectures", "torch_dtype")  # config.json keys that are not config fields

_DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32, "fp32": torch.float32, "float": torch.float32,
    "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
    "float16": torch.float16, "fp16": torch.float16, "half": torch.float16,
}


class CheckpointMismatchError(ValueError):
    """The checkpoint's tensors do not match the model's (names or shapes)."""


def dtype_name(dtype: torch.dtype) -> str:
    """``torch.bfloat16`` -> ``"bfloat16"`` (the spelling of ``config.json``'s ``torch_dtype``)."""
    return str(dtype).removeprefix("torch.")


def parse_dtype(value: torch.dtype | str | None, *, auto: str | None = None) -> torch.dtype | None:
    """``torch_dtype`` as users pass it: a ``torch.dtype``, a name (``"bfloat16"``, ``"bf16"``, ...), ``"auto"``
    (the checkpoint's ``torch_dtype``, given as ``auto``) or ``None`` (keep float32)."""
    if value is None or isinstance(value, torch.dtype):
        if isinstance(value, torch.dtype) and not value.is_floating_point:
            raise ValueError(f"torch_dtype={value} must be a floating-point dtype")
        return value
    if value == "auto":
        return None if auto is None else parse_dtype(auto)
    key = str(value).removeprefix("torch.")
    if key not in _DTYPES:
        raise ValueError(f"torch_dtype={value!r} is not one of {sorted(_DTYPES)}, 'auto', a torch.dtype or None")
    return _DTYPES[key]


def parse_device_map(value: str | int | torch.device | None) -> torch.device | None:
    """``device_map`` for a model on one device: ``None``, ``"cpu"``, ``"cuda"``/``"cuda:N"``/``N``, or ``"auto"``
    (``cuda`` when available, else ``cpu``). Layer placement over several devices (a dict, ``"balanced"``, ...)
    is not supported: the error says so."""
    if value is None:
        return None
    if isinstance(value, dict) or (isinstance(value, str) and value.startswith(("balanced", "sequential"))):
        raise ValueError(
            f"device_map={value!r} is not supported: an RxT runs on one device; use None, 'cpu', 'cuda', "
            "'cuda:N' or 'auto'"
        )
    if value == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(f"cuda:{value}" if isinstance(value, int) and not isinstance(value, bool) else value)
    except (RuntimeError, TypeError) as exc:
        raise ValueError(f"device_map={value!r} is not a device; use None, 'cpu', 'cuda', 'cuda:N' or 'auto'") from exc
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"device_map={value!r} is not supported; use None, 'cpu', 'cuda', 'cuda:N' or 'auto'")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device_map={value!r} asks for CUDA, but torch.cuda.is_available() is False")
    return device


def _unique_state(module: nn.Module) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """State dict with shared tensors stored once, plus {alias: stored_name} for the duplicates."""
    tensors: dict[str, torch.Tensor] = {}
    aliases: dict[str, str] = {}
    seen: dict[tuple[int, int, tuple[int, ...]], str] = {}
    for name, tensor in module.state_dict().items():
        key = (tensor.untyped_storage().data_ptr(), tensor.storage_offset(), tuple(tensor.shape))
        if tensor.numel() and key in seen:
            aliases[name] = seen[key]
            continue
        seen[key] = name
        tensors[name] = tensor.detach().contiguous().cpu()
    return tensors, aliases


def _stored_dtype(tensors: dict[str, torch.Tensor]) -> str:
    """The floating dtype holding most of the stored elements (what ``torch_dtype`` records)."""
    counts: dict[torch.dtype, int] = {}
    for tensor in tensors.values():
        if tensor.is_floating_point():
            counts[tensor.dtype] = counts.get(tensor.dtype, 0) + tensor.numel()
    return dtype_name(max(counts, key=counts.__getitem__)) if counts else "float32"


def atomic_write_dir(target: str | os.PathLike, write: Callable[[Path], None]) -> Path:
    """Write a model directory so that no reader ever sees a half-written file.

    ``write(tmp)`` fills a temp directory; every file in it is fsynced. A new ``target`` is the temp directory
    itself, fsynced and renamed into place (then the parent is fsynced). An existing ``target`` keeps its other
    files (a tokenizer, training metrics); each new file is moved over the old one with `os.replace` and the
    directory fsynced. On any error the temp directory is removed.
    """
    target = Path(target)
    fresh = not target.exists()
    parent = target.parent if fresh else target
    parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=parent, prefix=f".{target.name}.tmp-" if fresh else ".tmp-"))
    try:
        write(tmp)
        fsync_tree(tmp)
        if fresh:
            try:
                os.rename(tmp, target)
            except OSError:  # another writer created it meanwhile: fall back to file-by-file replacement
                if not target.is_dir():
                    raise
                fresh = False
            else:
                fsync_directory(parent)
                return target
        for path in tmp.iterdir():
            os.replace(path, target / path.name)
        fsync_directory(target)
        return target
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


class HubMixin(ModelHubMixin):
    """`save_pretrained`, `from_pretrained` and `push_to_hub` for a module built from ``config_class``."""

    config_class: ClassVar[type]
    tokenizer: Any = None
    """The model's own `RxTokenizer` when it was loaded from (or saved with) one; ``push_to_hub`` uploads it."""
    source_dir: Path | None = None
    """The local directory ``from_pretrained`` read (the Hub cache snapshot for a repo id)."""

    # -- saving ----------------------------------------------------------------------------------------------
    def hub_config(self, dtype: str = "float32") -> dict[str, Any]:
        """``config.json``: ``model_type``, ``architectures``, ``torch_dtype`` and the config's fields."""
        name = type(self).__name__
        return {"model_type": name, "architectures": [name], "torch_dtype": dtype,
                **self.config.to_dict()}  # type: ignore[attr-defined]

    def save_pretrained(
        self,
        save_directory: str | os.PathLike,
        *,
        tokenizer: Any = None,
        safe_serialization: bool = True,
        dtype: torch.dtype | str | None = None,
        torch_dtype: torch.dtype | str | None = None,
        config: Any = None,
        repo_id: str | None = None,
        push_to_hub: bool = False,
        model_card_kwargs: dict[str, Any] | None = None,
        **push_to_hub_kwargs: Any,
    ) -> Path:
        """Write ``config.json`` + ``model.safetensors`` (``pytorch_model.bin`` when ``safe_serialization`` is
        False) and the tokenizer (``tokenizer``, else the model's own) into ``save_directory``, atomically.

        ``dtype``/``torch_dtype`` casts the stored floating-point tensors (the model itself is not changed).
        ``push_to_hub=True`` then pushes to ``repo_id`` (default: the directory's name) with
        ``push_to_hub_kwargs``. ``config`` is accepted for `ModelHubMixin` compatibility and must be None: the
        config is the model's own.
        """
        if config is not None:
            raise ValueError("save_pretrained(config=...) is not supported: the model's own config is written")
        cast = parse_dtype(torch_dtype if torch_dtype is not None else dtype)
        tokenizer = tokenizer if tokenizer is not None else self.tokenizer
        if tokenizer is not None:
            check_vocab(tokenizer, self.config.vocab_size, "save_pretrained")  # type: ignore[attr-defined]
        tensors, aliases = _unique_state(self)  # type: ignore[arg-type]
        if cast is not None:
            tensors = {k: v.to(cast) if v.is_floating_point() else v for k, v in tensors.items()}
        config_dict = self.hub_config(_stored_dtype(tensors))
        target = Path(save_directory)

        def write(tmp: Path) -> None:
            (tmp / CONFIG_NAME).write_text(json.dumps(config_dict, indent=2) + "\n")
            if safe_serialization:
                save_file(tensors, str(tmp / WEIGHTS_NAME), metadata={"aliases": json.dumps(aliases)})
            else:
                torch.save({"tensors": tensors, "aliases": aliases}, tmp / PT_WEIGHTS_NAME)
            if tokenizer is not None:
                tokenizer.write_files(tmp)

        atomic_write_dir(target, write)
        # Only one weights format in a directory: a stale file of the other kind would be read instead.
        stale = target / (PT_WEIGHTS_NAME if safe_serialization else WEIGHTS_NAME)
        if stale.exists():
            stale.unlink()
            fsync_directory(target)
        if push_to_hub:
            self.push_to_hub(repo_id or target.name, tokenizer=tokenizer, source_dir=target, **push_to_hub_kwargs)
        return target

    # -- loading ---------------------------------------------------------------------------------------------
    @classmethod
    def from_pretrained(
        cls,
        pretrained_model_name_or_path: str | os.PathLike,
        *,
        torch_dtype: torch.dtype | str | None = None,
        dtype: torch.dtype | str | None = None,
        device_map: str | int | torch.device | None = None,
        map_location: str | torch.device = "cpu",
        revision: str | None = None,
        cache_dir: str | os.PathLike | None = None,
        token: str | bool | None = None,
        local_files_only: bool = False,
        force_download: bool = False,
        load_tokenizer: bool = True,
        **unsupported: Any,
    ):
        """Load from a local directory or a Hub repo id (``owner/name``, through the Hub cache).

        Args:
            torch_dtype: cast the loaded model (``torch.bfloat16``, ``"bfloat16"``, ``"auto"`` = the checkpoint's
                ``torch_dtype``; default float32). ``dtype`` is an alias.
            device_map: the one device to load onto (see `parse_device_map`); ``map_location`` is the older name.
            revision, cache_dir, token, local_files_only, force_download: as for ``huggingface_hub``; ignored for a
                local directory.
            load_tokenizer: also load the directory's ``tokenizer.json`` as ``model.tokenizer`` (default True).

        Raises:
            ModelNotFoundError: neither a directory nor a fetchable Hub id.
            CheckpointMismatchError: names, shapes.
            ValueError: a bad keyword value, the wrong model type, or a tokenizer larger than the model.
        """
        for legacy in ("resume_download", "proxies"):  # accepted by ModelHubMixin; nothing to do here
            unsupported.pop(legacy, None)
        if unsupported:
            raise TypeError(f"{cls.__name__}.from_pretrained() got unexpected keyword argument(s) {sorted(unsupported)}")
        if torch_dtype is not None and dtype is not None and torch_dtype != dtype:
            raise ValueError(f"torch_dtype={torch_dtype!r} and dtype={dtype!r} disagree; pass one")
        device = parse_device_map(device_map) or torch.device(map_location)
        options = HubOptions(revision=revision, cache_dir=cache_dir, token=token,
                             local_files_only=local_files_only, force_download=force_download)
        directory = resolve_pretrained(pretrained_model_name_or_path, options=options, allow_patterns=HUB_PATTERNS)
        raw = read_model_config(directory, cls.__name__)
        stored_dtype = raw.pop("torch_dtype", None)
        cast = parse_dtype(torch_dtype if torch_dtype is not None else dtype, auto=stored_dtype)
        model = cls(cls.config_class.from_dict(raw))
        load_weights(model, weights_path(directory), map_location=device)
        model.to(device)
        if cast is not None:
            model.to(cast)
        if load_tokenizer:
            model.tokenizer = load_own_tokenizer(directory, model.config.vocab_size)
        model.source_dir = directory
        return model.eval()

    # -- pushing ---------------------------------------------------------------------------------------------
    def push_to_hub(
        self,
        repo_id: str,
        *,
        commit_message: str | None = None,
        private: bool | None = None,
        token: str | None = None,
        branch: str | None = None,
        create_pr: bool | None = None,
        tokenizer: Any = None,
        source_dir: str | os.PathLike | None = None,
        safe_serialization: bool = True,
        config: Any = None,
        allow_patterns: list[str] | str | None = None,
        ignore_patterns: list[str] | str | None = None,
        delete_patterns: list[str] | str | None = None,
        model_card_kwargs: dict[str, Any] | None = None,
    ) -> str:
        """Upload config, weights, tokenizer and a generated model card to ``repo_id``; return the commit URL.

        The tokenizer is ``tokenizer``, else the model's own (``model.tokenizer``); a model with neither is an
        error (a repo without its tokenizer cannot be used). The card reads training metrics and retention results
        from ``source_dir`` (default: the directory the model was loaded from), see `rxt.model_card`.
        """
        tokenizer = tokenizer if tokenizer is not None else self.tokenizer
        if tokenizer is None:
            raise ValueError(
                f"push_to_hub({repo_id!r}): the model has no tokenizer; pass tokenizer=RxTokenizer... (the one it "
                "was trained with)"
            )
        source = Path(source_dir) if source_dir is not None else self.source_dir
        with tempfile.TemporaryDirectory(prefix="rxt-push-") as tmp:
            folder = Path(tmp) / "model"
            self.save_pretrained(folder, tokenizer=tokenizer, safe_serialization=safe_serialization, config=config)
            return push_folder(
                folder, repo_id, source_dir=source, commit_message=commit_message, private=private, token=token,
                branch=branch, create_pr=create_pr, allow_patterns=allow_patterns, ignore_patterns=ignore_patterns,
                delete_patterns=delete_patterns, card_kwargs=model_card_kwargs,
            )


def push_folder(
    folder: str | os.PathLike,
    repo_id: str,
    *,
    source_dir: str | os.PathLike | None = None,
    commit_message: str | None = None,
    private: bool | None = None,
    token: str | None = None,
    branch: str | None = None,
    create_pr: bool | None = None,
    allow_patterns: list[str] | str | None = None,
    ignore_patterns: list[str] | str | None = None,
    delete_patterns: list[str] | str | None = None,
    card_kwargs: dict[str, Any] | None = None,
) -> str:
    """Upload a saved model directory with a generated ``README.md`` model card (written into ``folder`` when it
    has none); return the commit URL. Used by ``push_to_hub`` and the ``HubPush`` training callback."""
    from huggingface_hub import HfApi

    from rxt.model_card import write_model_card

    folder = Path(folder)
    for name in (CONFIG_NAME,):
        if not (folder / name).is_file():
            raise FileNotFoundError(f"{folder} has no {name}: not a saved model directory")
    if not (folder / WEIGHTS_NAME).is_file() and not (folder / PT_WEIGHTS_NAME).is_file():
        raise FileNotFoundError(f"{folder} has no {WEIGHTS_NAME} (nor {PT_WEIGHTS_NAME})")
    if not (folder / MODEL_CARD_NAME).is_file():
        write_model_card(folder, repo_id=repo_id, source_dir=source_dir, **(card_kwargs or {}))
    api = HfApi(token=token)
    api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
    if branch is not None:
        api.create_branch(repo_id, branch=branch, exist_ok=True)
    info = api.upload_folder(
        repo_id=repo_id,
        folder_path=str(folder),
        commit_message=commit_message or f"Upload {json.loads((folder / CONFIG_NAME).read_text()).get('model_type')}",
        revision=branch,
        create_pr=create_pr,
        allow_patterns=allow_patterns,
        ignore_patterns=ignore_patterns,
        delete_patterns=delete_patterns,
    )
    return str(getattr(info, "commit_url", info))


def read_model_config(directory: Path, expected: str) -> dict[str, Any]:
    """``config.json`` of ``directory`` without the meta keys but ``torch_dtype``; checks ``model_type``."""
    path = directory / CONFIG_NAME
    if not path.is_file():
        raise FileNotFoundError(f"{directory} has no {CONFIG_NAME}: not a saved model directory")
    raw = json.loads(path.read_text())
    model_type = raw.pop("model_type", expected)
    if model_type != expected:
        raise ValueError(f"{directory} holds a {model_type}, not a {expected}")
    raw.pop("architectures", None)
    return raw


def weights_path(directory: Path) -> Path:
    """``model.safetensors``, else ``pytorch_model.bin``; `FileNotFoundError` naming both."""
    for name in (WEIGHTS_NAME, PT_WEIGHTS_NAME):
        if (directory / name).is_file():
            return directory / name
    raise FileNotFoundError(f"{directory} has no {WEIGHTS_NAME} (nor {PT_WEIGHTS_NAME})")


def check_vocab(tokenizer: Any, vocab_size: int, source: str) -> None:
    """A tokenizer with ids the model cannot embed is an error (a smaller one is fine: a padded embedding)."""
    if tokenizer.vocab_size > vocab_size:
        raise ValueError(
            f"{source}: the tokenizer has {tokenizer.vocab_size} ids but the model's vocab_size is {vocab_size}; "
            "use the tokenizer the model was trained with"
        )


def load_own_tokenizer(directory: Path, vocab_size: int):
    """The ``tokenizer.json`` saved beside a model (None when there is none), checked against its vocab size."""
    from rxt.tokenizer import TOKENIZER_FILE, RxTokenizer

    if not (directory / TOKENIZER_FILE).is_file():
        return None
    tokenizer = RxTokenizer.from_file(directory / TOKENIZER_FILE)
    check_vocab(tokenizer, vocab_size, str(directory))
    return tokenizer


def tokenizer_for(model: HubMixin, source: str) -> tuple[Any, str | None]:
    """The tokenizer to run ``model`` with, and a note to show the user (or None).

    The model's own (loaded with it by ``from_pretrained``). A model saved without one gets the packaged tokenizer
    only when its ``vocab_size`` is exactly the packaged tokenizer's, with a note saying so; otherwise it is an
    error: decoding with another tokenizer would be silent nonsense.
    """
    if model.tokenizer is not None:
        return model.tokenizer, None
    from rxt.tokenizer import TOKENIZER_FILE, RxTokenizer

    default = RxTokenizer.default()
    vocab = model.config.vocab_size  # type: ignore[attr-defined]
    if default.vocab_size != vocab:
        raise ValueError(
            f"model {source} has no {TOKENIZER_FILE} and its vocab_size={vocab} is not the packaged tokenizer's "
            f"{default.vocab_size}: save the model with its tokenizer (save_pretrained(dir, tokenizer=...))"
        )
    return default, (f"model {source} has no {TOKENIZER_FILE}: using the packaged tokenizer (same vocab_size "
                     f"{vocab}); save the model with its own tokenizer to be sure")


def load_weights(model: nn.Module, path: Path, *, map_location: str | torch.device = "cpu") -> None:
    path = Path(path)
    if path.name == PT_WEIGHTS_NAME:
        payload = torch.load(path, map_location=map_location, weights_only=True)
        stored, aliases = dict(payload["tensors"]), dict(payload["aliases"])
    else:
        with safe_open(str(path), framework="pt", device=str(map_location)) as handle:
            aliases = json.loads((handle.metadata() or {}).get("aliases", "{}"))
            stored = {name: handle.get_tensor(name) for name in handle.keys()}  # noqa: SIM118 - not iterable
    for alias, source in aliases.items():
        if source in stored:
            stored[alias] = stored[source]
    expected = model.state_dict()
    missing = sorted(set(expected) - set(stored))
    unexpected = sorted(set(stored) - set(expected))
    mis_shaped = sorted(
        f"{k}: checkpoint {tuple(stored[k].shape)} vs model {tuple(expected[k].shape)}"
        for k in set(expected) & set(stored)
        if stored[k].shape != expected[k].shape
    )
    if missing or unexpected or mis_shaped:
        parts = []
        if missing:
            parts.append(f"missing keys {missing}")
        if unexpected:
            parts.append(f"unexpected keys {unexpected}")
        if mis_shaped:
            parts.append(f"shape mismatches {mis_shaped}")
        raise CheckpointMismatchError(f"checkpoint {path} does not match {type(model).__name__}: " + "; ".join(parts))
    model.load_state_dict(stored, strict=True)


__all__ = [
    "CONFIG_NAME",
    "PT_WEIGHTS_NAME",
    "WEIGHTS_NAME",
    "CheckpointMismatchError",
    "HubMixin",
    "atomic_write_dir",
    "check_vocab",
    "load_own_tokenizer",
    "load_weights",
    "parse_device_map",
    "parse_dtype",
    "push_folder",
    "read_model_config",
    "tokenizer_for",
    "weights_path",
]

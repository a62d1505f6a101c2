"""Save and load models as ``config.json`` + ``model.safetensors``, locally or through the Hugging Face Hub.

Loading is strict: a checkpoint whose tensors do not match the model's names and shapes fails with a message
listing the missing, unexpected and mis-shaped keys. Tensors shared between modules (the RxT embedding used
by the encoder, the decoder and a tied LM head) are stored once and re-linked on load.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from pathlib import Path
from typing import ClassVar

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

CONFIG_NAME = "config.json"
_REPO_ID = re.compile(r"[\w.-]+/[\w.-]+")
WEIGHTS_NAME = "model.safetensors"


class CheckpointMismatchError(ValueError):
    """The checkpoint's tensors do not match the model's (names or shapes)."""


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


def _atomic_write_dir(target: Path, write) -> None:
    """Write files into a temp dir beside ``target`` and move each into place with os.replace."""
    target.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target, prefix=".tmp-") as tmp:
        write(Path(tmp))
        for path in Path(tmp).iterdir():
            with open(path, "rb") as handle:
                os.fsync(handle.fileno())
            os.replace(path, target / path.name)


class HubMixin:
    """`save_pretrained`, `from_pretrained` and `push_to_hub` for a module built from ``config_class``."""

    config_class: ClassVar[type]

    def save_pretrained(self, directory: str | os.PathLike, *, dtype: torch.dtype | None = None) -> Path:
        target = Path(directory)
        tensors, aliases = _unique_state(self)  # type: ignore[arg-type]
        if dtype is not None:
            tensors = {k: v.to(dtype) if v.is_floating_point() else v for k, v in tensors.items()}
        config = {"model_type": type(self).__name__, **self.config.to_dict()}  # type: ignore[attr-defined]

        def write(tmp: Path) -> None:
            (tmp / CONFIG_NAME).write_text(json.dumps(config, indent=2) + "\n")
            save_file(tensors, str(tmp / WEIGHTS_NAME), metadata={"aliases": json.dumps(aliases)})

        _atomic_write_dir(target, write)
        return target

    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str | os.PathLike,
        *,
        map_location: str | torch.device = "cpu",
        revision: str | None = None,
        dtype: torch.dtype | None = None,
    ):
        """Load from a local directory or a Hub repo id (``owner/name``)."""
        directory = _resolve(name_or_path, revision)
        raw = json.loads((directory / CONFIG_NAME).read_text())
        model_type = raw.pop("model_type", cls.__name__)
        if model_type != cls.__name__:
            raise ValueError(f"{directory} holds a {model_type}, not a {cls.__name__}")
        model = cls(cls.config_class.from_dict(raw))
        load_weights(model, directory / WEIGHTS_NAME, map_location=map_location)
        if dtype is not None:
            model.to(dtype)
        return model.eval()

    def push_to_hub(self, repo_id: str, *, private: bool = False, token: str | None = None) -> str:
        from huggingface_hub import HfApi

        api = HfApi(token=token)
        api.create_repo(repo_id, private=private, exist_ok=True)
        with tempfile.TemporaryDirectory() as tmp:
            self.save_pretrained(tmp)
            api.upload_folder(repo_id=repo_id, folder_path=tmp)
        return repo_id


def load_weights(model: nn.Module, path: Path, *, map_location: str | torch.device = "cpu") -> None:
    with safe_open(str(path), framework="pt", device=str(map_location)) as handle:
        aliases = json.loads((handle.metadata() or {}).get("aliases", "{}"))
        stored = {name: handle.get_tensor(name) for name in handle.keys()}  # noqa: SIM118 - safe_open is not iterable
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


def _resolve(name_or_path: str | os.PathLike, revision: str | None) -> Path:
    path = Path(name_or_path)
    if path.is_dir():
        for name in (CONFIG_NAME, WEIGHTS_NAME):
            if not (path / name).is_file():
                raise FileNotFoundError(f"{path} has no {name}")
        return path
    if path.exists() or not _REPO_ID.fullmatch(str(name_or_path)):
        raise FileNotFoundError(f"{name_or_path} is not a model directory (nor a Hub repo id 'owner/name')")
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(str(name_or_path), revision=revision, allow_patterns=[CONFIG_NAME, WEIGHTS_NAME]))
    except Exception as exc:  # offline, unknown repo, no credentials: say which and why
        raise FileNotFoundError(
            f"could not fetch {name_or_path!r} from the Hugging Face Hub ({type(exc).__name__}: {exc}); "
            "pass a local directory, or unset HF_HUB_OFFLINE if you are online"
        ) from exc


"""The one resolver for a model or tokenizer reference: an existing directory, else a Hugging Face Hub repo id.

Used by `RxT/DecoderLM/EncoderLM.from_pretrained`, `RxTokenizer.from_pretrained`, `rxnn chat/serve --model`
and `rxnn train --model`, so every entry point reads ``--model X`` the same way:

1. ``X`` is an existing directory: use it (the caller checks which files it needs).
2. ``X`` exists but is not a directory, or looks like a local path (absolute, ``./``, ``~``, a trailing ``/``,
   more than one ``/``, or a first component that is an existing local directory such as ``runs/nosuch``):
   `ModelNotFoundError` saying it is not a directory and not a Hub repo id. Nothing is fetched.
3. Otherwise ``X`` must be a Hub repo id ``owner/name``: it is fetched with ``snapshot_download`` into the Hub
   cache (``cache_dir``, ``revision``, ``token``, ``local_files_only``, ``force_download`` are passed through; with
   ``HF_HUB_OFFLINE=1`` or ``local_files_only=True`` only the cache is read, never the network). A failure is a
   `ModelNotFoundError` naming both readings.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

_REPO_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")


class ModelNotFoundError(FileNotFoundError):
    """A ``--model`` value that is neither an existing directory nor a Hub repo id that could be fetched."""


@dataclass(frozen=True)
class HubOptions:
    """Where and how a Hub repo id is fetched (the keyword arguments users pass to ``from_pretrained``)."""

    revision: str | None = None
    cache_dir: str | os.PathLike | None = None
    token: str | bool | None = None
    local_files_only: bool = False
    force_download: bool = False


def is_repo_id(value: str) -> bool:
    """True for ``owner/name`` (letters, digits, ``-``, ``_``, ``.``), the shape of a Hub model repo id."""
    return bool(_REPO_ID.fullmatch(value)) and ".." not in value and not value.endswith(".")


def looks_like_path(value: str) -> bool:
    """A value that can only mean a local path (see the module docstring, rule 2)."""
    if not value or value.startswith((".", "~", "/", "\\")) or value.endswith(("/", "\\")):
        return True
    if os.sep in value.replace("/", "") or (len(value) > 1 and value[1] == ":"):  # a Windows path
        return True
    if not is_repo_id(value):
        return True
    return Path(value.split("/", 1)[0]).is_dir()  # runs/nosuch where runs/ exists: a mistyped local path


def _not_found(value: str, why: str) -> ModelNotFoundError:
    return ModelNotFoundError(f"{value!r} is not a directory ({why}) and not a Hub repo id 'owner/name'")


def resolve_pretrained(
    name_or_path: str | os.PathLike,
    *,
    options: HubOptions | None = None,
    allow_patterns: Sequence[str] | None = None,
) -> Path:
    """The local directory holding ``name_or_path`` (rules in the module docstring).

    Args:
        name_or_path: a directory or a Hub repo id.
        options: revision, cache_dir, token, local_files_only, force_download for a Hub id.
        allow_patterns: the files to fetch from the Hub (default: all).

    Raises:
        ModelNotFoundError: the value is not a directory, and not a Hub id (or the Hub id could not be fetched),
            naming the value and why.
    """
    value = os.fspath(name_or_path)
    path = Path(value).expanduser()
    if path.is_dir():
        return path
    if path.exists():
        raise _not_found(value, "it is a file")
    if isinstance(name_or_path, Path) or looks_like_path(value):
        error = _not_found(value, "no such path")
        first = value.split("/", 1)[0]
        if is_repo_id(value) and Path(first).is_dir():
            error = ModelNotFoundError(f"{error} (read as a local path: {first + '/'!r} is a local directory)")
        raise error
    options = options or HubOptions()
    from huggingface_hub import snapshot_download

    try:
        fetched = snapshot_download(
            value,
            revision=options.revision,
            cache_dir=options.cache_dir,
            token=options.token,
            local_files_only=options.local_files_only,
            force_download=options.force_download,
            allow_patterns=list(allow_patterns) if allow_patterns is not None else None,
        )
    except Exception as exc:  # offline with nothing cached, unknown repo, no credentials: say which and why
        where = f" at revision {options.revision!r}" if options.revision else ""
        raise ModelNotFoundError(
            f"{value!r} is not a directory (no such path), and could not fetch {value!r}{where} from the Hugging "
            f"Face Hub ({type(exc).__name__}: {' '.join(str(exc).split())}); pass a local directory, or check the "
            "repo id (and unset HF_HUB_OFFLINE / local_files_only if you are online)"
        ) from exc
    return Path(fetched)


__all__ = ["HubOptions", "ModelNotFoundError", "is_repo_id", "looks_like_path", "resolve_pretrained"]

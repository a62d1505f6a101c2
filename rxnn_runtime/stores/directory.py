"""An on-disk store: one file per session, `<path>/<session_id>.rxs`, replaced atomically on every save.

A save writes the record to a temp file in the same directory, flushes and fsyncs it, `os.replace`s it over the
session's file and then fsyncs the directory, so after a crash (or a power cut) a reader finds the old record or
the new one, never a torn mix. Temp files are named `.<session_id>.<random>.tmp`; a save that fails removes its
own, and temp files left by a killed process are ignored by `load`/`session_ids` and removed once they are older
than `stale_temp_seconds` (when the store is opened). Several processes may share one directory: each save has
its own temp file and the last `os.replace` wins.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import time
from pathlib import Path

from rxnn_runtime.stores.base import SessionState, SessionStore

SUFFIX = ".rxs"
TEMP_SUFFIX = ".tmp"
# Longest file name (in bytes) we create; most filesystems allow 255 and the temp name adds ~15 bytes.
_MAX_NAME_BYTES = 230


class CorruptSessionRecord(ValueError):
    """A stored session record could not be decoded; ``where`` names the file (or key) that holds it."""

    def __init__(self, where: str, detail: str) -> None:
        super().__init__(f"corrupt session record {where}: {detail}")
        self.where = where


def check_file_session_id(session_id: str) -> str:
    """Refuse ids that could name a file outside the store's directory (or no usable file at all)."""
    if not isinstance(session_id, str) or not session_id:
        raise ValueError(
            f"session id {session_id!r} cannot be stored as a file: it must be a non-empty string"
        )
    bad = [sep for sep in ("/", "\\", os.sep, os.altsep, "\0") if sep and sep in session_id]
    if bad:
        raise ValueError(f"session id {session_id!r} cannot be stored as a file: it contains {bad[0]!r}")
    if ".." in session_id or session_id == ".":
        raise ValueError(f"session id {session_id!r} cannot be stored as a file: it contains '..' or is '.'")
    if len(os.fsencode(session_id + SUFFIX)) > _MAX_NAME_BYTES:
        raise ValueError(f"session id {session_id!r} is too long to be stored as a file name")
    return session_id


def _fsync_directory(path: Path) -> None:
    """Make a rename or unlink in `path` durable (POSIX; Windows cannot open a directory, and needs no fsync)."""
    if os.name == "nt":
        return
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class DirectoryStore(SessionStore):
    def __init__(self, path: str | os.PathLike[str], *, stale_temp_seconds: float = 3600.0) -> None:
        self.path = Path(path).expanduser()
        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise OSError(f"cannot create the session directory {str(self.path)!r}: {exc}") from exc
        if not self.path.is_dir():
            raise NotADirectoryError(f"session store path {str(self.path)!r} is not a directory")
        self._remove_stale_temps(stale_temp_seconds)

    def __repr__(self) -> str:
        return f"DirectoryStore({str(self.path)!r})"

    def file_for(self, session_id: str) -> Path:
        return self.path / (check_file_session_id(session_id) + SUFFIX)

    def load(self, session_id: str) -> SessionState | None:
        file = self.file_for(session_id)
        try:
            data = file.read_bytes()
        except FileNotFoundError:
            return None
        try:
            state = SessionState.from_bytes(data)
        except Exception as exc:  # msgpack, safetensors and KeyError all signal a bad record
            raise CorruptSessionRecord(str(file), f"{type(exc).__name__}: {exc}") from exc
        if state.session_id != session_id:
            raise CorruptSessionRecord(
                str(file), f"it holds session {state.session_id!r}, not {session_id!r}"
            )
        return state

    def save(self, state: SessionState) -> None:
        file = self.file_for(state.session_id)
        data = state.to_bytes()  # before touching the disk: a failure here leaves nothing behind
        fd, tmp_name = tempfile.mkstemp(prefix=f".{state.session_id}.", suffix=TEMP_SUFFIX, dir=self.path)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp_name, file)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp_name)
            raise
        _fsync_directory(self.path)

    def delete(self, session_id: str) -> None:
        file = self.file_for(session_id)
        try:
            file.unlink()
        except FileNotFoundError:
            return
        _fsync_directory(self.path)

    def session_ids(self) -> list[str]:
        ids = []
        for entry in os.scandir(self.path):
            name = entry.name
            if name.endswith(SUFFIX) and len(name) > len(SUFFIX) and entry.is_file():
                ids.append(name[: -len(SUFFIX)])
        return sorted(ids)

    def _remove_stale_temps(self, max_age: float) -> None:
        """Remove temp files a killed process left behind (old enough that no save can still be writing them)."""
        cutoff = time.time() - max_age
        for entry in os.scandir(self.path):
            if entry.name.startswith(".") and entry.name.endswith(TEMP_SUFFIX) and entry.is_file():
                with contextlib.suppress(OSError):
                    if entry.stat().st_mtime < cutoff:
                        os.unlink(entry.path)

"""An on-disk store: one file per session, `<path>/<session_id>.rxs`, replaced atomically on every save.

A save writes the record to a temp file in the same directory, flushes and fsyncs it, `os.replace`s it over the
session's file and then fsyncs the directory, so after a crash (or a power cut) a reader finds the old record or
the new one, never a torn mix. Temp files are named `.<session_id>.<pid>~<random>.tmp`; a save that fails removes
its own, and temp files left by a killed process are ignored by `load`/`session_ids` and removed when the store is
opened: at once if the process that wrote them (same host) is gone, else once they are older than
`stale_temp_seconds`. Several processes may share one directory: each save has its own temp file and the last
`os.replace` wins.

Records are deleted only by an explicit `Retention` policy (``retention=``; none by default): at most
``max_sessions`` records (the least recently saved go first) and none unsaved for ``idle_seconds``, applied when
the store opens and then at most every ``sweep_seconds`` on save.
"""

from __future__ import annotations

import contextlib
import os
import re
import tempfile
import time
from pathlib import Path

from rxnn_runtime.stores.base import Retention, SessionState, SessionStore

SUFFIX = ".rxs"
TEMP_SUFFIX = ".tmp"
# Longest file name (in bytes) we create; most filesystems allow 255 and the temp name adds ~15 bytes.
_MAX_NAME_BYTES = 230
_TEMP_PID = re.compile(r"\.(\d+)~[^.]*\.tmp$")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True  # exists (another user's), or we cannot tell: keep its files
    return True


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
    def __init__(self, path: str | os.PathLike[str], *, stale_temp_seconds: float = 3600.0,
                 retention: Retention | None = None, sweep_seconds: float = 60.0) -> None:
        self.path = Path(path).expanduser()
        self.retention = retention or Retention()
        self.sweep_seconds = sweep_seconds
        self._last_sweep = 0.0
        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise OSError(f"cannot create the session directory {str(self.path)!r}: {exc}") from exc
        if not self.path.is_dir():
            raise NotADirectoryError(f"session store path {str(self.path)!r} is not a directory")
        self._remove_stale_temps(stale_temp_seconds)
        self.sweep()

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
        fd, tmp_name = tempfile.mkstemp(prefix=f".{state.session_id}.{os.getpid()}~", suffix=TEMP_SUFFIX,
                                        dir=self.path)
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
        if self.retention.bounded and time.monotonic() - self._last_sweep >= self.sweep_seconds:
            self.sweep()

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

    def sweep(self) -> list[str]:
        """Apply the retention policy now; returns the deleted session ids (oldest first)."""
        self._last_sweep = time.monotonic()
        if not self.retention.bounded:
            return []
        records = []
        for entry in os.scandir(self.path):
            if entry.name.endswith(SUFFIX) and len(entry.name) > len(SUFFIX) and not entry.name.startswith("."):
                with contextlib.suppress(OSError):
                    if entry.is_file():
                        records.append((entry.stat().st_mtime, entry.name[: -len(SUFFIX)]))
        records.sort()
        doomed = []
        if self.retention.idle_seconds is not None:
            cutoff = time.time() - self.retention.idle_seconds
            doomed = [sid for mtime, sid in records if mtime < cutoff]
        if self.retention.max_sessions is not None:
            over = len(records) - self.retention.max_sessions
            doomed = list(dict.fromkeys(doomed + [sid for _, sid in records[:max(over, 0)]]))
        for sid in doomed:
            with contextlib.suppress(OSError):
                (self.path / (sid + SUFFIX)).unlink()
        if doomed:
            _fsync_directory(self.path)
        return doomed

    def _remove_stale_temps(self, max_age: float) -> None:
        """Remove temp files a killed process left behind: those of a process that is gone (same host) at once,
        any other once it is old enough that no save can still be writing it."""
        cutoff = time.time() - max_age
        for entry in os.scandir(self.path):
            if entry.name.startswith(".") and entry.name.endswith(TEMP_SUFFIX) and entry.is_file():
                match = _TEMP_PID.search(entry.name)
                with contextlib.suppress(OSError):
                    orphan = match is not None and int(match.group(1)) != os.getpid() and not _pid_alive(
                        int(match.group(1)))
                    if orphan or entry.stat().st_mtime < cutoff:
                        os.unlink(entry.path)

"""A local stand-in for the Hugging Face Hub: a recording ``HfApi`` and a Hub cache built by hand.

The cache layout is the one ``huggingface_hub`` reads offline: ``<cache>/models--org--name/snapshots/<commit>/``
holding the files, and ``refs/<branch>`` holding the commit hash.
"""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path
from types import SimpleNamespace
from typing import ClassVar


class RecordingHubApi:
    """Records ``create_repo`` and ``upload_folder`` calls; uploaded files are kept as bytes per repo and branch."""

    repos: ClassVar[dict[str, dict]] = {}
    uploads: ClassVar[list[dict]] = []

    def __init__(self, token=None, **_):
        self.token = token

    @classmethod
    def reset(cls):
        cls.repos, cls.uploads = {}, []

    def create_repo(self, repo_id, private=None, exist_ok=False, repo_type=None, **_):
        self.repos.setdefault(repo_id, {"private": private, "branches": {}})

    def create_branch(self, repo_id, branch, exist_ok=False, **_):
        self.repos[repo_id]["branches"].setdefault(branch, {})

    def upload_folder(self, repo_id, folder_path, commit_message=None, revision=None, **kwargs):
        files = {p.name: p.read_bytes() for p in Path(folder_path).iterdir() if p.is_file()}
        branch = revision or "main"
        self.repos[repo_id]["branches"][branch] = files
        self.uploads.append({"repo_id": repo_id, "commit_message": commit_message, "branch": branch,
                             "files": sorted(files), **kwargs})
        return SimpleNamespace(commit_url=f"https://hub.invalid/{repo_id}/commit/{len(self.uploads)}")


def add_snapshot(cache_dir: Path, repo_id: str, files: dict[str, bytes] | Path, ref: str | None = "main") -> str:
    """Write one snapshot of ``repo_id`` into a Hub cache; ``refs/<ref>`` points at it. Returns the commit hash."""
    if isinstance(files, Path):
        files = {p.name: p.read_bytes() for p in files.iterdir() if p.is_file()}
    commit = hashlib.sha1(b"".join(k.encode() + v for k, v in sorted(files.items()))).hexdigest()
    repo = cache_dir / ("models--" + repo_id.replace("/", "--"))
    snapshot = repo / "snapshots" / commit
    if snapshot.exists():
        shutil.rmtree(snapshot)
    snapshot.mkdir(parents=True)
    for name, data in files.items():
        (snapshot / name).write_bytes(data)
    if ref is not None:
        (repo / "refs").mkdir(parents=True, exist_ok=True)
        (repo / "refs" / ref).write_text(commit)
    return commit

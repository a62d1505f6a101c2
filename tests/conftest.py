"""Fixtures shared by every test folder."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def load_script(monkeypatch):
    """``load_script("benchmarks/smat_step.py")``: import a script that is not in a package as a module, registered
    in ``sys.modules`` under its file stem for the test (dataclasses look their module up there)."""

    def load(relative_path: str):
        path = ROOT / relative_path
        spec = importlib.util.spec_from_file_location(path.stem, path)
        module = importlib.util.module_from_spec(spec)
        monkeypatch.setitem(sys.modules, path.stem, module)
        spec.loader.exec_module(module)
        return module

    return load


@pytest.fixture
def single_torch_thread():
    """Run the test on one torch thread: tiny models run faster so, and far faster when other processes share
    the cores."""
    from torch_threads import one_thread

    with one_thread():
        yield

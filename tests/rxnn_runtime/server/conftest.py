"""A tiny real model shared by the server tests of one module."""

from __future__ import annotations

import pytest
from server_helpers import tiny_reactive


@pytest.fixture(scope="module")
def reactive():
    rm = tiny_reactive()
    yield rm
    rm.wait_idle(10)
    rm.dispose()

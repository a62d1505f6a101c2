from __future__ import annotations

import pytest

from rxt.tokenizer import RxTokenizer


@pytest.fixture(scope="session")
def tok():
    return RxTokenizer.default()

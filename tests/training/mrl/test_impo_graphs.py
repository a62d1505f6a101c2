"""The IMPO optimizer step as CUDA graphs (`training.mrl.impo_graphs`): the same updates as the eager static step.

CUDA only (skipped elsewhere): `benchmarks/impo_graph_check.py`'s comparison, which also runs as a script on a GPU
machine without pytest.
"""

from __future__ import annotations

import pytest
import torch


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU")
def test_graphed_steps_update_as_the_eager_static_steps(tok, load_script):
    check = load_script("benchmarks/impo_graph_check.py")
    result = check.compare_graphed_with_eager(tok)
    assert check.passed(result), result

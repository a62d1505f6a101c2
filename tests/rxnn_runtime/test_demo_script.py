"""The demo's scripted recall check: a held-out fact in the generator's own phrasing, scored by the whole-word
rule, without the runtime importing training."""

from __future__ import annotations

import subprocess
import sys

from rxnn_runtime import demo
from training.data.synthetic import fact_type
from training.data.synthetic_values import RESERVED_WORDS, value_split


def test_demo_fact_is_held_out_and_phrased_like_the_generator():
    assert value_split(demo.FACT_VALUE) == "eval"  # no training episode can state it
    assert demo.FACT_VALUE.lower() not in RESERVED_WORDS
    boss = fact_type("boss_name")
    assert demo.SCRIPT[0] in [s.format(v=demo.FACT_VALUE) for s in boss.statements]
    assert demo.SCRIPT[demo.RECALL_TURN - 1] in boss.questions


def test_runtime_never_imports_training():
    code = "import sys, rxnn_runtime.demo, rxt.recall; print(any(m.startswith('training') for m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"

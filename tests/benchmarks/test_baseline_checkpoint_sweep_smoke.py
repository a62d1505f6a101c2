"""benchmarks/baseline_checkpoint_sweep.py at tiny size on the CPU: every checkpoint becomes a loadable DecoderLM,
and the one at the last step holds the final weights."""

from __future__ import annotations

import json

import torch

from rxt.classic import DecoderLM


def test_checkpoints_load_as_the_baseline(tmp_path, load_script, capsys):
    bench = load_script("benchmarks/baseline_checkpoint_sweep.py")
    assert bench.main(["--preset", "tiny", "--steps", "1", "--every", "4", "--device", "cpu",
                       "--out", str(tmp_path)]) == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert len(report["checkpoints"]) >= 2
    final = DecoderLM.from_pretrained(report["final"])
    last = DecoderLM.from_pretrained(report["checkpoints"][-1])
    first = DecoderLM.from_pretrained(report["checkpoints"][0])
    same = [torch.equal(a, b) for a, b in zip(final.state_dict().values(), last.state_dict().values(), strict=True)]
    assert all(same)  # the last checkpoint is taken at the final step
    assert not all(torch.equal(a, b) for a, b in zip(final.state_dict().values(), first.state_dict().values(),
                                                     strict=True))

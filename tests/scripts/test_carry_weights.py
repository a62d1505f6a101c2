"""scripts/carry_weights.py: models carried between machines as bf16 parts of bounded size; resuming from the
carried copy gives the next-step loss of the fp32 model that kept training, within bf16 rounding."""

from __future__ import annotations

import pytest
import torch

from rxt.config import RxTConfig
from rxt.model import RxT
from rxt.tokenizer import RxTokenizer
from training.data.datasets import EpisodeDataset, collate_episodes
from training.data.synthetic import SyntheticDialogueConfig, generate_episodes
from training.stages.smat import SMATObjective


def _batches(tokenizer, count: int, seed: int):
    episodes = generate_episodes(SyntheticDialogueConfig(num_episodes=8 * count, distance=(0, 1, 2), seed=seed))
    data = EpisodeDataset(episodes, tokenizer, max_len=64)
    return [collate_episodes([data[i] for i in range(8 * b, 8 * b + 8)], tokenizer.pad_id) for b in range(count)]


def test_resume_from_bf16_parts_matches_fp32_next_step_loss(tmp_path, load_script):
    carry = load_script("scripts/carry_weights.py")
    torch.manual_seed(0)
    tokenizer = RxTokenizer.default()
    model = RxT(RxTConfig.preset("tiny", vocab_size=tokenizer.vocab_size))
    objective = SMATObjective(model, bptt_depth=2)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    *train, following = _batches(tokenizer, 7, seed=0)
    for batch in train:  # move the weights away from their initial values
        optimizer.zero_grad()
        objective(batch)["loss"].backward()
        optimizer.step()
    run = tmp_path / "runs"
    model.save_pretrained(run / "4_smat" / "final")
    (run / "4_smat" / "metrics.json").write_text("{}")
    parts = carry.pack([run / "4_smat" / "final"], run, tmp_path / "out", "smat", part_mb=0.1)
    assert len(parts) >= 2 and all(p.stat().st_size <= 0.1 * 1024 * 1024 for p in parts)

    names = carry.unpack(list(reversed(parts)), tmp_path / "elsewhere")  # any order: joined by name
    assert "4_smat/metrics.json" in names
    resumed = RxT.from_pretrained(tmp_path / "elsewhere" / "4_smat" / "final")
    assert all(p.dtype == torch.float32 for p in resumed.parameters())
    with torch.no_grad():
        continued = SMATObjective(model, bptt_depth=2)(following)["loss"]
        restarted = SMATObjective(resumed, bptt_depth=2)(following)["loss"]
    # bf16 keeps 8 bits of mantissa: a relative weight error of at most 2^-9 per entry
    assert abs(float(restarted) - float(continued)) <= 1e-2 * float(continued), (restarted, continued)
    differs = any(not torch.equal(a, b) for a, b in zip(model.parameters(), resumed.parameters(), strict=True))
    assert differs  # the copy really went through bf16


def test_unpack_rejects_a_missing_or_corrupt_part(tmp_path, load_script):
    carry = load_script("scripts/carry_weights.py")
    RxT(RxTConfig.preset("tiny", vocab_size=300)).save_pretrained(tmp_path / "run" / "m")
    parts = carry.pack([tmp_path / "run" / "m"], tmp_path / "run", tmp_path / "out", "m", part_mb=0.05)
    assert len(parts) >= 2
    with pytest.raises(ValueError, match="manifest"):
        carry.unpack(parts[:-1], tmp_path / "x")
    parts[0].write_bytes(b"corrupt" + parts[0].read_bytes()[7:])
    with pytest.raises(ValueError, match="do not match"):
        carry.unpack(parts, tmp_path / "y")
    with pytest.raises(FileNotFoundError):
        carry.pack([tmp_path / "run" / "absent"], tmp_path / "run", tmp_path / "out", "n")

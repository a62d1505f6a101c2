"""Episode stages run SDPA without the cuDNN backend (its per-shape planning is host time), and nothing else."""

from __future__ import annotations

import torch

from rxt.config import RxTConfig
from rxt.model import RxT
from rxt.tokenizer import RxTokenizer
from training.attention_backends import shape_varying_attention
from training.config import TrainConfig
from training.data.datasets import EpisodeDataset
from training.data.synthetic import SyntheticDialogueConfig, generate_episodes
from training.stages.smat import SMATStageConfig, SMATTrainer


def test_shape_varying_attention_disables_only_cudnn_and_restores():
    before = (torch.backends.cuda.cudnn_sdp_enabled(), torch.backends.cuda.flash_sdp_enabled(),
              torch.backends.cuda.mem_efficient_sdp_enabled(), torch.backends.cuda.math_sdp_enabled())
    with shape_varying_attention():
        assert not torch.backends.cuda.cudnn_sdp_enabled()
        assert torch.backends.cuda.flash_sdp_enabled()
        assert torch.backends.cuda.mem_efficient_sdp_enabled()
        assert torch.backends.cuda.math_sdp_enabled()
    after = (torch.backends.cuda.cudnn_sdp_enabled(), torch.backends.cuda.flash_sdp_enabled(),
             torch.backends.cuda.mem_efficient_sdp_enabled(), torch.backends.cuda.math_sdp_enabled())
    assert after == before


def test_smat_step_runs_under_the_shape_varying_backends(tmp_path, monkeypatch):
    tok = RxTokenizer.default()
    episodes = generate_episodes(SyntheticDialogueConfig(num_episodes=8, num_turns=2, seed=0))
    model = RxT(RxTConfig.preset("tiny", vocab_size=tok.vocab_size))
    config = SMATStageConfig(train=TrainConfig(lr=1e-3, max_steps=1, warmup_steps=0, batch_size=4, device="cpu",
                                               output_dir=str(tmp_path), keep_last=0))
    trainer = SMATTrainer(model, config, EpisodeDataset(episodes, tok, 64), tokenizer=tok)
    seen = []
    forward = trainer.unwrapped_model.forward

    def spy(batch):
        seen.append(torch.backends.cuda.cudnn_sdp_enabled())
        return forward(batch)

    monkeypatch.setattr(trainer.unwrapped_model, "forward", spy)
    trainer.train()
    assert seen and not any(seen)
    assert torch.backends.cuda.cudnn_sdp_enabled()  # restored after the step

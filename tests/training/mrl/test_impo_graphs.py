"""The IMPO optimizer step as CUDA graphs (`training.mrl.impo_graphs`): the same updates as the eager static step.

CUDA only (skipped elsewhere). Also a script, for a GPU machine without pytest:
``python tests/training/mrl/test_impo_graphs.py`` prints the comparison as JSON and exits non-zero on a mismatch.
"""

from __future__ import annotations

import copy
import json
import random
import sys

import pytest
import torch

from rxnn_runtime.messages import GenerationOptions
from rxnn_runtime.reactive_model import ReactiveModel
from rxt.config import RxTConfig
from rxt.model import RxT
from rxt.tokenizer import RxTokenizer
from training.data.synthetic import SyntheticDialogueConfig, generate_episodes
from training.mrl.critic import Critic
from training.mrl.episodes import collect_episodes
from training.mrl.impo import IMPOConfig, IMPOLearner
from training.mrl.rewards import compute_rewards
from training.rewards import MemoryRetentionReward


def compare_graphed_with_eager(tok, device: str = "cuda", updates: int = 3) -> dict:
    """Two learners from the same weights, static shapes, fused capturable AdamW: one eager, one with graphs.
    After ``updates`` updates on the same episodes: the largest statistic and weight differences, the graphs
    captured and replayed."""
    torch.manual_seed(0)
    model = RxT(RxTConfig.preset("tiny", vocab_size=tok.vocab_size)).to(device)
    reactive = ReactiveModel(model, tok, max_batch_size=4, use_cuda_graphs=False)
    try:
        episodes = generate_episodes(SyntheticDialogueConfig(num_episodes=6, num_turns=2, seed=0))
        logs = collect_episodes(reactive, episodes, options=GenerationOptions(max_new_tokens=8, temperature=1.0),
                                generator=random.Random(0))
        reactive.wait_idle()
    finally:
        reactive.dispose()
    compute_rewards(logs, MemoryRetentionReward(cosine_weight=0.0, length_weight=0.1), pad_id=tok.pad_id,
                    device=device)
    learners = []
    for graphs in (False, True):
        policy = copy.deepcopy(model)
        critic = Critic.from_model(policy).to(device)
        opt = torch.optim.AdamW([*policy.parameters(), *critic.parameters()], lr=1e-3, fused=True,
                                capturable=True)
        cfg = IMPOConfig(minibatch_size=4, ppo_epochs=2, static_shapes=True, cuda_graphs=graphs, kl_coef=0.1)
        learners.append(IMPOLearner(policy, critic, opt, cfg, reference=copy.deepcopy(model), pad_id=tok.pad_id,
                                    device=device))
    stats = [[learner.update(logs) for _ in range(updates)] for learner in learners]
    eager, graphed = learners
    stat_diff = max(abs(a[k] - b[k]) / max(1.0, abs(a[k])) for a, b in zip(*stats, strict=True) for k in a)
    weight_diff = max(float((p - q).detach().abs().max()) for p, q in zip(eager.parameters(), graphed.parameters(),
                                                                  strict=True))
    moved = max(float((p - q).detach().abs().max()) for p, q in zip(model.parameters(), graphed.policy.parameters(),
                                                            strict=True))
    runner = graphed.graphed  # None off CUDA
    return {"stat_rel_diff": stat_diff, "weight_abs_diff": weight_diff, "weights_moved": moved,
            "captures": runner.captures if runner else 0, "replays": runner.replays if runner else 0,
            "failed": len(runner.failed) if runner else 0, "first_ratio_exact": graphed.first_ratio_exact}


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU")
def test_graphed_steps_update_as_the_eager_static_steps(tok):
    result = compare_graphed_with_eager(tok)
    assert result["captures"] >= 1 and result["replays"] >= 1 and result["failed"] == 0
    assert result["first_ratio_exact"] is True and result["weights_moved"] > 1e-4
    assert result["stat_rel_diff"] < 1e-4 and result["weight_abs_diff"] < 1e-5, result


if __name__ == "__main__":
    out = compare_graphed_with_eager(RxTokenizer.default())
    print(json.dumps(out), flush=True)
    ok = (out["captures"] >= 1 and out["replays"] >= 1 and out["failed"] == 0 and out["stat_rel_diff"] < 1e-4
          and out["weight_abs_diff"] < 1e-5 and out["weights_moved"] > 1e-4)
    sys.exit(0 if ok else 1)

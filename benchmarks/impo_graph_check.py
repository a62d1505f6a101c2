"""Do the IMPO optimizer steps as CUDA graphs (`training.mrl.impo_graphs`) update the weights as the eager static
steps do? A tiny model on the GPU, episodes collected through the runtime, two learners from the same weights (one
eager, one graphed), several updates; prints one JSON line (largest differences, graphs captured and replayed) and
exits 1 on a mismatch. Run on a GPU machine without pytest; `tests/training/mrl/test_impo_graphs.py` runs it too::

    python benchmarks/impo_graph_check.py [--out FILE]
"""

from __future__ import annotations

import argparse
import copy
import json
import random
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from rxnn_runtime.messages import GenerationOptions
from rxnn_runtime.reactive_model import ReactiveModel
from rxt.atomic_io import atomic_write_json
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


def passed(result: dict) -> bool:
    """Graphs captured and replayed, none failed, the first ratio exactly 1, the weights moved, and the graphed
    learner's statistics and weights those of the eager one (float32 rounding)."""
    return (result["captures"] >= 1 and result["replays"] >= 1 and result["failed"] == 0
            and result["first_ratio_exact"] is True and result["weights_moved"] > 1e-4
            and result["stat_rel_diff"] < 1e-4 and result["weight_abs_diff"] < 1e-5)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    result = compare_graphed_with_eager(RxTokenizer.default())
    result.update(passed=passed(result), device=torch.cuda.get_device_name(), torch=torch.__version__)
    print(json.dumps(result), flush=True)
    if args.out:
        atomic_write_json(args.out, result)
    return 0 if result["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())

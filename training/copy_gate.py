"""The CPU gate: before any GPU time, a toy of the RxT stack must learn to recall held-out values through its
memory, in a few CPU minutes.

The toy is built from the project's own parts: `rxt.model.RxT` (a ``tiny``-preset model, widened), a byte-level
BPE trained on the generator's training texts (`training.tokenizer_training`), the stage-4 step
(`training.stages.smat.SMATObjective`: decoder on turn t reading the STM written from turns < t, truncated BPTT)
and the synthetic generator (`training.data.synthetic`). It trains in two phases, the curriculum the nano
recipe follows:

1. **copy in context** (``copy_steps``): the turns of training dialogues as single interactions, each question
   merged with its statements into one query (`synthetic_records`, what the recipe's stages 1-2 read); the
   decoder learns to copy a value it has never seen from its own context;
2. **copy through memory** (``memory_steps``): dialogues with the question ``distance`` turns after the
   statement (mixed with a share ``copy_mix`` of phase-1 batches), so the value now reaches the decoder only
   through the STM.

It then measures, by greedy generation and the whole-word rule (`training.recall_eval.recall`), recall at k = 1
of held-out values (``split="eval"``: a generator space disjoint from training's) and the same with the memory
reset (the ablation, which must stay near 0). ``tests/training/test_copy_gate.py`` holds it to >= 0.80 and
<= 0.05; ``python -m training.copy_gate`` prints the report.
"""

from __future__ import annotations

import json
import math
import random
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from rxt.config import RxTConfig
from rxt.model import RxT
from training.data.datasets import EpisodeDataset, collate_episodes
from training.data.records import EpisodeRecord
from training.data.synthetic import SyntheticDialogueConfig, generate_episodes, synthetic_records
from training.recall_eval import recall
from training.stages.smat import SMATObjective
from training.tokenizer_training import TokenizerTrainingConfig, train_tokenizer


@dataclass
class CopyGateConfig:
    """The toy, its data and its two training phases (see the module docstring)."""

    seed: int = 0
    vocab_size: int = 512
    dim: int = 64
    num_layers: int = 2
    stm_slots: int = 16
    max_len: int = 128
    groups: tuple[str, ...] = ("pet",)
    num_facts: tuple[int, int] = (1, 1)
    train_distances: tuple[int, ...] = (0, 1)
    eval_distance: int = 1
    eval_episodes: int = 64
    train_episodes: int = 20000
    batch_size: int = 32
    lr: float = 3e-3
    warmup_steps: int = 30
    copy_steps: int = 800
    memory_steps: int = 1700
    copy_mix: float = 0.3
    bptt_depth: int = 3
    max_new_tokens: int = 16
    max_seconds: float = 600.0
    device: str = "cpu"  # "cuda": the same gate at larger sizes (bf16 autocast), e.g. a data/lr sweep on a GPU
    data: dict[str, Any] = field(default_factory=dict)  # extra SyntheticDialogueConfig fields
    # a data curriculum inside the memory phase: its first `warm_memory_steps` read dialogues whose
    # SyntheticDialogueConfig fields `warm_data` overrides (e.g. {"groups": ["pet"], "num_facts": 1}: one fact
    # type family without distractors first, then the full mix)
    warm_memory_steps: int = 0
    warm_data: dict[str, Any] = field(default_factory=dict)
    # SyntheticDialogueConfig fields of the held-out episodes only, over `data`'s: e.g. {"chain": 2} scores the
    # recall of a fact stated after an earlier one was asked and answered, whatever the training dialogues were
    eval_data: dict[str, Any] = field(default_factory=dict)
    # a share of the memory phase's batches drawn from dialogues that chain two facts (`SyntheticDialogueConfig.
    # chain` = 2: a second fact stated after the first was asked and answered), the others from `data`'s
    chained_share: float = 0.0

    def synthetic(self, **kw: Any) -> SyntheticDialogueConfig:
        fields = {"groups": self.groups, "num_facts": self.num_facts, **self.data, **kw}
        facts = fields["num_facts"]
        fields.setdefault("max_lead", 0 if (facts if isinstance(facts, int) else facts[1]) == 1 else 1)
        return SyntheticDialogueConfig(**fields)


def _lr(cfg: CopyGateConfig, step: int, total: int) -> float:
    warm = min(1.0, (step + 1) / max(1, cfg.warmup_steps))
    return cfg.lr * warm * (0.1 + 0.45 * (1 + math.cos(math.pi * min(1.0, step / max(1, total)))))


def run_gate(cfg: CopyGateConfig, log=print) -> dict[str, Any]:
    """Train the toy and return its held-out recall, the memory-reset recall and what it took."""
    torch.manual_seed(cfg.seed)
    start = time.perf_counter()
    dialogues = generate_episodes(cfg.synthetic(num_episodes=cfg.train_episodes, distance=cfg.train_distances,
                                                seed=cfg.seed))
    # every turn of training dialogues as one interaction, each question merged with its statements (what the
    # recipe's stages 1-2 read): statements whose answers repeat the value, fillers, in-context questions
    copies = [EpisodeRecord(r.query, r.answer) for r in synthetic_records(
        cfg.synthetic(num_episodes=cfg.train_episodes // 5, distance=cfg.train_distances, seed=cfg.seed + 1),
        "interaction")]
    chained = generate_episodes(cfg.synthetic(num_episodes=cfg.train_episodes, distance=cfg.train_distances,
                                              seed=cfg.seed + 4, chain=2)) if cfg.chained_share > 0 else []
    warm_dialogues = generate_episodes(cfg.synthetic(num_episodes=cfg.train_episodes, distance=cfg.train_distances,
                                                     seed=cfg.seed + 3, **cfg.warm_data)) if cfg.warm_memory_steps else []
    held_out = generate_episodes(cfg.synthetic(num_episodes=cfg.eval_episodes, distance=cfg.eval_distance,
                                               split="eval", seed=cfg.seed + 2, **cfg.eval_data))
    held_out_copies = generate_episodes(cfg.synthetic(num_episodes=cfg.eval_episodes, distance=cfg.eval_distance,
                                                      split="eval", seed=cfg.seed + 2, form="in_context",
                                                      **cfg.eval_data))
    texts = [f"{t.query} {t.answer}" for e in dialogues[:3000] for t in e.turns]  # training text only
    tokenizer = train_tokenizer(texts, TokenizerTrainingConfig(kind="byte_bpe", vocab_size=cfg.vocab_size))
    model = RxT(RxTConfig.preset("tiny", vocab_size=tokenizer.vocab_size, dim=cfg.dim, num_layers=cfg.num_layers,
                                 stm_slots=cfg.stm_slots, ffn_hidden_dim=2 * cfg.dim, max_seq_len=cfg.max_len))
    device = torch.device(cfg.device)
    model.to(device)
    objective = SMATObjective(model, bptt_depth=cfg.bptt_depth)
    datasets = {"copy": EpisodeDataset(copies, tokenizer, cfg.max_len),
                "memory": EpisodeDataset(dialogues, tokenizer, cfg.max_len),
                "memory_warm": EpisodeDataset(warm_dialogues, tokenizer, cfg.max_len),
                "memory_chained": EpisodeDataset(chained, tokenizer, cfg.max_len)}
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=0.01, fused=device.type == "cuda")
    rng = random.Random(cfg.seed)
    total = cfg.copy_steps + cfg.memory_steps
    losses: dict[str, float] = {}
    step = 0
    for step in range(total):
        if time.perf_counter() - start > cfg.max_seconds:
            break
        phase = "copy" if step < cfg.copy_steps or rng.random() < cfg.copy_mix else "memory"
        if phase == "memory" and step < cfg.copy_steps + cfg.warm_memory_steps:
            phase = "memory_warm"
        elif phase == "memory" and cfg.chained_share > 0 and rng.random() < cfg.chained_share:
            phase = "memory_chained"
        data = datasets[phase]
        batch = collate_episodes([data[rng.randrange(len(data))] for _ in range(cfg.batch_size)], tokenizer.pad_id)
        batch = [{name: tensor.to(device, non_blocking=True) for name, tensor in turn.items()} for turn in batch]
        for group in optimizer.param_groups:
            group["lr"] = _lr(cfg, step, total)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            loss = objective(batch)["loss"]
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        value = loss.item()
        losses[phase] = 0.9 * losses.get(phase, value) + 0.1 * value
        if (step + 1) % 100 == 0:
            log(f"step {step + 1}/{total} " + " ".join(f"{k} loss {v:.3f}" for k, v in losses.items())
                + f" ({time.perf_counter() - start:.0f}s)")
    trained_s = time.perf_counter() - start
    result = {
        "recall": recall(model, tokenizer, held_out, max_new_tokens=cfg.max_new_tokens),
        "recall_memory_reset": recall(model, tokenizer, held_out, max_new_tokens=cfg.max_new_tokens,
                                      reset_memory=True),
        "recall_in_context": recall(model, tokenizer, held_out_copies, max_new_tokens=cfg.max_new_tokens),
        "steps": step + 1,
        "train_seconds": round(trained_s, 1),
        "seconds": round(time.perf_counter() - start, 1),
        "parameters": model.num_parameters(),
        "threads": torch.get_num_threads(),
        "config": asdict(cfg),
    }
    result["model"], result["tokenizer"] = model, tokenizer
    return result


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """``["lr=1e-3", "num_facts=[2, 4]", "groups=null"]`` -> CopyGateConfig keyword arguments (JSON values; lists
    become tuples, as the config's tuple fields expect). A bad item raises ValueError naming it."""
    fields = CopyGateConfig.__dataclass_fields__
    out: dict[str, Any] = {}
    for item in items:
        name, sep, text = item.partition("=")
        if not sep or name not in fields:
            raise ValueError(f"--set {item!r}: expected FIELD=JSON with FIELD one of {sorted(fields)}")
        try:
            value = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"--set {item!r}: the value is not JSON ({exc.msg})") from None
        out[name] = tuple(value) if isinstance(value, list) else value
    return out


def main(argv: list[str] | None = None) -> int:
    """``python -m training.copy_gate [--out FILE.json]``: run the gate, print (and write) the report."""
    import argparse
    import platform

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=None, help="also write the report as JSON (atomically)")
    parser.add_argument("--set", action="append", default=[], metavar="FIELD=JSON", dest="overrides",
                        help="override a CopyGateConfig field with a JSON value, e.g. --set lr=1e-3 "
                             "--set 'num_facts=[2, 4]' --set groups=null (an ablation; repeatable)")
    args = parser.parse_args(argv)
    try:
        config = CopyGateConfig(**parse_overrides(args.overrides))
    except (TypeError, ValueError) as exc:
        parser.error(str(exc))
    result = run_gate(config)
    result.pop("model"), result.pop("tokenizer")
    result["passed"] = result["recall"] >= 0.8 and result["recall_memory_reset"] <= 0.05
    result.update(benchmark="copy_gate", command=" ".join(["python -m training.copy_gate", *(argv or sys.argv[1:])]),
                  device=(torch.cuda.get_device_name() if config.device.startswith("cuda") else
                          f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"),
                  versions={"python": platform.python_version(), "torch": torch.__version__})
    print(json.dumps(result, indent=2))
    if args.out:
        from rxt.atomic_io import atomic_write_json

        atomic_write_json(args.out, result)
    return 0 if result["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())

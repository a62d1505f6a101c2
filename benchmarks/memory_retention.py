"""Memory retention: does the model recall a fact k turns later? RxT against its memory-reset ablation and a
stateless baseline, on held-out data.

**Synthetic recall.** Held-out synthetic memory dialogues (``split="eval"``: fact values from a generator space
disjoint from training's, and a seed of their own): a fact is stated, then k turns follow (k = 1, 2, 4, 8, 16;
unrelated filler, and 1-3 distractor facts of the same group stated among them; the asked fact is the episode's
first), then a question about the fact. The history turns are teacher-forced (their reference query and answer are what the
model reads or writes to memory), so only retention is measured; the answer to the question is generated
greedily. Reported per k: exact-match recall (`recall_hit`: the fact value occurs as whole words in the answer);
the same recall with the question asked in one of two hand-written phrasings the generator never produces
(``unseen_phrasing``); the recall of a second fact, of another group, stated after the first one was asked and
answered and asked k turns later (``after_a_question``: the same episodes with a second segment, as a person tells
and asks things in one conversation); and the composite MRL reward (`MemoryRetentionReward`, 0-10, ``long_range`` mode: BLEU
against the reference answer and the interaction that stated the fact, plus the length term; no cosine term, so
every system is scored the same way, with the first RxT's tokenizer).

**Chitchat.** Held-out chitchat conversations (the last ``--chitchat`` episodes of the adapters' ``"eval"``
split: the packaged corpus's last 256 conversations, which training sources never read, whatever their
``limit``). Every turn is teacher-forced and the answer tokens (answer plus ``[EOS]``) are scored: perplexity
and argmax accuracy, token-weighted over all turns.

**Systems.**

- ``--rxt [LABEL=]DIR`` (repeatable, e.g. ``stage4=runs/nano/4_smat/final mrl=runs/nano/5_mrl/final``): the RxT
  reads only the current query; earlier turns reach it through the STM (``update_memory`` after every turn).
- ``<LABEL>/memory_reset``: the same RxT with its memory reset every turn (it always reads the initial STM):
  the ablation that must fail at recall.
- ``--baseline [LABEL=]DIR``: a stateless `DecoderLM` reading the whole history
  ``[BOS][Q]q1[A]a1[EOS] ... [BOS][Q]qN[A]``, truncated from the left to its ``max_seq_len`` (minus the room left
  for the answer). ``<LABEL>/no_history`` is the same model reading only the current query.

Output: ``--out`` JSON (written atomically, with device, versions and the command) and a PNG of recall against
k per system (``--plot``, default: the JSON path with ``.png``).

    python benchmarks/memory_retention.py --rxt stage4=runs/nano/4_smat/final --rxt mrl=runs/nano/5_mrl/final \\
        --baseline runs/baseline/final --out benchmarks/results/memory_retention.json
    # CPU smoke run on tiny checkpoints:
    python benchmarks/memory_retention.py --rxt runs/tiny_recipe/4_smat/final --episodes-per-k 4 --chitchat 4 \\
        --out /tmp/memory_retention.json
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import math
import platform
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from rxt.atomic_io import atomic_write_json
from rxt.generation import generate
from rxt.recall import recall_hit
from rxt.sampling import SamplingConfig
from rxt.template import InteractionTemplate
from rxt.tokenizer import RxTokenizer
from training.data.records import EpisodeRecord, InteractionRecord
from training.data.synthetic import BENCHMARK_DISTANCES, SyntheticDialogueConfig, fact_type, generate_episodes
from training.recall_eval import generated_answers

DEFAULT_OUT = Path("benchmarks/results/memory_retention.json")

UNSEEN_PHRASINGS: tuple[str, ...] = (
    "Quick question before I forget: what was {subject} again?",
    "I need {subject} right now. Can you tell me?",
)
"""Hand-written questions the generator never produces (its templates are checked against them): the
"unseen phrasing" column asks the same held-out facts with these, alternating by episode, built from the fact
type's first-person ``subject`` ("my cat's name", "the door code")."""


def unseen_phrasing(episode: EpisodeRecord, index: int) -> EpisodeRecord:
    """``episode`` with its final question replaced by hand-written phrasing ``index % 2``."""
    subject = fact_type(str(episode.metadata["fact_key"])).subject
    question = episode.turns[-1]
    query = UNSEEN_PHRASINGS[index % len(UNSEEN_PHRASINGS)].format(subject=subject)
    return EpisodeRecord(episode.query, episode.answer,
                         (*episode.interactions[:-1], InteractionRecord(query, question.answer)),
                         dict(episode.metadata))


# ---------------------------------------------------------------------------------------------------- systems


@dataclass
class System:
    """One model under test. ``kind``: ``"rxt"`` (memory through STM) or ``"stateless"`` (history in the prompt).

    ``use_memory`` (RxT): False = the memory-reset ablation. ``use_history`` (stateless): False = query only.
    """

    name: str
    kind: str
    path: str
    model: Any
    tokenizer: RxTokenizer
    use_memory: bool = True
    use_history: bool = True
    ablation_of: str | None = None
    template: InteractionTemplate = field(init=False)

    def __post_init__(self) -> None:
        self.template = InteractionTemplate(self.tokenizer)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def max_seq_len(self) -> int:
        return self.model.config.max_seq_len

    @property
    def decoder(self):
        return self.model.decoder

    def parameters(self) -> int:
        return sum(p.numel() for p in self.model.parameters())

    def _ids(self, ids: Sequence[int]) -> torch.Tensor:
        return torch.tensor([list(ids)], dtype=torch.long, device=self.device)

    # -- state over a conversation --------------------------------------------------------------------------
    def initial_state(self) -> Any:
        """RxT: the initial STM; stateless: the empty history (a list of token ids)."""
        return self.model.initial_memory(1) if self.kind == "rxt" else []

    @torch.no_grad()
    def advance(self, state: Any, turn: InteractionRecord) -> Any:
        """The state after the (teacher-forced) interaction ``turn``."""
        ids = self.template.interaction_ids(turn.query, turn.answer)
        if self.kind == "rxt":
            if not self.use_memory:
                return state
            return self.model.update_memory(state, self._ids(ids[: self.max_seq_len]))
        return [*state, *ids] if self.use_history else state

    def _memory(self, state: Any):
        if self.kind != "rxt":
            return None
        stm = state if self.use_memory else self.model.initial_memory(1)
        return self.model.project_memory(stm)

    def _context(self, state: Any, ids: list[int], budget: int) -> tuple[list[int], int]:
        """``history + ids`` (stateless) or ``ids`` (RxT), cut from the left to ``budget`` tokens; also returns
        where ``ids`` starts in the result (may be negative when ``ids`` itself was cut)."""
        full = [*state, *ids] if self.kind == "stateless" and self.use_history else list(ids)
        start = len(full) - len(ids)
        cut = max(0, len(full) - budget)
        return full[cut:], start - cut

    # -- scoring --------------------------------------------------------------------------------------------
    @torch.no_grad()
    def answer(self, state: Any, query: str, max_new_tokens: int) -> list[int]:
        """Greedy answer ids (without ``[EOS]``) to ``query`` in ``state``."""
        max_new = max(1, min(max_new_tokens, self.max_seq_len // 2))
        prompt, _ = self._context(state, self.template.query_ids(query), self.max_seq_len - max_new)
        result = generate(
            self.decoder, self._ids(prompt), None, SamplingConfig(max_new_tokens=max_new),
            eos_id=self.tokenizer.eos_id, pad_id=self.tokenizer.pad_id, memory=self._memory(state),
        )
        tokens = result.tokens[0, : int(result.lengths[0])].tolist()
        return [t for t in tokens if t != self.tokenizer.eos_id]

    def answers(self, episodes: Sequence[EpisodeRecord], max_new_tokens: int) -> list[str]:
        """The greedy answer to the last query of each episode after its (teacher-forced) history. An RxT runs
        the episodes as one batch (`training.recall_eval.generated_answers`: per-row memory updates and prompt
        lengths); a stateless model its histories as right-padded prompts of per-row lengths. Both equal one
        episode at a time (`answer`), which the tests check."""
        max_new = max(1, min(max_new_tokens, self.max_seq_len // 2))
        if self.kind == "rxt":
            return generated_answers(self.model, self.tokenizer, episodes, reset_memory=not self.use_memory,
                                     max_new_tokens=max_new)
        prompts = []
        for episode in episodes:
            state = self.initial_state()
            for turn in episode.turns[:-1]:
                state = self.advance(state, turn)
            prompts.append(self._context(state, self.template.query_ids(episode.turns[-1].query),
                                         self.max_seq_len - max_new)[0])
        out: list[str] = []
        for start in range(0, len(prompts), 64):  # right-padded, each row decoded from its own length
            chunk = prompts[start : start + 64]
            ids = torch.full((len(chunk), max(len(p) for p in chunk)), self.tokenizer.pad_id, dtype=torch.long)
            for row, prompt in enumerate(chunk):
                ids[row, : len(prompt)] = torch.tensor(prompt, dtype=torch.long)
            lengths = torch.tensor([len(p) for p in chunk], dtype=torch.long)
            result = generate(self.decoder, ids.to(self.device), lengths.to(self.device),
                              SamplingConfig(max_new_tokens=max_new), eos_id=self.tokenizer.eos_id,
                              pad_id=self.tokenizer.pad_id)
            for row in range(len(chunk)):
                tokens = result.tokens[row, : int(result.lengths[row])].tolist()
                out.append(self.tokenizer.decode([t for t in tokens if t != self.tokenizer.eos_id]))
        return out

    @torch.no_grad()
    def answer_nll(self, state: Any, turn: InteractionRecord) -> tuple[float, int, int]:
        """Teacher-forced ``(sum of answer-token NLL, argmax hits, answer tokens)`` of ``turn`` in ``state``.
        Answer tokens: the answer and its ``[EOS]`` (`InteractionTemplate.answer_mask`), of this turn only."""
        ids = self.template.interaction_ids(turn.query, turn.answer)
        mask = self.template.answer_mask(ids)
        context, start = self._context(state, ids, self.max_seq_len)
        counted = [False] * len(context)
        for i, flag in enumerate(mask):
            if flag and 0 <= start + i < len(context):
                counted[start + i] = True
        input_ids = self._ids(context)
        if self.kind == "rxt":
            logits = self.decoder(input_ids, memory=self._memory(state)).logits
        else:
            logits = self.model(input_ids).logits
        targets = input_ids[0, 1:]
        keep = torch.tensor(counted[1:], dtype=torch.bool, device=self.device)
        if not bool(keep.any()):
            return 0.0, 0, 0
        pred = logits[0, :-1].float()
        nll = F.cross_entropy(pred[keep], targets[keep], reduction="sum")
        hits = (pred[keep].argmax(-1) == targets[keep]).sum()
        return float(nll), int(hits), int(keep.sum())


def _split_label(spec: str, default: str) -> tuple[str, str]:
    """``LABEL=DIR`` or ``DIR`` (label: ``default``). A path that exists as given is never split."""
    if "=" in spec and not Path(spec).exists():
        label, _, path = spec.partition("=")
        if label:
            return label, path
    return default, spec


def load_tokenizer_for(directory: Path, fallback: RxTokenizer | None) -> RxTokenizer:
    if (directory / "tokenizer.json").is_file():
        return RxTokenizer.from_pretrained(directory)
    return fallback or RxTokenizer.default()


def load_systems(rxt_specs: Sequence[str], baseline_specs: Sequence[str], device: torch.device) -> list[System]:
    from rxt.classic import DecoderLM
    from rxt.model import RxT

    systems: list[System] = []
    first_tokenizer: RxTokenizer | None = None
    for i, spec in enumerate(rxt_specs):
        label, path = _split_label(spec, "rxt" if len(rxt_specs) == 1 else f"rxt{i + 1}")
        model = RxT.from_pretrained(path).to(device).eval()
        tokenizer = load_tokenizer_for(Path(path), None)
        first_tokenizer = first_tokenizer or tokenizer
        systems.append(System(label, "rxt", str(path), model, tokenizer))
        systems.append(System(f"{label}/memory_reset", "rxt", str(path), model, tokenizer, use_memory=False,
                              ablation_of=label))
    for i, spec in enumerate(baseline_specs):
        label, path = _split_label(spec, "baseline" if len(baseline_specs) == 1 else f"baseline{i + 1}")
        model = DecoderLM.from_pretrained(path).to(device).eval()
        tokenizer = load_tokenizer_for(Path(path), first_tokenizer)
        systems.append(System(label, "stateless", str(path), model, tokenizer))
        systems.append(System(f"{label}/no_history", "stateless", str(path), model, tokenizer, use_history=False,
                              ablation_of=label))
    names = [s.name for s in systems]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ValueError(f"duplicate system labels {duplicates}; name them LABEL=DIR")
    for system in systems:
        if system.tokenizer.vocab_size > system.model.config.vocab_size:
            raise ValueError(f"{system.name}: tokenizer vocab {system.tokenizer.vocab_size} > model vocab "
                             f"{system.model.config.vocab_size}")
    return systems


# ------------------------------------------------------------------------------------------------------ data


def synthetic_episodes(distances: Sequence[int], per_k: int, seed: int, style: str,
                       chain: int = 1) -> dict[int, list[EpisodeRecord]]:
    return {
        k: generate_episodes(SyntheticDialogueConfig(num_episodes=per_k, distance=k, split="eval", seed=seed,
                                                     style=style, chain=chain))
        for k in distances
    }


def chitchat_conversations(count: int, max_turns: int = 8) -> list[EpisodeRecord]:
    """The last ``count`` held-out chitchat conversations (chunks of at most ``max_turns`` turns): the adapters'
    ``"eval"`` split, which no training source reads."""
    if count <= 0:
        return []
    from training.data.adapters import chitchat_episodes

    held_out = chitchat_episodes(max_turns=max_turns, split="eval")
    if count > len(held_out):
        raise ValueError(f"--chitchat: at most {len(held_out)} held-out conversations, got {count}")
    return held_out[-count:]


# ------------------------------------------------------------------------------------------------- evaluation


class RewardScorer:
    """`MemoryRetentionReward` (long_range mode, no cosine term) on the ids of one shared tokenizer."""

    def __init__(self, tokenizer: RxTokenizer) -> None:
        from training.rewards.composite import MemoryRetentionReward

        self.tokenizer = tokenizer
        self.reward = MemoryRetentionReward(bleu_weight=1.0, cosine_weight=0.0, length_weight=0.1,
                                            mode="long_range")
        self.settings = {"bleu_weight": 1.0, "cosine_weight": 0.0, "length_weight": 0.1, "mode": "long_range",
                         "scale": self.reward.scale}

    def _pair(self, text: str) -> tuple[torch.Tensor, torch.Tensor]:
        ids = self.tokenizer.encode(text)
        length = len(ids)
        return torch.tensor([ids or [self.tokenizer.pad_id]]), torch.tensor([length])

    def __call__(self, answer: str, reference: str, first: InteractionRecord) -> float:
        from training.rewards.base import RewardInput

        gen, gen_len = self._pair(answer)
        ref, ref_len = self._pair(reference)
        saved, saved_len = self._pair(f"{first.query} {first.answer}")
        value = self.reward(RewardInput(gen, gen_len, ref, ref_len, first_ids=saved, first_lengths=saved_len))
        return float(value[0])


def statement_turn(episode: EpisodeRecord) -> int:
    """The turn that stated the asked fact (turn 0 for episodes without ``facts`` metadata)."""
    for key, _, turn in episode.metadata.get("facts", ()):
        if key == episode.metadata.get("fact_key"):
            return int(turn)
    return 0


def recall_per_k(system: System, episodes: dict[int, list[EpisodeRecord]], max_new_tokens: int) -> dict[str, Any]:
    """Exact-match recall of each episode's last question, per k, and its mean over k."""
    recall: dict[str, float] = {}
    for k, items in episodes.items():
        answers = system.answers(items, max_new_tokens)
        hits = sum(recall_hit(a, e.metadata["fact_value"]) for a, e in zip(answers, items, strict=True))
        recall[str(k)] = hits / len(items) if items else 0.0
    return {"recall": recall, "recall_mean": sum(recall.values()) / len(recall) if recall else 0.0}


def evaluate_unseen_phrasing(system: System, episodes: dict[int, list[EpisodeRecord]],
                             max_new_tokens: int) -> dict[str, Any]:
    """Recall per k with the final question asked in `UNSEEN_PHRASINGS` (same episodes, same history)."""
    changed = {k: [unseen_phrasing(episode, i) for i, episode in enumerate(items)] for k, items in episodes.items()}
    return {"phrasings": list(UNSEEN_PHRASINGS), **recall_per_k(system, changed, max_new_tokens)}


def evaluate_after_a_question(system: System, episodes: dict[int, list[EpisodeRecord]],
                              max_new_tokens: int) -> dict[str, Any]:
    """Recall per k of a second fact, stated after a first one was asked and answered (chained episodes: the
    first segment is the benchmark's episode, then a fact of another group k turns before its question), as a
    person tells things and asks about them in one conversation."""
    return recall_per_k(system, episodes, max_new_tokens)


MISSES_KEPT = 16


def evaluate_recall(system: System, episodes: dict[int, list[EpisodeRecord]], scorer: RewardScorer,
                    max_new_tokens: int) -> dict[str, Any]:
    recall: dict[str, float] = {}
    reward: dict[str, float] = {}
    counts: dict[str, int] = {}
    examples: dict[str, dict[str, str]] = {}
    # the episodes not recalled (the first MISSES_KEPT per k; an ablation misses them all): what a person reads to
    # see why a model fails where it does
    misses: dict[str, list[dict[str, str]]] = {}
    for k, items in episodes.items():
        hits, rewards = 0, []
        for episode, answer in zip(items, system.answers(items, max_new_tokens), strict=True):
            turns = episode.turns
            question = turns[-1]
            hit = recall_hit(answer, episode.metadata["fact_value"])
            hits += hit
            rewards.append(scorer(answer, question.answer, turns[statement_turn(episode)]))
            record = {"question": question.query, "fact_value": episode.metadata["fact_value"], "answer": answer,
                      "hit": bool(hit)}
            if str(k) not in examples:
                examples[str(k)] = record
            if not hit and len(misses.setdefault(str(k), [])) < MISSES_KEPT:
                misses[str(k)].append(record)
        recall[str(k)] = hits / len(items) if items else 0.0
        reward[str(k)] = sum(rewards) / len(rewards) if rewards else 0.0
        counts[str(k)] = len(items)
    return {
        "recall": recall,
        "recall_mean": sum(recall.values()) / len(recall) if recall else 0.0,
        "reward": reward,
        "reward_mean": sum(reward.values()) / len(reward) if reward else 0.0,
        "episodes_per_k": counts,
        "examples": examples,
        "misses": misses,
    }


def evaluate_chitchat(system: System, conversations: Sequence[EpisodeRecord]) -> dict[str, Any]:
    nll, hits, tokens = 0.0, 0, 0
    for conversation in conversations:
        state = system.initial_state()
        for turn in conversation.turns:
            n, h, t = system.answer_nll(state, turn)
            nll, hits, tokens = nll + n, hits + h, tokens + t
            state = system.advance(state, turn)
    if tokens == 0:
        return {"answer_ppl": None, "answer_acc": None, "answer_loss": None, "answer_tokens": 0,
                "conversations": len(conversations)}
    loss = nll / tokens
    return {"answer_ppl": math.exp(loss) if loss < 700 else math.inf, "answer_acc": hits / tokens,
            "answer_loss": loss, "answer_tokens": tokens, "conversations": len(conversations)}


# ------------------------------------------------------------------------------------------------------ report


def environment(device: torch.device) -> dict[str, Any]:
    versions = {"python": platform.python_version(), "torch": torch.__version__}
    for package in ("rxnn-runtime", "tokenizers"):
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            versions[package] = None
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
    else:
        name = f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"
    return {"device": name, "versions": versions, "platform": platform.platform()}


def plot(doc: dict[str, Any], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=110)
    for name, result in doc["systems"].items():
        ks = sorted(int(k) for k in result["recall"])
        style = "--" if result.get("ablation_of") else "-"
        ax.plot(ks, [result["recall"][str(k)] for k in ks], style, marker="o", label=name)
    ax.set_xscale("log", base=2)
    ks = doc["settings"]["distances"]
    ax.set_xticks(ks, [str(k) for k in ks])
    ax.set_ylim(-0.05, 1.05)
    ax.set_xlabel("k (turns between the fact and the question)")
    ax.set_ylabel("exact-match recall")
    ax.set_title(f"Memory retention ({doc['device']})", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp)
    plt.close(fig)
    tmp.replace(path)
    return path


def _settings_of(args: argparse.Namespace) -> dict[str, Any]:
    return {"distances": list(args.distances), "episodes_per_k": args.episodes_per_k, "chitchat": args.chitchat,
            "style": args.style, "seed": args.seed, "split": "eval", "max_new_tokens": args.max_new_tokens,
            "decoding": "greedy", "history": "teacher-forced reference turns"}


def run(args: argparse.Namespace, argv: Sequence[str]) -> dict[str, Any]:
    device = torch.device(args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu"))
    torch.manual_seed(args.seed)
    systems = load_systems(args.rxt, args.baseline, device)
    scorer = RewardScorer(systems[0].tokenizer)
    episodes = synthetic_episodes(args.distances, args.episodes_per_k, args.seed, args.style)
    chained = synthetic_episodes(args.distances, args.episodes_per_k, args.seed, args.style, chain=2)
    conversations = chitchat_conversations(args.chitchat)
    results: dict[str, Any] = {}
    for system in systems:
        start = time.perf_counter()
        entry: dict[str, Any] = {
            "kind": system.kind, "path": system.path, "parameters": system.parameters(),
            "max_seq_len": system.max_seq_len, "ablation_of": system.ablation_of,
            "memory_reset_every_turn": system.kind == "rxt" and not system.use_memory,
            "reads_history": system.kind == "stateless" and system.use_history,
        }
        entry.update(evaluate_recall(system, episodes, scorer, args.max_new_tokens))
        entry["unseen_phrasing"] = evaluate_unseen_phrasing(system, episodes, args.max_new_tokens)
        entry["after_a_question"] = evaluate_after_a_question(system, chained, args.max_new_tokens)
        entry["chitchat"] = evaluate_chitchat(system, conversations)
        entry["seconds"] = round(time.perf_counter() - start, 2)
        results[system.name] = entry
        chat = entry["chitchat"]
        print(f"{system.name:>24}: recall {' '.join(f'k={k}:{v:.2f}' for k, v in entry['recall'].items())} | "
              f"unseen phrasing {entry['unseen_phrasing']['recall_mean']:.2f} | "
              f"after a question {entry['after_a_question']['recall_mean']:.2f} | "
              f"reward {entry['reward_mean']:.2f} | chitchat ppl {chat['answer_ppl']} acc {chat['answer_acc']}",
              flush=True)
    for path in args.merge:  # systems measured in another call (e.g. the baseline, trained on another machine)
        other = json.loads(Path(path).read_text())
        mismatched = {k for k in ("distances", "episodes_per_k", "style", "seed", "split", "max_new_tokens")
                      if other.get("settings", {}).get(k) != _settings_of(args).get(k)}
        if mismatched:
            raise SystemExit(f"--merge {path}: its settings differ in {sorted(mismatched)}")
        for name, entry in other["systems"].items():
            if name in results:
                raise SystemExit(f"--merge {path}: system {name!r} is measured here too")
            results[name] = {**entry, "merged_from": {"file": str(path), "device": other.get("device"),
                                                       "command": other.get("command")}}
    doc = {
        "benchmark": "memory_retention",
        **environment(device),
        "command": " ".join(["python", "benchmarks/memory_retention.py", *argv]),
        "settings": {**_settings_of(args), "reward": scorer.settings},
        "systems": results,
    }
    if args.out is not None:
        atomic_write_json(args.out, doc)
        print(f"wrote {args.out}")
        plot_path = args.plot or args.out.with_suffix(".png")
        try:
            print(f"wrote {plot(doc, plot_path)}")
        except ImportError as exc:
            print(f"no plot: {exc}", file=sys.stderr)
    return doc


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rxt", action="append", default=[], metavar="[LABEL=]DIR",
                        help="an RxT checkpoint (repeatable); its memory-reset ablation is added")
    parser.add_argument("--baseline", action="append", default=[], metavar="[LABEL=]DIR",
                        help="a stateless DecoderLM checkpoint (repeatable)")
    parser.add_argument("--distances", type=int, nargs="+", default=list(BENCHMARK_DISTANCES))
    parser.add_argument("--episodes-per-k", type=int, default=64)
    parser.add_argument("--chitchat", type=int, default=50, help="held-out chitchat conversations (0 = skip)")
    parser.add_argument("--style", choices=("long_range", "cumulative"), default="long_range")
    parser.add_argument("--seed", type=int, default=1234, help="seed of the held-out synthetic episodes")
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--plot", type=Path, default=None, help="PNG path (default: --out with .png)")
    parser.add_argument("--merge", action="append", default=[], metavar="JSON",
                        help="add the systems of an earlier result file of the same settings (repeatable)")
    args = parser.parse_args(argv)
    if not args.rxt and not args.baseline:
        parser.error("give at least one --rxt or --baseline checkpoint")
    if args.episodes_per_k < 1 or args.chitchat < 0 or args.max_new_tokens < 1:
        parser.error("--episodes-per-k and --max-new-tokens must be >= 1, --chitchat >= 0")
    if any(k < 0 for k in args.distances):
        parser.error("--distances must be >= 0")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    run(parse_args(argv), argv)
    return 0


if __name__ == "__main__":
    sys.exit(main())

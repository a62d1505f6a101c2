"""Stage 4: supervised memory-aware training, SMAT (``rxnn train smat --config file.yaml``).

Multi-turn episodes, batched turn by turn (`collate_episodes`). Starting from the documented initial memory::

    STM = initial
    for t in turns:
        logits_t = Decoder(interaction_t, memory = STM)       teacher-forced; loss on the answer tokens only
        STM      = MemAttn(STM, Encoder(interaction_t))       (not after the last turn: nothing reads it)

The loss is the token-weighted mean next-token cross-entropy over the answer tokens of all turns (labels are
-100 elsewhere). Rows whose episode has ended (``active`` False) contribute nothing: their labels are masked
and their STM is carried unchanged.

Truncated BPTT: gradients flow through at most ``bptt_depth`` memory updates. The STM is detached before an
update once ``bptt_depth`` updates have been chained since the last detach (fixed segments), so with depth 1 the
loss of turn t reaches only the update made after turn t-1, never the one after turn t-2; with depth 2 it
reaches both within a segment. ``bptt_depth = 0`` detaches always (no gradient into the memory system from
the memory path; the updates then run without autograd).

Staged unfreezing: ``unfreeze_schedule = [[step, [group, ...]], ...]`` (groups of `RxT.parameter_groups`:
"memory", "rest"); before optimizer step ``s`` exactly the groups of the last entry with ``step <= s`` are
trainable. Every parameter is in the optimizer (and in DDP) from the start; the schedule only flips
``requires_grad``. AdamW skips parameters without a gradient, so frozen ones do not move (no weight decay).

Metrics: ``accuracy`` (answer-token argmax accuracy) and ``perplexity`` (exp of the mean answer-token CE),
memory-aware numbers (the decoder reads only the STM written from earlier turns).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from itertools import pairwise
from pathlib import Path
from typing import Any

import torch
from torch import nn

from rxt.freezing import unfreeze
from rxt.model import RxT
from training.callbacks import Callback
from training.config import ConfigError, TrainConfig
from training.data.datasets import IGNORE_INDEX
from training.metrics import causal_lm_loss, token_counts
from training.plumbing import UnfreezeSchedule, groups_at
from training.stages.episode_stage import EpisodeTrainer, RxTObjective
from training.stages.smat_batched import (
    DecodeSteps,
    bucketed_permutation,
    is_stacked,
    smat_forward,
    stack_episode_turns,
    unstack_episode_turns,
)
from training.stages.stage_config import DataStageConfig
from training.trainer import StepOutput

#: `SMATStageConfig.dynamic_compile` values
DYNAMIC_COMPILE = ("off", "chain", "step")


@dataclass
class SMATStageConfig(DataStageConfig):
    """Stage-4 settings (the shared fields: `DataStageConfig`; ``model`` is usually stage 3's ``final/``)."""

    train: TrainConfig = field(default_factory=lambda: TrainConfig(run_name="smat"))
    max_len: int = 256
    max_turns: int | None = None
    bptt_depth: int = 2
    bucket_window: int = 32  # sort episodes by (turns, turn length) within this many global batches; 0 = off
    # Fixed step shapes: every batch is padded to ``max_turns`` turns and to the smallest of these widths that holds
    # its longest turn (``max_len`` is always the last). Then the step sees a few shapes only, so on CUDA it is
    # compiled (``train.compile`` null), each part once per width. Empty: a batch pads to its own longest turn
    # and the step stays eager unless ``train.compile`` is true.
    shape_buckets: list[int] = field(default_factory=list)
    # With shape_buckets: a batch is padded to the smallest of these turn counts that holds its longest episode
    # (``max_turns`` is always the last) instead of to ``max_turns`` itself. Batches grouped by turn count
    # (``bucket_window``) then decode few padding turns; the step sees one shape per (turn bucket, width).
    turn_buckets: list[int] = field(default_factory=list)
    # Without shape_buckets (which compile the whole step at static shapes), on CUDA: compile with automatic dynamic
    # shapes, so a few graphs (static at first, then dynamic in the sizes that changed; with and without a gradient
    # into the STM) serve every batch shape. "chain": only the memory-attention update (its norms, casts and gates
    # over the STM at every turn fused; encoder and decoder eager); "step": every part, as the static compile does;
    # "off": eager.
    dynamic_compile: str = "off"
    unfreeze_schedule: list[tuple[int, list[str]]] = field(
        default_factory=lambda: [(0, ["memory"]), (200, ["memory", "rest"])]
    )

    def __post_init__(self) -> None:
        def fail(name: str, limit: str) -> None:
            raise ConfigError(f"{type(self).__name__}.{name}={getattr(self, name)!r} must be {limit}")

        if isinstance(self.bptt_depth, bool) or self.bptt_depth < 0:
            fail("bptt_depth", ">= 0")
        if isinstance(self.bucket_window, bool) or self.bucket_window < 0:
            fail("bucket_window", ">= 0 (0 = no bucketing)")
        if isinstance(self.max_len, bool) or self.max_len < 2:
            fail("max_len", ">= 2")
        if not 0.0 <= self.val_fraction < 1.0:
            fail("val_fraction", "in [0, 1)")
        if self.max_turns is not None and self.max_turns < 1:
            fail("max_turns", ">= 1 or null")
        self.shape_buckets = [int(w) for w in self.shape_buckets]
        if self.shape_buckets:
            if self.max_turns is None:
                fail("max_turns", "set when shape_buckets is (every batch is padded to max_turns turns)")
            if any(w < 2 for w in self.shape_buckets) or any(b <= a for a, b in pairwise(self.shape_buckets)):
                fail("shape_buckets", "strictly increasing widths of at least 2 tokens")
            if self.shape_buckets[-1] > self.max_len:
                fail("shape_buckets", f"widths up to max_len={self.max_len}")
        self.turn_buckets = [int(n) for n in self.turn_buckets]
        if self.turn_buckets:
            if not self.shape_buckets:
                fail("turn_buckets", "used with shape_buckets (fixed step shapes)")
            if any(n < 1 for n in self.turn_buckets) or any(b <= a for a, b in pairwise(self.turn_buckets)):
                fail("turn_buckets", "strictly increasing turn counts of at least 1")
            if self.turn_buckets[-1] > self.max_turns:
                fail("turn_buckets", f"turn counts up to max_turns={self.max_turns}")
        self.unfreeze_schedule = [(int(s), list(g)) for s, g in self.unfreeze_schedule]
        steps = [s for s, _ in self.unfreeze_schedule]
        if not steps or steps[0] != 0:
            fail("unfreeze_schedule", "a non-empty list of [step, [groups]] whose first step is 0")
        if any(b <= a for a, b in pairwise(steps)):
            fail("unfreeze_schedule", "sorted by strictly increasing step")
        if any(not groups for _, groups in self.unfreeze_schedule):
            fail("unfreeze_schedule", "entries with at least one group")
        if self.dynamic_compile not in DYNAMIC_COMPILE:
            fail("dynamic_compile", f"one of {DYNAMIC_COMPILE}")


CONFIG_CLASS = SMATStageConfig


class SMATObjective(RxTObjective):
    """The stage-4 step as a module (so DDP sees a forward): ``forward(turns) -> dict`` of ``loss`` (mean
    answer-token CE), ``ce_sum``, ``tokens``, ``correct``. ``save_pretrained`` writes the RxT (and tokenizer).

    With ``record = True`` the STM read at each turn (with its autograd graph) is kept in ``self.stms``."""

    def __init__(self, model: RxT, bptt_depth: int, tokenizer: Any = None, *, reference: bool = False) -> None:
        super().__init__(model, tokenizer)
        self.bptt_depth = bptt_depth
        self.reference = reference
        self.stms: list[torch.Tensor] = []
        self.updates: list[torch.Tensor] = []
        self.steps = DecodeSteps()  # the decoder half of the restructured step; `SMATTrainer` compiles it

    def _update(self, stm: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor, active: torch.Tensor) -> torch.Tensor:
        new = self.model.update_memory(stm, ids, mask)
        return torch.where(active[None, :, None, None], new, stm)  # ended episodes keep their memory

    def forward(self, turns: Sequence[dict[str, torch.Tensor]] | dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The step: the restructured one (`training.stages.smat_batched`) unless ``self.reference`` is set.
        ``turns`` is a `collate_episodes` list or a `stack_episode_turns` dict."""
        if self.reference:
            return self.reference_forward(turns if not is_stacked(turns) else unstack_episode_turns(turns))
        batch = turns if is_stacked(turns) else stack_episode_turns(turns)
        out, stms, updates = smat_forward(self.model, batch, self.bptt_depth, record=self.record, steps=self.steps)
        self.stms, self.updates = stms, updates
        return out

    def reference_forward(self, turns: Sequence[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        """The per-turn loop of the module docstring, kept as the reference the restructured step is tested
        against (and selectable with ``reference=True``)."""
        model = self.model
        ids0 = turns[0]["input_ids"]
        device = ids0.device
        stm = model.initial_memory(ids0.shape[0]).to(device)
        self.stms, self.updates = [], []
        ce_sum = torch.zeros((), device=device)
        tokens = correct = 0
        chained = 0  # memory updates in the current gradient path of `stm`
        for t, turn in enumerate(turns):
            ids, mask = turn["input_ids"], turn["attention_mask"].bool()
            active = turn["active"].bool() & mask.any(dim=1)
            labels = turn["labels"].masked_fill(~active[:, None], IGNORE_INDEX)
            if self.record:
                self.stms.append(stm)
            logits = model(ids, stm, mask).logits
            hits, n = token_counts(logits, labels, shifted=True)
            ce_sum = ce_sum + causal_lm_loss(logits, labels) * n  # a mean over n tokens; 0 when n == 0
            tokens += n
            correct += hits
            if t == len(turns) - 1:
                break
            if self.bptt_depth == 0:
                with torch.no_grad():
                    stm = self._update(stm.detach(), ids, mask, active)
                continue
            if chained >= self.bptt_depth:
                stm, chained = stm.detach(), 0
            stm = self._update(stm, ids, mask, active)
            chained += 1
            if self.record:
                self.updates.append(stm)
        return {"loss": ce_sum / max(tokens, 1), "ce_sum": ce_sum, "tokens": torch.tensor(tokens),
                "correct": torch.tensor(correct)}


def compiled_parts(objective: SMATObjective) -> list[nn.Module]:
    """The RxT parts `compile_objective` compiles in place."""
    return [objective.model.encoder, objective.model.memory_attention]


def compile_chain(objective: SMATObjective, backend: str = "inductor") -> None:
    """Compile the memory-attention update alone, in place (``dynamic_compile: chain``): the chain's elementwise work
    (norms, casts, gates over the (L, B, S, D) STM at every turn) fused for any batch shape, automatic dynamic
    shapes (`compile_objective`'s ``dynamic``)."""
    objective.model.memory_attention.compile(dynamic=None, backend=backend)


def compile_objective(objective: SMATObjective, backend: str = "inductor", *, dynamic: bool = False) -> None:
    """Compile the restructured step's parts: the encoder and the memory attention in place, the decoder half as
    `DecodeSteps.compiled`. Static shapes (one graph per shape) by default: what `SMATTrainer` does on CUDA with
    ``shape_buckets`` (and benchmarks/smat_step.py with ``--compile``). ``dynamic``: automatic dynamic shapes
    (``dynamic=None``: static at first, then one recompile makes the sizes that changed symbolic; the weights stay
    static. ``dynamic=True`` would mark the weights' sizes dynamic too, and duck sizing then specialises a batch size
    or width equal to one of them: a graph per shape again)."""
    for part in compiled_parts(objective):
        part.compile(dynamic=None if dynamic else False, backend=backend)
    objective.steps = DecodeSteps.compiled(backend, dynamic=dynamic)


class SMATTrainer(EpisodeTrainer):
    """Stage-4 trainer. ``self.unwrapped_model`` is the `SMATObjective`; ``self.rxt`` the RxT."""

    # frozen groups (and rows/turns without updates) leave parameters without gradients under DDP
    ddp_find_unused_parameters = True

    def __init__(
        self,
        model: RxT,
        config: SMATStageConfig,
        train_dataset: Sequence[Any],
        eval_dataset: Sequence[Any] | None = None,
        callbacks: Sequence[Callback] = (),
        tokenizer: Any = None,
        pad_id: int | None = None,
    ) -> None:
        self.check_model(model, "SMATTrainer")
        self.unfreeze = UnfreezeSchedule(config.unfreeze_schedule, model.parameter_groups(),
                                         "SMATStageConfig.unfreeze_schedule")
        unfreeze(model)  # the optimizer (and DDP) get every parameter; the schedule then flips requires_grad
        self.settings = config  # read by the schedule before the base constructor sets it
        super().__init__(SMATObjective(model, config.bptt_depth, tokenizer), config, train_dataset, eval_dataset,
                         callbacks, self.resolve_pad_id(pad_id, tokenizer))
        # the parts are compiled in place (`compile_model`), so evaluation runs them through the plain objective
        # rather than a compiled copy of its Python loop over turns
        self.eval_model = self.unwrapped_model
        if config.dynamic_compile != "off" and not self._compiled and self.device.type == "cuda":
            if config.dynamic_compile == "chain":
                compile_chain(self.unwrapped_model, self.compile_backend)
            else:
                compile_objective(self.unwrapped_model, self.compile_backend, dynamic=True)
        self.apply_unfreeze_schedule(self.step)

    @property
    def trainable_groups(self) -> list[str] | None:
        return self.unfreeze.current

    def apply_unfreeze_schedule(self, step: int) -> list[str]:
        """Make exactly the scheduled groups trainable before optimizer step ``step``; returns them."""
        return self.unfreeze.apply(step)

    #: the torch.compile backend of the parts (tests use "aot_eager": the same graphs without code generation)
    compile_backend = "inductor"

    @property
    def auto_compile(self) -> bool:
        """Compiled on CUDA (``train.compile`` null) only with ``shape_buckets``. Without them every batch brings
        new shapes and torch.compile recompiles: on an H200 the nano recipe's smat-k2 ran 2 steps in 174 s so."""
        return bool(self.settings.shape_buckets)

    def _compiled_parts(self) -> list[nn.Module]:
        return compiled_parts(self.unwrapped_model)

    def compile_model(self, model: nn.Module) -> nn.Module:
        """Compile the encoder and the memory attention in place, and the objective's decoder half
        (`DecodeSteps.compiled`: the memory stack and projection, the decoder, the answer loss), not the step: the
        step loops over turns in Python, and one compiled memory-attention update serves every turn of the chain.
        Static shapes (``dynamic=False``): one graph per bucket width, never a dynamic one that loses the fusions
        (but the loss's answer count, which changes with every batch)."""
        shapes = (len(self.settings.shape_buckets) + 1) * (len(self.settings.turn_buckets) + 1)
        # per part: each shape in training and in evaluation (no grad), and a smaller last eval batch
        needed = 4 * shapes + 2
        torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, needed)
        compile_objective(self.unwrapped_model, self.compile_backend)
        return model

    def uncompile_model(self) -> None:
        for part in self._compiled_parts():
            part._compiled_call_impl = None
        self.unwrapped_model.steps = DecodeSteps()

    def epoch_permutation(self, epoch: int) -> torch.Tensor:
        """The Trainer's permutation, bucketed by turn count and turn length (``bucket_window``)."""
        perm = super().epoch_permutation(epoch)
        records = getattr(self.train_dataset, "records", None)
        if not self.settings.bucket_window or records is None:
            return perm
        if getattr(self, "_bucket_keys", None) is None:
            cap = self.settings.max_turns
            self._bucket_keys = [(min(len(r.turns), cap or len(r.turns)),
                                  max(len(t.query) + len(t.answer) for t in r.turns)) for r in records]
        generator = torch.Generator().manual_seed(self.cfg.seed + 7919 * (epoch + 1))
        return bucketed_permutation(perm, self._bucket_keys, self.step_samples, self.settings.bucket_window,
                                    generator)

    def collate(self, samples: list[Any]) -> Any:
        """Episodes stacked for the restructured step; the answer positions are listed here, on the host. With
        ``shape_buckets`` the batch is padded to its turn bucket (``max_turns`` without ``turn_buckets``) and its
        bucket's width."""
        turns = super().collate(samples)
        buckets = self.settings.shape_buckets
        if not buckets:
            return stack_episode_turns(turns, self.pad_id)
        longest = max(t["input_ids"].shape[1] for t in turns)
        width = next((w for w in buckets if w >= longest), self.settings.max_len)
        count = next((n for n in self.settings.turn_buckets if n >= len(turns)), self.settings.max_turns)
        return stack_episode_turns(turns, self.pad_id, num_turns=count, width=width)

    def _output(self, out: dict[str, torch.Tensor]) -> StepOutput:
        # Device tensors: the Trainer reads a step's metrics back once, together (no per-metric host sync).
        tokens = int(out["tokens"])
        metrics = {"accuracy": out["correct"].detach() / max(tokens, 1),
                   "perplexity": out["loss"].detach().float().exp()}
        return StepOutput(out["loss"], metrics, tokens)

    def compute_loss(self, model: nn.Module, batch: Any) -> StepOutput:
        self.apply_unfreeze_schedule(self.step)  # the step hook: runs before every forward of step `self.step`
        return self._output(model(batch))

    def evaluate_batch(self, model: nn.Module, batch: Any) -> StepOutput:
        return self._output(model(batch))


def run_stage(config: SMATStageConfig, *, resume: bool = False, callbacks: Sequence[Callback] = ()) -> Path:
    """Run stage 4 and return the ``final/`` model directory (RxT ``save_pretrained`` + ``tokenizer.json``)."""
    from training.stages.joint_lm import train_and_finish
    from training.stages.memory_attention_pretraining import prepare_episodes

    if not isinstance(config, SMATStageConfig):
        raise TypeError(f"run_stage needs a SMATStageConfig, got {type(config).__name__}")
    model, tokenizer, train, evals = prepare_episodes(config, "episode")
    trainer = SMATTrainer(model, config, train, evals, callbacks=callbacks, tokenizer=tokenizer)
    return train_and_finish(trainer, resume)


__all__ = ["CONFIG_CLASS", "DYNAMIC_COMPILE", "SMATObjective", "SMATStageConfig", "SMATTrainer", "compile_chain",
           "compile_objective",
           "compiled_parts",
           "groups_at", "run_stage"]

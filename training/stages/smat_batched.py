"""The SMAT step restructured: encoder once, memory-attention chain sequential, decoder once.

The per-turn loop (`SMATObjective.reference_forward`) runs decoder, encoder and memory attention turn after turn,
so an 18-turn step launches tens of thousands of small kernels. But only the memory-attention chain is
sequential:

- the encoder never reads the STM, so ``ED_t = Encoder(interaction_t)`` for every turn is one batched call over
  ``(N - 1) * B`` rows (the last turn's update is never read);
- ``STM_{t+1} = MemAttn(STM_t, ED_t)`` is the only recurrence (with the same truncated-BPTT detaches as the loop);
- the decoder of turn t reads only ``STM_t``, so all N turns decode in one call over ``N * B`` rows, each row
  reading its own turn's STM from the stacked ``(L, N * B, S, D)`` memory.

The loss is taken only where a target exists: `stack_episode_turns` (on the host, at collate time) lists the flat
positions of the answer tokens, so the LM head runs on those rows only and no step reads a count back from the
GPU. The result equals the loop's loss and gradients up to float rounding (tests/training/test_smat_batched.py).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from rxt.model import RxT
from training.data.datasets import IGNORE_INDEX
from training.metrics import upcast

#: keys of a stacked episode batch (`stack_episode_turns`)
STACKED_KEYS = ("input_ids", "attention_mask", "active", "labels", "target_index", "targets", "num_tokens",
                "all_active", "right_padded")


def is_stacked(batch: object) -> bool:
    return isinstance(batch, dict) and "target_index" in batch


def stack_episode_turns(turns: Sequence[dict[str, torch.Tensor]], pad_id: int = 0, *,
                        num_turns: int | None = None, width: int | None = None) -> dict[str, torch.Tensor]:
    """`collate_episodes` output (N dicts of (B, T_t)) -> one dict of stacked tensors, padded to one width T:

    ``input_ids`` (N, B, T), ``attention_mask`` (N, B, T) bool, ``active`` (N, B) bool (the episode is live at
    that turn and the row has tokens), ``target_index`` (K,) flat indices into the (N, B, T - 1) grid of
    next-token predictions whose label is not -100 in a live row, ``targets`` (K,) those labels, and
    ``labels`` (N, B, T - 1) the shifted targets (-100 where none), ``num_tokens`` (int K), ``all_active`` (a
    tuple of N bools: every row of turn t is live, so its memory update keeps no row's old STM), ``right_padded`` (a
    bool: no real token follows a padding one, so the decoder needs no padding mask). Runs on the host (the
    collate), so the step needs no device read-back. ``num_turns`` / ``width`` pad N and T to a fixed shape
    (inactive all-padding turns, padding columns), so a compiled step sees few distinct shapes.
    """
    if not turns:
        raise ValueError("stack_episode_turns: no turns")
    longest = max(t["input_ids"].shape[1] for t in turns)
    if width is not None and width < longest:
        raise ValueError(f"stack_episode_turns: width={width} is shorter than the batch's longest turn ({longest})")
    if num_turns is not None and num_turns < len(turns):
        raise ValueError(f"stack_episode_turns: num_turns={num_turns} is fewer than the batch's {len(turns)} turns")
    width = width or longest
    if num_turns is not None and num_turns > len(turns):  # inactive turns: all padding, never a target
        rows = turns[0]["input_ids"].shape[0]
        blank = {"input_ids": torch.full((rows, 1), pad_id, dtype=torch.long),
                 "attention_mask": torch.zeros(rows, 1, dtype=torch.bool),
                 "labels": torch.full((rows, 1), IGNORE_INDEX, dtype=torch.long),
                 "active": torch.zeros(rows, dtype=torch.bool)}
        turns = [*turns, *[blank] * (num_turns - len(turns))]
    if width < 2:
        raise ValueError(f"stack_episode_turns: turns of {width} token(s); a next-token target needs >= 2")

    def pad(x: torch.Tensor, value) -> torch.Tensor:
        return F.pad(x, (0, width - x.shape[1]), value=value)

    ids = torch.stack([pad(t["input_ids"], pad_id) for t in turns])
    mask = torch.stack([pad(t["attention_mask"].bool(), False) for t in turns])
    active = torch.stack([t["active"].bool() for t in turns]) & mask.any(dim=2)
    labels = torch.stack([pad(t["labels"], IGNORE_INDEX) for t in turns])
    labels = labels.masked_fill(~active[:, :, None], IGNORE_INDEX)[:, :, 1:]
    flat = labels.reshape(-1)
    index = (flat != IGNORE_INDEX).nonzero().squeeze(1)
    right_padded = bool((mask[..., 1:] <= mask[..., :-1]).all())  # no real token after a padding one
    return {"input_ids": ids, "attention_mask": mask, "active": active, "labels": labels, "target_index": index,
            "targets": flat[index], "num_tokens": int(index.numel()), "all_active": tuple(active.all(dim=1).tolist()),
            "right_padded": right_padded}


def unstack_episode_turns(batch: dict[str, torch.Tensor]) -> list[dict[str, torch.Tensor]]:
    """A stacked batch back as the per-turn list the reference loop reads (padded to the common width)."""
    labels = F.pad(batch["labels"], (1, 0), value=IGNORE_INDEX)  # undo the shift: position 0 is never a target
    return [{"input_ids": batch["input_ids"][t], "attention_mask": batch["attention_mask"][t],
             "labels": labels[t], "active": batch["active"][t]} for t in range(batch["input_ids"].shape[0])]


def bucketed_permutation(perm: torch.Tensor, keys: Sequence[tuple[int, int]], step_samples: int, window: int,
                         generator: torch.Generator) -> torch.Tensor:
    """``perm`` reordered so each global batch holds episodes of similar turn count and turn length.

    Within windows of ``window`` global batches (``window * step_samples`` entries of ``perm``), entries are sorted
    by ``keys[i]`` = (turns, longest turn), cut into global batches, and those batches are shuffled (``generator``)
    inside the window. The result is still a permutation, so the Trainer's data-order guarantees (resume, any world
    size) hold; a batch pads to its own longest episode instead of the longest in the whole data set."""
    size = window * step_samples
    out = []
    for start in range(0, len(perm), size):
        chunk = perm[start : start + size].tolist()
        chunk.sort(key=lambda i: keys[i])
        batches = [chunk[b : b + step_samples] for b in range(0, len(chunk), step_samples)]
        full = [b for b in batches if len(b) == step_samples]
        order = torch.randperm(len(full), generator=generator).tolist()
        out.extend(i for k in order for i in full[k])
        out.extend(i for b in batches if len(b) < step_samples for i in b)  # a partial tail stays last
    return torch.tensor(out, dtype=perm.dtype)


def smat_forward(model: RxT, batch: dict[str, torch.Tensor], bptt_depth: int, *, record: bool = False,
                 steps: DecodeSteps | None = None) -> tuple[dict[str, torch.Tensor], list[torch.Tensor], list[torch.Tensor]]:
    """The stage-4 step over a stacked batch: ``(out, stms, updates)``; ``steps``: the decoder half (None: eager).

    ``out`` holds ``loss`` (mean answer-token CE), ``ce_sum``, ``tokens`` (int) and ``correct`` (a device tensor:
    nothing is read back). ``stms[t]`` is the STM turn t's decoder read and ``updates[k]`` the STM written after turn k (only
    with ``record``; the graph is kept, as in the loop).
    """
    ids, mask, active = batch["input_ids"], batch["attention_mask"], batch["active"]
    n, b, width = ids.shape
    # host-known (collate): a turn whose rows are all live keeps no old STM, so its `where` (a full read and write
    # of the STM forward, two backward) is skipped; a batch without the key keeps every `where`
    all_active = batch.get("all_active") or (False,) * n
    stm = model.initial_memory(b).to(ids.device)
    stms = [stm]
    updates: list[torch.Tensor] = []
    if n > 1:
        enc_ids = ids[:-1].reshape((n - 1) * b, width)
        enc_mask = mask[:-1].reshape((n - 1) * b, width)
        with torch.set_grad_enabled(torch.is_grad_enabled() and bptt_depth > 0):
            encoded = model.encoder(enc_ids, enc_mask, validate=False).hidden_states
            encoded = encoded.unflatten(1, (n - 1, b))  # (L, N-1, B, T, D)
            # the L layers' weights stacked once for the whole chain (None: layer by layer): one gradient sum
            # over the turns per weight kind instead of one per turn and layer
            network = model.memory_attention
            weights = network.stacked_weights() if network.stackable() else None
        if weights is not None:  # every turn's attention bias at once; rows of ended/empty turns kept below
            device = ids.device.type
            dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else encoded.dtype
            biases = network.stacked_key_bias(mask[:-1], dtype)  # (N-1, L*B, 1, 1, T)
            with torch.set_grad_enabled(torch.is_grad_enabled() and bptt_depth > 0):
                # the main step's keys and values read only ED: every turn's in one call, before the chain
                keys, values = network.stacked_key_value(encoded, weights)
            # per-turn views by unbind: indexing keys[t] would write, in the backward, a zero-filled gradient of
            # the whole (N - 1)-turn stack for every turn; unbind's backward is one stack of the turns' gradients
            keys, values, biases = keys.unbind(0), values.unbind(0), biases.unbind(0)
        else:
            encoded_turns = encoded.unbind(1)  # the same, for the layer-by-layer path's encoded turns
        chained = 0  # memory updates in the current gradient path of `stm` (the loop's fixed segments)
        for t in range(n - 1):
            if bptt_depth == 0:
                stm = stm.detach()
            elif chained >= bptt_depth:
                stm, chained = stm.detach(), 0
            with torch.set_grad_enabled(torch.is_grad_enabled() and bptt_depth > 0):
                if weights is None:
                    new = network(stm, encoded_turns[t], mask[t])
                else:
                    new = network(stm, encoded[:, t], weights=weights, key_bias=biases[t],
                                  key_value=(keys[t], values[t]))
                # ended episodes keep their memory
                stm = new if all_active[t] else torch.where(active[t][None, :, None, None], new, stm)
            chained += 1
            stms.append(stm)
            if record and bptt_depth > 0:  # as the loop: depth 0 updates carry no graph to inspect
                updates.append(stm)
    steps = steps or DecodeSteps()
    hidden = steps.hidden(model, ids, mask, stms, bool(batch.get("right_padded", False)))
    ce_sum, correct = steps.loss(hidden, model.decoder.lm_head.weight, batch["target_index"], batch["targets"])
    tokens = int(batch["target_index"].numel())  # a shape, not a device value: no read-back
    out = {"loss": ce_sum / max(tokens, 1), "ce_sum": ce_sum, "tokens": tokens, "correct": correct}
    return out, (stms if record else []), updates


def decoder_hidden(model: RxT, ids: torch.Tensor, mask: torch.Tensor, stms: Sequence[torch.Tensor],
                   causal_only: bool) -> torch.Tensor:
    """The decoder over every turn at once, (N * B, T, D) final-norm states: row (t, i) reads ``stms[t]`` (L, B, S,
    D), the STM before turn t.

    ``causal_only`` (right-padded rows, host-checked at collate: `right_padded`): plain causal attention, no mask. A
    real token's past then holds no padding, so its output (and every loss term and gradient) is the masked one;
    only padding positions, which no target reads, see other padding. Flash attention takes the self-attention."""
    n, b, width = ids.shape
    memory = torch.stack(list(stms), dim=1).flatten(1, 2)  # (L, N*B, S, D): row (t, i) reads turn t's STM
    return model.decoder(
        ids.reshape(n * b, width), attention_mask=None if causal_only else mask.reshape(n * b, width),
        memory=model.decoder.project_memory(memory), compute_logits=False, validate=False,
    ).hidden


def answer_loss(hidden: torch.Tensor, lm_weight: torch.Tensor, target_index: torch.Tensor, targets: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed next-token cross-entropy and argmax hits at the answer positions only: ``hidden`` (N * B, T, D),
    ``target_index`` (K,) flat indices into its (N * B, T - 1) prediction grid (`stack_episode_turns`), ``targets``
    (K,). The LM head (``lm_weight``, (V, D)) runs on those K rows only."""
    rows = hidden[:, :-1].reshape(-1, hidden.shape[-1]).index_select(0, target_index)
    logits = upcast(F.linear(rows, lm_weight))
    ce_sum = F.cross_entropy(logits, targets, reduction="sum")
    correct = (logits.detach().argmax(dim=-1) == targets).sum()
    return ce_sum, correct


@dataclass(frozen=True)
class DecodeSteps:
    """The decoder half of the step (`decoder_hidden`, `answer_loss`), eager or compiled (`compiled`)."""

    hidden: Callable[..., torch.Tensor] = decoder_hidden
    loss: Callable[..., tuple[torch.Tensor, torch.Tensor]] = answer_loss

    @classmethod
    def compiled(cls, backend: str = "inductor", *, dynamic: bool = False) -> DecodeSteps:
        """Both compiled: the decoder with static shapes (one graph per bucket shape: the memory stack, its norm
        and projection fuse with the casts around them; ``dynamic``: automatic dynamic shapes), the loss with a
        dynamic answer count K (it changes with every batch; the vocabulary reductions do not), so one graph serves
        every batch of a shape."""
        loss = torch.compile(answer_loss, backend=backend)

        def dynamic_count_loss(hidden, lm_weight, target_index, targets):
            # only K symbolic (``dynamic=True`` would mark every size, the weight's too, and duck sizing would then
            # specialise a K equal to one of them)
            torch._dynamo.maybe_mark_dynamic(target_index, 0)
            torch._dynamo.maybe_mark_dynamic(targets, 0)
            return loss(hidden, lm_weight, target_index, targets)

        return cls(torch.compile(decoder_hidden, dynamic=None if dynamic else False, backend=backend),
                   dynamic_count_loss)


__all__ = ["STACKED_KEYS", "DecodeSteps", "answer_loss", "bucketed_permutation", "decoder_hidden", "is_stacked", "smat_forward",
           "stack_episode_turns", "unstack_episode_turns"]

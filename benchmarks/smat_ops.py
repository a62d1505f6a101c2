"""Torch ops dispatched by one SMAT step (forward, backward), on any device: the launch count the step is bound by.

Builds the step as `benchmarks/smat_step.py` does (random episodes of full turns, the restructured path unless
``--reference``, stacked on the host) for a preset at a small width (``--dim``, ffn 2x): the op count depends on
the depth, slots, turns and the code path, not on the width, so a CPU counts what a GPU would launch (to within
the CPU's decomposed kernels, e.g. RMSNorm as 5 ops). Ops are counted with a `TorchDispatchMode`; ``*_ops``
counts every op, ``*_compute_ops`` leaves out views (which launch nothing). The optimizer is not counted (fused on
the GPU). Also the median CPU wall time of a whole step (forward + backward)::

    OMP_NUM_THREADS=1 python benchmarks/smat_ops.py --preset nano --dim 64 --shape 128x18 --out /tmp/smat_ops.json

``--trainer`` counts whole `SMATTrainer` optimizer steps instead (the objective, then what the Trainer adds:
clipping, the fused optimizer, the metrics, split by op) and lists the ops that would make a CUDA step wait for the
device (`SYNC_OPS`). ``--traffic`` runs the preset at its full width under bf16 autocast and counts the bytes every
op reads and writes and its FLOPs, by op and by the code line that wrote it (a backward op: its forward's line),
extrapolated to the batch, with the roofline time on an H200 and the same for the train_throughput anchor: at
`nano` size a SMAT step is bound by memory traffic, not arithmetic, and this shows where the bytes go::

    OMP_NUM_THREADS=1 python benchmarks/smat_ops.py --preset nano --dim 64 --shape 8x18 --trainer --out /tmp/t.json
    python benchmarks/smat_ops.py --traffic --shape 128x18 --top 20 --out /tmp/traffic.json
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from torch.utils._python_dispatch import TorchDispatchMode

from benchmarks.mrl_ops import OpCounter, report
from benchmarks.smat_step import make_turns
from rxt.config import RxTConfig
from rxt.model import RxT
from training.stages.smat import SMATObjective
from training.stages.smat_batched import stack_episode_turns


class ComputeOpCounter(OpCounter):
    """`OpCounter` that also counts the ops that are not views (``compute``)."""

    def __init__(self) -> None:
        super().__init__()
        self.compute = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.compute += not func.is_view
        return super().__torch_dispatch__(func, types, args, kwargs)


def measure(preset: str, dim: int | None, batch: int, turns: int, length: int, bptt: int, reference: bool,
            iters: int) -> dict:
    torch.manual_seed(0)
    width = {"dim": dim, "ffn_hidden_dim": 2 * dim} if dim else {}
    model = RxT(RxTConfig.preset(preset, **width))
    objective = SMATObjective(model, bptt, reference=reference).train()
    data = make_turns(batch, turns, length, model.config.vocab_size, torch.device("cpu"))
    data = data if reference else stack_episode_turns(data)

    def step() -> None:
        objective.zero_grad(set_to_none=True)
        objective(data)["loss"].backward()

    step()  # warm
    row = {"preset": preset, "dim": model.config.dim, "path": "reference" if reference else "restructured",
           "batch": batch, "turns": turns, "turn_tokens": length, "bptt_depth": bptt}
    objective.zero_grad(set_to_none=True)
    for phase in ("forward", "backward"):
        counter = ComputeOpCounter()
        with counter:
            if phase == "forward":
                loss = objective(data)["loss"]
            else:
                loss.backward()
        row[f"{phase}_ops"], row[f"{phase}_compute_ops"] = counter.count, counter.compute
    row["step_ops"] = row["forward_ops"] + row["backward_ops"]
    row["step_compute_ops"] = row["forward_compute_ops"] + row["backward_compute_ops"]
    times = []
    for _ in range(iters):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    row["cpu_step_s"] = statistics.median(times)
    return row


#: ops that make the host wait for the GPU on CUDA: a value read back (``.item()``, ``int()``/``float()``/``bool()``
#: of a tensor), or an output whose size depends on the data (nonzero, boolean indexing, unique, ...). Device-to-host
#: copies (``.cpu()``, ``.tolist()``) cannot show on a CPU run; the step's code is read for them.
SYNC_OPS = ("aten::_local_scalar_dense", "aten::is_nonzero", "aten::equal", "aten::nonzero", "aten::masked_select",
            "aten::_unique", "aten::_unique2", "aten::unique_dim", "aten::unique_consecutive",
            "aten::repeat_interleave.Tensor")


class StepOpCounter(ComputeOpCounter):
    """`ComputeOpCounter` that also tallies ops by name and lists the ops that would sync a CUDA step
    (`SYNC_OPS`, and indexing with a boolean mask)."""

    def __init__(self) -> None:
        super().__init__()
        self.by_name: dict[str, int] = {}
        self.syncs: dict[str, int] = {}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = f"aten::{func._schema.name.split('::')[-1]}" + (f".{func._overloadname}"
                                                               if func._overloadname != "default" else "")
        self.by_name[name] = self.by_name.get(name, 0) + 1
        bool_index = func._schema.name in ("aten::index", "aten::index_put_", "aten::index_put") and any(
            isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in (args[1] if len(args) > 1 else ()) or ())
        if name in SYNC_OPS or name.split(".")[0] in SYNC_OPS or bool_index:
            self.syncs[name] = self.syncs.get(name, 0) + 1
        return super().__torch_dispatch__(func, types, args, kwargs)


def measure_trainer(preset: str, dim: int | None, batch: int, turns: int, length: int, bptt: int, steps: int
                    ) -> dict:
    """Ops dispatched by whole `SMATTrainer` optimizer steps (`Trainer._train_step` on collated batches: the step's
    data path without DataLoader workers, the objective's forward and backward, clipping, the optimizer, the
    metrics), split into the objective (``Trainer._forward_backward``) and the rest, with the rest by op name and
    the ops that would make a CUDA step wait (``sync_ops``). Steps after the first (warm) one are counted."""
    import tempfile

    from benchmarks.train_throughput import smat_episodes
    from training.config import TrainConfig
    from training.stages.smat import SMATStageConfig, SMATTrainer

    torch.manual_seed(0)
    width = {"dim": dim, "ffn_hidden_dim": 2 * dim} if dim else {}
    model = RxT(RxTConfig.preset(preset, **width))
    episodes = smat_episodes(batch, turns, length, model.config.vocab_size)
    with tempfile.TemporaryDirectory() as tmp:
        train = TrainConfig(batch_size=batch, max_steps=1000, warmup_steps=1, device="cpu", compile=False,
                            output_dir=tmp, log_every=1000, keep_last=0, num_workers=0)
        config = SMATStageConfig(train=train, bptt_depth=bptt, unfreeze_schedule=[(0, ["memory", "rest"])])
        trainer = SMATTrainer(model, config, episodes, pad_id=0)
        collated = trainer.collate(episodes)
        inner = StepOpCounter()
        forward_backward = trainer._forward_backward

        def counted(batch_, accum):
            with inner:
                return forward_backward(batch_, accum)

        trainer._train_step(iter([collated]))  # warm (the optimizer state is made here)
        trainer._forward_backward = counted
        inner.__init__()
        whole = StepOpCounter()
        with whole:
            for _ in range(steps):
                trainer._train_step(iter([collated]))
        trainer._read_back()
        trainer.close()
    rest = {k: (v - inner.by_name.get(k, 0)) / steps for k, v in whole.by_name.items()}
    rest = {k: v for k, v in sorted(rest.items(), key=lambda kv: -kv[1]) if v}
    return {"preset": preset, "dim": model.config.dim, "path": "trainer step (restructured)", "batch": batch,
            "turns": turns, "turn_tokens": length, "bptt_depth": bptt,
            "trainer_step_ops": whole.count / steps, "trainer_step_compute_ops": whole.compute / steps,
            "objective_ops": inner.count / steps, "objective_compute_ops": inner.compute / steps,
            "outside_objective_ops": (whole.count - inner.count) / steps,
            "outside_objective_compute_ops": (whole.compute - inner.compute) / steps,
            "outside_objective_by_op": rest,
            "sync_ops": {k: v / steps for k, v in whole.syncs.items()}}


#: the rough H200 rates the traffic mode's ``roofline_ms`` assumes: bf16 dense matmul FLOP/s reached by
#: mid-sized GEMMs (the peak is 989e12) and HBM bytes/s reached by elementwise kernels (the peak is 4.8e12)
H200_FLOPS, H200_BYTES = 600e12, 3.5e12


def _site(frames: list[tuple[str, int, str]], depth: int = 2) -> str:
    """``file:line < caller:line`` of the innermost frames under rxt/ or training/ (where the op is written)."""
    found = [f"{Path(f).name}:{line}" for f, line, _ in reversed(frames) if {"rxt", "training"} & set(Path(f).parts[-3:-1])]
    return " < ".join(found[:depth]) or "?"


class TrafficCounter(TorchDispatchMode):
    """Bytes moved (every input and output of each op that is not a view) and FLOPs (torch's flop formulas, SDPA
    counted too) per op name and per site: the code line that wrote the op, for backward ops the line of the
    forward op they differentiate (read from the autograd node's anomaly-mode traceback).

    RMSNorm runs as one fused kernel on CUDA but as five ops on the CPU: `fused_rms_norm` makes it one op here (read
    x, write y; backward: read grad and x, write the input's grad) so the CPU count models the GPU's."""

    def __init__(self) -> None:
        super().__init__()
        self.by_op: dict[str, list[float]] = {}
        self.by_site: dict[str, list[float]] = {}
        self.quiet = 0  # inside a modelled fused op: its own bytes are added by hand

    def add(self, name: str, site: str, nbytes: float, flops: float) -> None:
        for table, key in ((self.by_op, name), (self.by_site, site)):
            entry = table.setdefault(key, [0.0, 0.0])
            entry[0] += nbytes
            entry[1] += flops

    def site(self) -> str:
        import traceback

        node = torch._C._current_autograd_node()
        if node is not None:
            frames = []
            for line in "".join(node.metadata.get("traceback_", [])).splitlines():
                parts = line.strip().split('"')
                if line.strip().startswith("File") and len(parts) >= 3:
                    number = parts[2].split(",")[1].split()[-1]
                    frames.append((parts[1], int(number), ""))
            return "backward of " + _site(frames)
        return _site([(f.filename, f.lineno, f.name) for f in traceback.extract_stack()])

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        from torch.utils._pytree import tree_flatten
        from torch.utils.flop_counter import flop_registry, sdpa_flop_count

        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if self.quiet or func.is_view:
            return out
        tensors = [t for t in tree_flatten((args, kwargs, out))[0] if isinstance(t, torch.Tensor)]
        nbytes = sum(t.numel() * t.element_size() for t in tensors)
        name = func._schema.name
        if "scaled_dot_product" in name:  # the CPU kernels have no formula: attention = 2 bmm forward, 5 backward
            q, k, v = args[:3] if "backward" not in name else args[1:4]
            flops = sdpa_flop_count(q.shape, k.shape, v.shape) * (2.5 if "backward" in name else 1)
        else:
            formula = flop_registry.get(func._overloadpacket)
            flops = formula(*args, **kwargs, out_val=out) if formula is not None else 0
        self.add(name, self.site(), nbytes, flops)
        return out


def fused_rms_norm(counter: TrafficCounter):
    """`F.rms_norm` as one op for ``counter`` (see `TrafficCounter`), same values."""
    import torch.nn.functional as F

    original = F.rms_norm

    class Fused(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x, shape, weight, eps):
            counter.quiet += 1
            try:
                y = original(x, shape, weight, eps)
            finally:
                counter.quiet -= 1
            ctx.save_for_backward(x, weight)
            ctx.shape, ctx.eps = shape, eps
            counter.add("aten::_fused_rms_norm", counter.site(), 2 * x.numel() * x.element_size(), 0)
            return y

        @staticmethod
        def backward(ctx, grad):
            x, weight = ctx.saved_tensors
            counter.quiet += 1
            try:
                with torch.enable_grad():
                    xd = x.detach().requires_grad_()
                    wd = weight.detach().requires_grad_() if weight is not None else None
                    y = original(xd, ctx.shape, wd, ctx.eps)
                    grads = torch.autograd.grad(y, [t for t in (xd, wd) if t is not None], grad)
            finally:
                counter.quiet -= 1
            counter.add("aten::_fused_rms_norm_backward", counter.site(), 3 * x.numel() * x.element_size(), 0)
            return grads[0], None, grads[1] if weight is not None else None, None

    def rms_norm(x, normalized_shape, weight=None, eps=None):
        return Fused.apply(x, tuple(normalized_shape), weight, eps)

    return rms_norm


def counted_traffic(loss_fn) -> TrafficCounter:
    """The bytes and FLOPs of ``loss_fn()`` (under bf16 autocast) and its backward, RMSNorm as one fused op, backward
    ops attributed to their forward line (anomaly mode keeps each node's forward traceback)."""
    import torch.nn.functional as F

    counter = TrafficCounter()
    original = F.rms_norm
    F.rms_norm = fused_rms_norm(counter)
    try:
        with torch.autograd.set_detect_anomaly(True, check_nan=False), counter:
            with torch.autocast("cpu", dtype=torch.bfloat16):
                loss = loss_fn()
            loss.backward()
    finally:
        F.rms_norm = original
    return counter


def traffic_at(preset: str, batch: int, turns: int, length: int, bptt: int) -> TrafficCounter:
    """One restructured SMAT step (forward + backward) at the preset's full width under bf16 autocast, counted."""
    torch.manual_seed(0)
    model = RxT(RxTConfig.preset(preset))
    objective = SMATObjective(model, bptt).train()
    data = stack_episode_turns(make_turns(batch, turns, length, model.config.vocab_size, torch.device("cpu")))
    return counted_traffic(lambda: objective(data)["loss"])


def anchor_traffic_at(preset: str, rows: int, row_len: int) -> TrafficCounter:
    """One eager step of `benchmarks/train_throughput.py`'s anchor (a plain decoder of the preset's width and
    depth; full-vocabulary loss at every position) over ``rows`` random rows, counted as `traffic_at` counts."""
    import torch.nn.functional as F

    from rxt.classic import DecoderLM
    from rxt.config import TransformerConfig

    nano = RxTConfig.preset(preset)
    cfg = TransformerConfig(vocab_size=nano.vocab_size, dim=nano.dim, num_layers=nano.num_layers,
                            num_heads=nano.num_heads, max_seq_len=row_len, ffn_hidden_dim=nano.ffn_hidden_dim)
    torch.manual_seed(0)
    model = DecoderLM(cfg)
    ids = torch.randint(10, cfg.vocab_size, (rows, row_len))

    def loss() -> torch.Tensor:
        logits = model(ids).logits
        return F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), ids[:, 1:].flatten())

    return counted_traffic(loss)


def _extrapolated(one: TrafficCounter, two: TrafficCounter, batch: int) -> tuple[float, float, float]:
    """(GB, TFLOP, roofline ms) at ``batch`` from counts at batch 1 and 2 (linear in the batch)."""
    total = [0.0, 0.0, 0.0]
    for key in set(one.by_op) | set(two.by_op):
        a, b = one.by_op.get(key, [0.0, 0.0]), two.by_op.get(key, [0.0, 0.0])
        nbytes, flops = (a[i] + (b[i] - a[i]) * (batch - 1) for i in (0, 1))
        total[0] += nbytes / 1e9
        total[1] += flops / 1e12
        total[2] += max(nbytes / H200_BYTES, flops / H200_FLOPS) * 1e3
    return total[0], total[1], total[2]


def measure_traffic(preset: str, batch: int, turns: int, length: int, bptt: int, top: int) -> dict:
    """Memory traffic and FLOPs of one SMAT step at ``batch`` episodes, extrapolated linearly from 1 and 2 episodes
    (everything scales with the batch but the weights' own traffic, which the two points separate), and the
    step's roofline time at `H200_FLOPS` / `H200_BYTES` (each op bound by its bytes or its FLOPs, summed)."""
    one, two = (traffic_at(preset, b, turns, length, bptt) for b in (1, 2))

    def scaled(table_one, table_two, key):
        a, b = table_one.get(key, [0.0, 0.0]), table_two.get(key, [0.0, 0.0])
        return [a[i] + (b[i] - a[i]) * (batch - 1) for i in (0, 1)]

    def table(name: str) -> list[dict]:
        t1, t2 = getattr(one, name), getattr(two, name)
        rows = []
        for key in set(t1) | set(t2):
            nbytes, flops = scaled(t1, t2, key)
            rows.append({"name": key, "gb": nbytes / 1e9, "tflop": flops / 1e12,
                         "roofline_ms": max(nbytes / H200_BYTES, flops / H200_FLOPS) * 1e3})
        return sorted(rows, key=lambda r: -r["roofline_ms"])

    ops, sites = table("by_op"), table("by_site")
    rows, row_len = 512, 256  # the anchor's step in train_throughput.py
    gb, tflop, ms = _extrapolated(*(anchor_traffic_at(preset, r, row_len) for r in (1, 2)), rows)
    anchor = {"batch": f"{rows}x{row_len}", "tokens": rows * row_len, "traffic_gb": gb, "tflop": tflop,
              "roofline_ms": ms, "note": "eager (the benchmark compiles it, which fuses its elementwise ops)"}
    tokens = batch * turns * length
    return {"preset": preset, "dim": RxTConfig.preset(preset).dim, "path": "restructured", "batch": batch,
            "turns": turns, "turn_tokens": length, "bptt_depth": bptt, "dtype": "bf16 autocast (CPU)",
            "traffic_gb": sum(r["gb"] for r in ops), "tflop": sum(r["tflop"] for r in ops),
            "roofline_ms": sum(r["roofline_ms"] for r in ops),
            "roofline_rates": {"flops_per_s": H200_FLOPS, "bytes_per_s": H200_BYTES},
            "anchor": anchor, "per_token_vs_anchor": {
                "flops": sum(r["tflop"] for r in ops) / tokens / (tflop / anchor["tokens"]),
                "bytes": sum(r["gb"] for r in ops) / tokens / (gb / anchor["tokens"])},
            "by_op": ops[:top], "by_site": sites[:top]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="nano")
    parser.add_argument("--dim", type=int, default=64, help="override the preset's width (ffn 2x)")
    parser.add_argument("--shape", default="128x18", help="EPISODESxTURNS")
    parser.add_argument("--turn-tokens", type=int, default=48)
    parser.add_argument("--bptt-depth", type=int, default=4)
    parser.add_argument("--reference", action="store_true", help="the per-turn loop")
    parser.add_argument("--iters", type=int, default=3, help="timed steps (median); with --trainer: counted steps")
    parser.add_argument("--traffic", action="store_true",
                        help="bytes moved and FLOPs of one step at the preset's full width (bf16 autocast), by op and "
                             "by code line, and its roofline time on an H200 (ignores --dim)")
    parser.add_argument("--top", type=int, default=15, help="--traffic: rows kept per table")
    parser.add_argument("--trainer", action="store_true",
                        help="count whole SMATTrainer optimizer steps (objective, clipping, optimizer, metrics) and "
                             "the ops that would sync a CUDA step")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--append", type=Path, default=None, help="add the row to this file's records")
    parser.add_argument("--note", default=None)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    batch, turns = (int(x) for x in args.shape.split("x"))
    if args.traffic:
        row = measure_traffic(args.preset, batch, turns, args.turn_tokens, args.bptt_depth, args.top)
    elif args.trainer:
        row = measure_trainer(args.preset, args.dim, batch, turns, args.turn_tokens, args.bptt_depth, args.iters)
    else:
        row = measure(args.preset, args.dim, batch, turns, args.turn_tokens, args.bptt_depth, args.reference,
                      args.iters)
    row["device"] = "cpu"
    report(row, args, "benchmarks/smat_ops.py", argv, "smat_ops")
    return 0


if __name__ == "__main__":
    sys.exit(main())

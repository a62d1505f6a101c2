"""Training throughput of every `nano` stage as the recipe runs it, side by side with a plain-decoder anchor.

One run on one GPU measures, per stage, the optimizer step of the stage's own trainer (`Trainer._train_step`:
forward, backward, clipping, fused AdamW; the stage's own loader, so a change to a stage's data path is measured
as it is) after warm-up. Steps run back to back as in training, each bracketed by CUDA events, with no host sync
between them; the metrics are read back once after the timed steps, as a log step does. ``step_ms`` is the median.

- ``anchor``: a plain decoder of the nano's width and depth (`rxt.classic.DecoderLM`, d=256, 6 layers), batch
  512 x 256 random tokens already on the GPU, `torch.compile`, bf16 autocast, fused AdamW;
- ``joint`` / ``sft``: `JointLMTrainer` / `SFTTrainer` on packed rows (512 x 256, resident on the GPU, MLM drawn on
  the GPU), compiled as the trainer decides (``train.compile`` unset, as in the recipe); ``joint-before`` / ``sft-before``: the same trainer on the unpacked, padded dataset through
  the DataLoader, eager (the path the recipe ran before);
- ``smat``: `SMATTrainer` (restructured step), 128 episodes x 18 turns of 48 tokens (half query, half answer), enough
  of them that no measured step starts a new epoch (a new DataLoader). Their one shape is declared as the config's
  ``shape_buckets`` / ``max_turns``, so the trainer compiles the step on CUDA by itself (``--smat-compile`` forces
  it on or off); ``smat-eager``: the same without ``shape_buckets``, eager, as the nano recipe's SMAT configs run
  today; ``smat-before``: the per-turn loop (``reference=True``), eager; ``smat-recipe``: the same batches with the
  step's shape and compile settings (`SMAT_RUN_FIELDS`) read from a recipe config (``--smat-recipe``, the nano
  recipe's last SMAT step by default), ``--smat-set FIELD=JSON`` overriding them (to try a setting before the
  recipe takes it);
- ``mrl``: one IMPO update as `MRLTrainer` runs it, CUDA graphs off (the eager reference; the trainer's default on
  CUDA is ``mrl-graphs``): 128 episodes x 8 steps collected through the runtime (a fresh
  runtime per collection, every episode's queries queued before it connects, so the episodes are primed, prefilled,
  decoded and memory-updated together), rewards, then the PPO epochs; ``step_ms`` is collection + update, split in
  ``collect_ms`` / ``update_ms`` (the last timed step; also the runtime's and the rewards' share of the collection,
  its runtime steps, and the update's graph captures and replays); ``mrl-graphs``: the same with the collection
  runtime's decode steps, prefills and memory updates as CUDA graphs (``MRLConfig.cuda_graphs``, captured once per
  shape by the executor the trainer keeps) and, unless ``--mrl-update-graphs off``, the IMPO update's optimizer
  steps at static shapes, each shape's whole step a CUDA graph (``MRLConfig.update_cuda_graphs``);
  ``--mrl-sample-stacks`` adds where the collection's threads spent their time (`benchmarks/stack_sampler.py`);
- ``baseline`` / ``baseline-before``: the stateless `BaselineLMTrainer` on packed / padded histories.

``real_tokens_per_s`` counts non-pad tokens the step trains on (input tokens, not only targets; for MRL the
generated action tokens); ``kernels_per_step`` and ``gpu_busy_fraction`` (summed kernel time / step time) come
from torch.profiler over a few steps; ``vs_anchor`` is real tokens/s over the anchor's in the same run. The
synthetic dialogues of `training.data.synthetic` (tokenised with the packaged tokenizer) stand in for the recipe
data. The earlier ``mini``/``dense-100m`` MFU records are carried over from the previous file under ``mfu``.

    python benchmarks/train_throughput.py --out benchmarks/results/train_throughput.json
    python benchmarks/train_throughput.py --smoke --out /tmp/tt.json          # CPU smoke: tiny sizes, few steps

``--deadline-s S``: no stage (nor profile) starts after S seconds; skipped stages are recorded as such. The file is
rewritten as soon as each stage is timed, so an outer ``timeout`` loses nothing that was measured.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.bench_utils import RESULTS_DIR, inside, print_top_kernels, time_ms, top_kernels
from benchmarks.stack_sampler import StackSampler
from rxt.atomic_io import atomic_write_json
from rxt.classic import DecoderLM
from rxt.config import RxTConfig, TransformerConfig
from rxt.model import RxT
from rxt.tokenizer import RxTokenizer
from training.config import TrainConfig

STAGES = ("anchor", "joint", "sft", "smat", "mrl", "baseline", "joint-before", "sft-before", "smat-before",
          "baseline-before", "mrl-graphs", "smat-eager", "smat-recipe")

#: the `SMATStageConfig` fields that decide how a SMAT step runs (its shapes and its compilation): ``smat-recipe``
#: takes them from the recipe's config file
SMAT_RUN_FIELDS = ("max_turns", "shape_buckets", "turn_buckets", "dynamic_compile", "bucket_window")


#: what --smoke sets: the tiny preset, a few rows and steps, on the CPU
SMOKE = {"preset": "tiny", "rows": 4, "row_len": 64, "smat": "2x3", "turn_tokens": 16, "mrl": "2x2", "documents": 80,
         "warmup": 0, "iters": 2, "iters_before": 1, "mrl_iters": 1, "mrl_warmup": 0, "num_workers": 0,
         "device": "cpu"}


def _train_cfg(args, tmp: str, batch: int, compile_: bool | None) -> TrainConfig:
    """``compile_``: None = the trainer's own choice on CUDA (what the recipe gets: ``train.compile`` unset),
    False = eager (the old paths), True = compiled."""
    cuda = args.device == "cuda"
    return TrainConfig(batch_size=batch, max_steps=10_000, warmup_steps=10, precision="bf16" if cuda else "fp32",
                       device=args.device, compile=compile_ if cuda else False, log_every=10_000, output_dir=tmp,
                       keep_last=0, lr=3e-4, num_workers=args.num_workers)  # the nano configs' DataLoader workers


def _sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _profile(step, flush, device, steps: int, top: int = 0) -> tuple[float, float, list[dict] | None]:
    """Kernels and GPU-busy ms per step over ``steps`` profiled steps, and (``top`` > 0) the `top_kernels`; on the
    CPU (only asked for ``top``) the CPU ops by self time, and no kernel figures."""
    from torch.profiler import ProfilerActivity, profile

    cuda = device.type == "cuda"
    with profile(activities=[ProfilerActivity.CUDA if cuda else ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            step()
        flush()
        _sync(device)
    ranked = top_kernels(prof, top, steps) if top else None
    if not cuda:
        return None, None, ranked
    kernels = [e for e in prof.events() if e.device_type.name == "CUDA"]
    return len(kernels) / steps, sum(e.device_time for e in kernels) / 1e3 / steps, ranked


def measure(name: str, step, real_tokens: float, device, warmup: int, iters: int, profile_steps: int,
            extra: dict | None = None, flush=lambda: None, report=lambda row: None, may_profile=lambda: True,
            top: int = 0) -> dict:
    """Median time of ``step`` as training runs it: steps back to back, each bracketed by CUDA events, no host
    sync between them (the trainer reads its metrics back only at log steps: ``flush``, once after the timed
    steps, as a log step would). ``report(row)`` gets the row after the timing and again after the profile, which
    runs only if ``may_profile()`` says so once the timing is done (a deadline). ``top`` > 0 adds the row's
    ``top_kernels`` (`benchmarks.bench_utils.top_kernels`: on the CPU from a CPU profile of its own)."""
    t0 = time.perf_counter()
    for _ in range(warmup):
        step()
    flush()
    _sync(device)
    warm_s = time.perf_counter() - t0
    step_s = time_ms(step, device, 0, iters, sync_each=False) / 1e3
    flush()
    row = {"stage": name, "step_ms": step_s * 1e3, "real_tokens_per_step": real_tokens,
           "real_tokens_per_s": real_tokens / step_s, "warmup_s": warm_s, "iters": iters,
           **{k: v() if callable(v) else v for k, v in (extra or {}).items()},  # e.g. compiled: after a fallback
           "kernels_per_step": None, "gpu_busy_ms": None, "gpu_busy_fraction": None}
    report(row)
    if profile_steps and (device.type == "cuda" or top):
        if may_profile():
            kernels, busy_ms, ranked = _profile(step, flush, device, profile_steps, top)
            if kernels is not None:
                row.update(kernels_per_step=kernels, gpu_busy_ms=busy_ms, gpu_busy_fraction=busy_ms / (step_s * 1e3))
            if ranked is not None:
                row["top_kernels"] = ranked
                print_top_kernels(ranked, name)
        else:
            row["profile"] = "skipped: --deadline-s reached"
        report(row)
    print(json.dumps(row), flush=True)
    return row


# ------------------------------------------------------------------------------------------------ stages


def anchor(args, device):
    nano = RxTConfig.preset(args.preset)
    cfg = TransformerConfig(vocab_size=nano.vocab_size, dim=nano.dim, num_layers=nano.num_layers,
                            num_heads=nano.num_heads, max_seq_len=args.row_len, ffn_hidden_dim=nano.ffn_hidden_dim)
    model = DecoderLM(cfg).to(device)
    ids = torch.randint(10, cfg.vocab_size, (args.rows, args.row_len), device=device)
    cuda = device.type == "cuda"
    opt = torch.optim.AdamW(model.parameters(), lr=3e-4, fused=cuda)

    def loss_fn():
        logits = model(ids).logits
        return torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1).float(), ids[:, 1:].flatten())

    compiled = torch.compile(loss_fn) if cuda else loss_fn

    last = [torch.zeros(())]

    def step():
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cuda):
            loss = compiled()
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        last[0] = loss.detach()  # read back by `flush`, as the trainers read theirs at log steps

    return step, lambda: float(last[0]), ids.numel(), {"parameters": sum(p.numel() for p in model.parameters()),
                               "batch": f"{args.rows}x{args.row_len}", "compiled": cuda}


def _episodes(count: int, turns: int, seed: int):
    from training.data.synthetic import SyntheticDialogueConfig, generate_episodes

    return generate_episodes(SyntheticDialogueConfig(num_episodes=count, num_turns=turns, seed=seed))


def _trainer_step(trainer):
    """``(step, flush)``: the trainer's own optimizer step on its own data path (`Trainer._train_step`, whatever
    loader the stage has), and its metrics read-back (`Trainer._read_back`, what a log step does)."""
    batches = [trainer._loader()]

    def step():
        try:
            return trainer._train_step(batches[0])
        except StopIteration:  # the epoch ran out: start the next pass
            trainer.position = 0
            batches[0] = trainer._loader()
            return trainer._train_step(batches[0])

    return step, trainer._read_back


def _real_tokens_of(trainer) -> float:
    from training.data.packing import PackedRows

    data = trainer.train_dataset
    if isinstance(data, PackedRows):
        return data.real_tokens / len(data) * trainer.cfg.batch_size
    n = min(len(data), 2048)
    return sum(len(data[i]["input_ids"]) for i in range(n)) / n * trainer.cfg.batch_size


def joint_like(kind: str, packed: bool, args, device, tok, tmp):
    from training.data.datasets import JointLMDataset
    from training.data.packing import pack_dataset
    from training.data.records import TextRecord
    from training.heads import MLMHead
    from training.stages.joint_lm import JointLMModel, JointLMTrainer, freeze_unused_memory_system
    from training.stages.sft import MaskedInteractionDataset, SFTTrainer

    torch.manual_seed(0)
    rxt = RxT(RxTConfig.preset(args.preset, vocab_size=tok.vocab_size))
    freeze_unused_memory_system(rxt)  # as run_stage: stages 1-2 never run memory attention or the STM
    head = MLMHead(rxt.config.dim, tok.vocab_size, tie_to=rxt.embedding)
    model = JointLMModel(rxt, head, tok, encoder_noise_std=0.15)
    interactions = [t for e in _episodes(args.documents // 4, 3, 1) for t in e.turns]
    if kind == "joint":
        dataset = JointLMDataset([TextRecord(f"{t.query} {t.answer}") for t in interactions], tok, args.row_len)
        docs = dataset
    else:
        dataset = MaskedInteractionDataset(interactions, tok, args.row_len)
        docs = dataset.interactions
    data = pack_dataset(docs, args.row_len, source="synthetic", max_len=rxt.config.max_seq_len,
                        special_ids=tok.special_ids, pad_id=tok.pad_id) if packed else dataset
    cfg = _train_cfg(args, tmp, args.rows, None if packed else False)
    common = dict(pad_id=tok.pad_id, mask_prob=0.15)
    trainer = JointLMTrainer(model, cfg, data, **common) if kind == "joint" else \
        SFTTrainer(model, cfg, data, answer_id=tok.answer_id, **common)
    extra = {"batch": f"{args.rows} rows x {args.row_len}" if packed else f"{args.rows} padded",
             "packed": packed, "compiled": lambda: trainer._compiled}
    if packed:
        extra["pack_fill"] = data.fill
    return (*_trainer_step(trainer), _real_tokens_of(trainer), extra)


def smat_episodes(count: int, turns: int, length: int, vocab: int, seed: int = 0) -> list[list[dict]]:
    """``count`` random episodes of ``turns`` full turns of ``length`` tokens, as the SMAT trainer's dataset holds
    them: the first half of a turn is the query (labels -100), the second the answer."""
    g = torch.Generator().manual_seed(seed)
    episodes = []
    for _ in range(count):
        ep = []
        for _ in range(turns):
            ids = torch.randint(10, vocab, (length,), generator=g)
            labels = ids.clone()
            labels[: length // 2] = -100
            ep.append({"input_ids": ids, "labels": labels, "query_ids": ids[: length // 2]})
        episodes.append(ep)
    return episodes


def recipe_smat_settings(path: Path, overrides: list[str]) -> dict:
    """The `SMAT_RUN_FIELDS` of the SMAT config at ``path`` (those it sets), with ``FIELD=JSON`` overrides."""
    import yaml

    raw = yaml.safe_load(Path(path).read_text()) or {}
    settings = {k: raw[k] for k in SMAT_RUN_FIELDS if k in raw}
    for item in overrides:
        field_name, sep, value = item.partition("=")
        if not sep or field_name not in SMAT_RUN_FIELDS:
            raise ValueError(f"--smat-set {item!r}: expected FIELD=JSON with FIELD one of {SMAT_RUN_FIELDS}")
        try:
            settings[field_name] = json.loads(value)
        except json.JSONDecodeError as exc:
            raise ValueError(f"--smat-set {item!r}: the value is not JSON ({exc.msg})") from None
    return settings


def smat(variant: str, args, device, tok, tmp):
    """``variant``: "fixed" (``smat``: the batches' one shape declared as ``shape_buckets``, so the trainer compiles the
    step by itself), "eager" (``smat-eager``: no ``shape_buckets``, as the nano recipe's SMAT configs run today:
    eager) or "before" (``smat-before``: the per-turn loop)."""
    from training.stages.smat import SMATStageConfig, SMATTrainer

    before = variant == "before"

    torch.manual_seed(0)
    rxt = RxT(RxTConfig.preset(args.preset, vocab_size=tok.vocab_size))
    batch, turns = (int(x) for x in args.smat.split("x"))
    length = args.turn_tokens
    episodes = smat_episodes(batch, turns, length, tok.vocab_size)
    # As many global batches as the stage runs (warm-up, timed and profiled steps, one spare): the loader then runs
    # as in training, one DataLoader per epoch whose workers collate ahead of the step. With one batch's episodes
    # every step ended an epoch and started a new DataLoader (4 fresh worker processes, no batch prefetched), host
    # time that the H200 run at 886e194 counted as SMAT's. The same episodes repeat: only the shapes matter here.
    steps = args.warmup + (args.iters_before if before else args.iters) + args.profile_steps + 1
    episodes = episodes * steps
    # the trainer's own compile choice at the fixed shapes (train.compile unset, as in the recipe), unless
    # --smat-compile; the other variants eager
    compile_ = False if variant != "fixed" else (True if args.smat_compile == "on" else False
                                                 if args.smat_compile == "off" else None)
    # every episode here has `turns` turns of `length` tokens: declared as the step's one fixed shape, the trainer
    # compiles (static shapes) on CUDA by itself, as it would for a recipe config that sets shape_buckets
    shapes = dict(shape_buckets=[length], max_turns=turns) if variant == "fixed" else {}
    if variant == "recipe":
        shapes, compile_ = recipe_smat_settings(args.smat_recipe, args.smat_set), None
    config = SMATStageConfig(train=_train_cfg(args, tmp, batch, compile_), bptt_depth=4,
                             unfreeze_schedule=[(0, ["memory", "rest"])], **shapes)
    trainer = SMATTrainer(rxt, config, episodes, tokenizer=tok)
    trainer.unwrapped_model.reference = before  # the loop unstacks the collated batch itself
    probe_s = None
    if variant == "recipe":
        # The recipe's batches come in many shapes (turn counts, turn lengths): one optimizer step on another shape
        # first, so that a compile with dynamic shapes has met a second shape (and recompiled with its sizes
        # symbolic), or static shape buckets their second bucket, before the timing, as in training.
        t0 = time.perf_counter()
        other = smat_episodes(batch, max(turns - 2, 1), max(length - 8, 4), tok.vocab_size, seed=1)
        trainer._train_step(iter([trainer.collate(other)]))
        trainer._read_back()
        _sync(device)
        probe_s = time.perf_counter() - t0

    def path() -> str:
        if before:
            return "per-turn loop (reference)"
        how = ("compiled" if trainer._compiled else f"dynamic_compile={config.dynamic_compile}"
               if config.dynamic_compile != "off" and device.type == "cuda" else "eager")
        return f"restructured, {how}, " + ("fixed shapes (shape_buckets)" if config.shape_buckets else "no shape_buckets")

    extra = {"batch": f"{batch}x{turns} turns of {length}", "bptt_depth": 4, "compiled": lambda: trainer._compiled,
             "path": path, "shape_buckets": config.shape_buckets or None}
    if variant == "recipe":
        extra.update(recipe=str(args.smat_recipe), settings={k: getattr(config, k) for k in SMAT_RUN_FIELDS},
                     overrides=list(args.smat_set), other_shape_step_s=probe_s)
    return (*_trainer_step(trainer), batch * turns * length, extra)


def mrl(args, device, tok, tmp, graphs: bool | None = None):
    from training.mrl.curriculum import CurriculumStage, MRLConfig
    from training.mrl.trainer import MRLTrainer

    torch.manual_seed(0)
    rxt = RxT(RxTConfig.preset(args.preset, vocab_size=tok.vocab_size))
    episodes_n, steps = (int(x) for x in args.mrl.split("x"))
    stage = CurriculumStage(steps=steps, episodes_per_epoch=episodes_n)
    config = MRLConfig(train=TrainConfig(run_name="mrl", warmup_steps=0, lr=1e-4, device=args.device,
                                         output_dir=tmp),
                       curriculum=[stage], batch_episodes=episodes_n, minibatch_size=32, ppo_epochs=2,
                       max_new_tokens=min(48, rxt.config.max_seq_len // 4), eval_episodes=0,  # tiny: 16
                       reward={"bleu_weight": 1.0, "cosine_weight": 1.0, "length_weight": 0.1},  # the nano recipe's
                       cuda_graphs=args.mrl_cuda_graphs if graphs is None else graphs,
                       update_cuda_graphs={"on": True, "off": False}.get(args.mrl_update_graphs))
    trainer = MRLTrainer(config, rxt, tok)
    trainer.runtime().dispose()  # builds the executor every collection reuses (counted below), captures nothing
    episodes = trainer.stage_episodes(stage, 0, count=episodes_n)
    # action tokens, collection seconds, update seconds (of the last step), then the last step's details
    tokens: list = [0.0, 0.0, 0.0, {}]
    engine_steps = [0]

    def step():
        sampler = StackSampler(interval=0.005) if args.mrl_sample_stacks else None  # 5 ms: ~1% overhead
        executor = trainer.executor
        if "launch" not in vars(executor):  # count the runtime's device steps (once: the executor is reused)
            launch = executor.launch

            def counted(*a, **k):
                engine_steps[0] += 1
                return launch(*a, **k)

            executor.launch = counted
        engine_steps[0] = 0
        t0 = time.perf_counter()
        if sampler:
            sampler.start()
        logs = trainer.collect(episodes, stage, reset_prob=1.0)  # ends with every turn committed (host-side)
        if sampler:
            sampler.stop()
        t1 = time.perf_counter()
        trainer.update(logs)  # ends reading its statistics back: the device is done
        graphed = trainer.learner.graphed
        details = {"collect_runtime_ms": trainer.collect_timing.get("runtime_s", 0.0) * 1e3,
                   "rewards_ms": trainer.collect_timing.get("rewards_s", 0.0) * 1e3,
                   "collect_engine_steps": engine_steps[0],
                   "update_graph_captures": graphed.captures if graphed else None,
                   "update_graph_replays": graphed.replays if graphed else None,
                   "update_graphs_failed": len(graphed.failed) if graphed else None,
                   "collect_graphs": executor.graph_count(),
                   **{f"update_{k[:-2]}_ms": v * 1e3 for k, v in trainer.learner.timing.items()}}
        if sampler:
            details["collect_stacks"] = sampler.report(top=25)
        tokens[:] = [sum(len(s.action_ids) for log in logs for s in log.steps), t1 - t0, time.perf_counter() - t1,
                     details]

    what = ("collection (all episodes in one runtime batch) + rewards + IMPO update (minibatch 32, 2 PPO epochs, "
            "48 new tokens, the recipe's reward)")
    impo = config.impo_config(device)
    return step, lambda: None, tokens, {"batch": f"{episodes_n} episodes x {steps} steps", "what": what,
                                        "cuda_graphs": config.cuda_graphs and device.type == "cuda",
                                        "update_cuda_graphs": impo.cuda_graphs and device.type == "cuda"}


def baseline(packed: bool, args, device, tok, tmp):
    from rxt.classic import matched_decoder_config
    from training.data.packing import pack_dataset
    from training.stages.baseline_lm import BaselineLMModel, BaselineLMTrainer, HistoryDataset

    torch.manual_seed(0)
    rxt_cfg = RxTConfig.preset(args.preset, vocab_size=tok.vocab_size)
    lm = DecoderLM(matched_decoder_config(rxt_cfg, args.row_len)[0])
    dataset = HistoryDataset(_episodes(args.documents // 4, 4, 2), tok, args.row_len)
    data = pack_dataset(dataset, args.row_len, source="synthetic", max_len=lm.config.max_seq_len,
                        pad_id=tok.pad_id) if packed else dataset
    cfg = _train_cfg(args, tmp, args.rows, None if packed else False)
    trainer = BaselineLMTrainer(BaselineLMModel(lm, tok), cfg, data, pad_id=tok.pad_id)
    extra = {"batch": f"{args.rows} rows x {args.row_len}" if packed else f"{args.rows} padded", "packed": packed,
             "compiled": lambda: trainer._compiled}
    return (*_trainer_step(trainer), _real_tokens_of(trainer), extra)


def run_stage(name: str, args, device, tok, tmp, report, may_profile=lambda: True) -> dict:
    if name == "anchor":
        step, flush, tokens, extra = anchor(args, device)
    elif name in ("joint", "joint-before", "sft", "sft-before"):
        step, flush, tokens, extra = joint_like(name.split("-")[0], not name.endswith("before"), args, device, tok,
                                                tmp)
    elif name in ("smat", "smat-before", "smat-eager", "smat-recipe"):
        variant = {"smat": "fixed", "smat-before": "before", "smat-eager": "eager", "smat-recipe": "recipe"}[name]
        step, flush, tokens, extra = smat(variant, args, device, tok, tmp)
    elif name in ("mrl", "mrl-graphs"):  # mrl-graphs: the collection runtime with CUDA graphs, whatever the flag
        step, flush, holder, extra = mrl(args, device, tok, tmp, args.mrl_cuda_graphs or name == "mrl-graphs")

        timed: list = []  # the last timed step's figures, kept: the profiled step after it overwrites `holder`

        def mrl_report(row):
            if not timed:
                timed.extend([holder[0], holder[1], holder[2], dict(holder[3])])
            row["real_tokens_per_step"] = timed[0]  # the action tokens the update trained on
            row["real_tokens_per_s"] = timed[0] / (row["step_ms"] / 1e3)
            row["collect_ms"], row["update_ms"] = timed[1] * 1e3, timed[2] * 1e3  # the split of the last step
            row.update(timed[3])  # its details: runtime vs rewards, engine steps, graphs, sampled stacks
            report(row)

        # an update is seconds long: warm-up and profile steps are whole updates (--mrl-warmup, --mrl-profile)
        row = measure(name, step, 0.0, device, args.mrl_warmup, args.mrl_iters,
                      args.mrl_profile, extra, flush, mrl_report, may_profile, args.top_kernels)
        return row
    else:
        step, flush, tokens, extra = baseline(not name.endswith("before"), args, device, tok, tmp)
    iters = args.iters_before if name.endswith("before") else args.iters
    return measure(name, step, tokens, device, args.warmup, iters, args.profile_steps, extra, flush, report,
                   may_profile, args.top_kernels)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--stages", nargs="+", default=list(STAGES), choices=STAGES)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--iters", type=int, default=10)
    parser.add_argument("--iters-before", type=int, default=4)
    parser.add_argument("--mrl-iters", type=int, default=1, help="timed IMPO updates")
    parser.add_argument("--mrl-warmup", type=int, default=0, help="untimed IMPO updates first")
    parser.add_argument("--mrl-profile", type=int, default=1, help="IMPO updates under the profiler")
    parser.add_argument("--mrl-cuda-graphs", action="store_true",
                        help="MRL: the collection runtime with CUDA graphs (MRLConfig.cuda_graphs)")
    parser.add_argument("--mrl-update-graphs", choices=("auto", "on", "off"), default="auto",
                        help="MRL: the IMPO update's optimizer steps as CUDA graphs (MRLConfig.update_cuda_graphs); "
                             "auto: as the collection's")
    parser.add_argument("--mrl-sample-stacks", action="store_true",
                        help="MRL: sample the Python stacks of every thread during each collection (the last one "
                             "goes into the row as collect_stacks: where the lane's time goes)")
    parser.add_argument("--deadline-s", type=float, default=0.0,
                        help="seconds after which no new stage (nor profile) starts; 0 = none. Results are written "
                             "after every stage, so an outer `timeout` a little above it loses nothing measured")
    parser.add_argument("--profile-steps", type=int, default=2)
    parser.add_argument("--top-kernels", type=int, default=0, metavar="N",
                        help="record in each profiled row (top_kernels) and print the N kernels with the most total "
                             "GPU time per step (on the CPU: the N ops with the most self time); 0 = off")
    parser.add_argument("--documents", type=int, default=40_000, help="synthetic interactions for joint/SFT")
    parser.add_argument("--preset", default="nano")
    parser.add_argument("--rows", type=int, default=512, help="packed rows (or padded sequences) per step")
    parser.add_argument("--row-len", type=int, default=256)
    parser.add_argument("--smat", default="128x18", help="EPISODESxTURNS of the SMAT step")
    parser.add_argument("--turn-tokens", type=int, default=48)
    parser.add_argument("--smat-compile", choices=("auto", "on", "off"), default="auto",
                        help="the smat stage: the trainer's own choice at its fixed shapes (auto: compiled on CUDA), "
                             "or forced")
    parser.add_argument("--smat-recipe", type=Path, default=Path("examples/configs/nano/4_smat.yaml"),
                        help="smat-recipe: the SMAT config whose shape and compile settings the step takes")
    parser.add_argument("--smat-set", nargs="*", default=[], metavar="FIELD=JSON",
                        help=f"smat-recipe: override a setting of --smat-recipe, one of {', '.join(SMAT_RUN_FIELDS)}")
    parser.add_argument("--mrl", default="128x8", help="EPISODESxSTEPS of the IMPO update")
    parser.add_argument("--num-workers", type=int, default=4, help="DataLoader workers (the nano configs' 4)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--include-from", type=Path, default=None,
                        help="a results file of an earlier run on the same kind of GPU whose rows are carried over")
    parser.add_argument("--include-stages", nargs="*", default=[], help="the stages taken from --include-from")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--smoke", action="store_true",
                        help="CPU smoke mode: every stage at tiny sizes for a few steps (sets the sizes below)")
    args = parser.parse_args(argv)
    if args.smoke:
        for key, value in SMOKE.items():
            setattr(args, key, value)
    if args.top_kernels < 0:
        parser.error(f"--top-kernels {args.top_kernels}: expected N >= 0 (0 = off)")
    device = torch.device(args.device)
    if device.type != "cuda" and args.out is not None and inside(args.out, RESULTS_DIR):
        parser.error("CPU timings do not go into benchmarks/results/; pass --out elsewhere")
    torch.backends.cuda.matmul.allow_tf32 = True
    tok = RxTokenizer.default()
    rows: list[dict] = []
    command = " ".join(["python", "benchmarks/train_throughput.py", *(argv if argv is not None else sys.argv[1:])])
    started = time.perf_counter()

    def left() -> float:
        return args.deadline_s - (time.perf_counter() - started) if args.deadline_s > 0 else float("inf")

    with tempfile.TemporaryDirectory() as tmp:
        for name in args.stages:
            if left() <= 0:
                rows.append({"stage": name, "skipped": f"--deadline-s {args.deadline_s:g} reached"})
                print(json.dumps(rows[-1]), flush=True)
                write(args, device, rows, command)
                continue

            at = len(rows)
            try:
                # the profile (a few more steps and the trace's processing) only while time is left for it
                run_stage(name, args, device, tok, tmp, _reporter(rows, at, lambda: write(args, device, rows, command)),
                          lambda: left() > 0)
            except Exception as exc:  # record the failure (after a timing already taken: keep it), measure the rest
                rows[at:] = [{**(rows[at] if len(rows) > at else {"stage": name}), "error": repr(exc)[:500]}]
                print(json.dumps(rows[-1]), flush=True)
            torch.cuda.empty_cache()
            write(args, device, rows, command)  # after every stage: a run cut short keeps what it measured
    return 0


def _reporter(rows: list[dict], at: int, save):
    """``report(row)``: a stage's row goes to ``rows[at]`` and to the file as soon as it is timed, and again once
    profiled, so a run cut short by its ``timeout`` keeps every timing it took."""
    def report(row: dict) -> None:
        rows[at:] = [row]
        save()

    return report


def write(args, device, measured: list[dict], command: str) -> None:
    rows = [dict(r) for r in measured]
    if args.include_from is not None:
        earlier = json.loads(args.include_from.read_text())
        for r in earlier.get("stages", []):
            if r["stage"] in args.include_stages and all(m["stage"] != r["stage"] for m in rows):
                # a row that the earlier file itself carried over keeps where it was really measured
                rows.append({"measured_in": f"{args.include_from.name}: {earlier.get('command', '')}", **r})
    anchor_rate = next((r["real_tokens_per_s"] for r in rows if r["stage"] == "anchor" and "real_tokens_per_s" in r),
                       None)
    for r in rows:
        if "real_tokens_per_s" in r:
            r["vs_anchor"] = r["real_tokens_per_s"] / anchor_rate if anchor_rate else None
    previous = RESULTS_DIR / "train_throughput.json"
    mfu = []
    if previous.is_file():
        old = json.loads(previous.read_text())
        mfu = old.get("mfu") or [{**r, "device": old.get("device"), "torch": old.get("torch")}
                                 for r in old.get("results", [])]
    doc = {"benchmark": "train_throughput",
           "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
           "versions": {"torch": torch.__version__, "cuda": torch.version.cuda, "python": platform.python_version()},
           "command": command, "dtype": "bfloat16 autocast" if device.type == "cuda" else "float32",
           "preset": args.preset, "stages": rows, "mfu": mfu,
           "mfu_note": "mini/dense-100m MFU records of the earlier run (their own device and torch), kept as they were"}
    if args.out:
        atomic_write_json(args.out, doc)


if __name__ == "__main__":
    sys.exit(main())

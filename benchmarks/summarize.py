"""Print the README's results tables from `benchmarks/results/*.json` (so every figure there comes from a file).

    python benchmarks/summarize.py > /tmp/results.md
"""

from __future__ import annotations

import json
from pathlib import Path

RESULTS = Path(__file__).parent / "results"


def _load(name: str):
    path = RESULTS / f"{name}.json"
    return json.loads(path.read_text()) if path.exists() else None


def attention() -> list[str]:
    d = _load("attention")
    if not d:
        return []
    rec = {(r["variant"], r["seq_len"], r["pass"]): r for r in d["records"]}
    lines = [
        f"**Attention layer** (D={d['dim']}, H={d['num_heads']}, {d['dtype']}, {d['mode']}; {d['device']}, "
        f"torch {d['torch']}; `{d['command']}`): speed-up over GQA",
        "",
        "| variant | 32k fwd | 32k fwd+bwd | 128k fwd | 128k fwd+bwd |",
        "|---|---|---|---|---|",
    ]
    for v in ("mha", "gqa", "mqa", "sqa", "ssqa", "xsqa"):
        cells = [f"{rec[(v, t, p)]['speedup_vs_gqa']:.2f}x" for t in (32768, 131072) for p in ("forward", "forward_backward")]
        lines.append(f"| {v} | " + " | ".join(cells) + " |")
    return lines


def decode() -> list[str]:
    d = _load("decode")
    if not d:
        return []
    lines = [
        f"**Decoding** ({d['device']}, torch {d['torch']}, {d['dtype']}, {d['new_tokens']} new tokens; "
        f"`{d['command']}`)",
        "",
        "| config | params (decoder) | eager tok/s | CUDA-graph tok/s | compiled+graph step | HF `generate` tok/s | graph / HF | TTFT (64-token query) | memory update | aggregate @64 / @1 |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in d["results"]:
        lines.append(
            f"| {r['config']} | {r['rxt_parameters'] / 1e6:.1f}M ({r['decoder_parameters'] / 1e6:.1f}M) | "
            f"{r['eager_tokens_per_s']:.0f} | {r['graph_tokens_per_s']:.0f} | {r.get('compiled_graph_step_ms', float('nan')):.3f} ms | "
            f"{r.get('hf_tokens_per_s', float('nan')):.0f} | {r.get('graph_vs_hf', float('nan')):.1f}x | "
            f"{r['ttft_ms']:.2f} ms | {r['memory_update_ms']:.1f} ms | {r['aggregate_64_vs_1']:.1f}x |"
        )
    return lines


def latency() -> list[str]:
    d = _load("latency")
    if not d:
        return []
    lines = [
        f"**Latency against turn** ({d['device']}, {d['dtype']}, {d['turns']} turns of {d['query_tokens']}+"
        f"{d['answer_tokens']} tokens; `{d['command']}`; plot: `benchmarks/results/latency.png`)",
        "",
        "| config | system | params | TTFT turn 1 | TTFT turn 100 | turn 100 / turn 1 | per token, turn 100 "
        "| memory at turn 100 |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for c in d["configs"]:
        for system in ("rxt", "stateless_prefix_cached", "stateless_no_cache", "hf_kv_cache"):
            s = c.get(system, {})
            if "turns" not in s:
                continue
            per_token = f"{s['last_per_token_ms']:.2f} ms" if "last_per_token_ms" in s else "-"
            lines.append(
                f"| {c['config']} | {system} | {s['parameters'] / 1e6:.1f}M | {s['turn1_ttft_ms']:.1f} ms | "
                f"{s['last_ttft_ms']:.1f} ms | {s['last_over_first']:.2f} | {per_token} | "
                f"{s['turns'][-1]['memory_bytes'] / 2**20:.1f} MiB |"
            )
    for c in d["configs"]:
        if "rxt_advantage_vs_prefix_cached" in c:
            a = c["rxt_advantage_vs_prefix_cached"]
            lines.append(f"\nRxT advantage over the prefix-cached stateless decoder ({c['config']}, last turns): "
                         f"TTFT {a['ttft_ratio']:.1f}x, per token {a['per_token_ratio']:.1f}x, "
                         f"whole turn {a['turn_ratio']:.1f}x.")
    return lines


def tensorbleu() -> list[str]:
    lines: list[str] = []
    for name in ("tensorbleu", "tensorbleu_cpu"):
        d = _load(name)
        if not d:
            continue
        lines += [f"**TensorBLEU vs NLTK `sentence_bleu`** ({d['device'] or d.get('device_type')}; `{d['command']}`)",
                  "", "| batch x length | TensorBLEU | NLTK (CPU) | speed-up | max abs diff |", "|---|---|---|---|---|"]
        for r in d["records"]:
            lines.append(
                f"| {r['batch_size']} x {r['seq_len']} | {r['tensorbleu_ms']:.1f} ms | {r['nltk_ms']:.0f} ms | "
                f"{r['speedup']:.1f}x | {r.get('max_abs_diff', float('nan')):.1e} |"
            )
        lines.append("")
    return lines


def train_throughput() -> list[str]:
    d = _load("train_throughput")
    if not d:
        return []
    records = d.get("mfu", d.get("results", []))
    lines = ["**Training MFU** (`mini` joint step and a dense 100M decoder, sequence 1024, bfloat16 autocast)", "",
             "| model | device | compile | tokens/s | MFU |", "|---|---|---|---|---|"]
    for r in records:
        if "error" in r:
            continue
        lines.append(f"| {r['model']} | {r.get('device', d['device'])} | {r['compile']} | {r['tokens_per_s']:.0f} | "
                     f"{r['mfu'] * 100:.1f}% |")
    return lines


#: the issue's own figures (issue 12, "Why": one H200, torch 2.11, before this work), quoted as the "before" column
STEP_BEFORE = {
    "anchor": "5.0M tokens/s compiled (2.7M eager), ~31% MFU",
    "joint": "~95k tokens/s, 3-7 steps/s (`rxnn train joint`, batch 512, padded)",
    "sft": "not measured",
    "smat": "1.49 s/step, 56k kernels, GPU busy ~1/3 (`benchmarks/smat_step.py`)",
    "mrl": "not measured",
    "baseline": "not measured",
}
#: the issue's targets (one H200)
STEP_TARGETS = {
    "joint": ">= 1.5M real tokens/s (vs anchor >= 0.3)",
    "sft": ">= 1.5M real tokens/s (vs anchor >= 0.3)",
    "smat": ">= 600k real tokens/s, <= 5.6k kernels (10x fewer)",
    "mrl": "< 10 s per IMPO update",
    "mrl-graphs": "< 10 s per IMPO update",
}


def _ms(ms: float) -> str:
    return f"{ms / 1e3:.2f} s" if ms >= 1e3 else f"{ms:.0f} ms"


def where_a_step_goes() -> list[str]:
    """Every nano stage's step: the issue's figures (before) beside this file's (after), with the targets."""
    d = _load("train_throughput")
    if not d or "stages" not in d:
        return []
    rows = {r["stage"]: r for r in d["stages"]}
    lines = [f"**Where a step goes** (nano, untrained). Before: the figures quoted in issue 12 (one H200, torch "
             f"2.11, before this work). After: `benchmarks/results/train_throughput.json` ({d['device']}, "
             f"{d['dtype']}, torch {d['versions']['torch']}; `{d['command']}`)", "",
             "| stage | before (issue 12) | after: path | step | real tokens/s | vs anchor | kernels / step | GPU busy "
             "| target |",
             "|---|---|---|---|---|---|---|---|---|"]
    names = list(STEP_BEFORE) + [n for n in ("joint-before", "sft-before", "smat-before", "smat-eager",
                                             "baseline-before", "mrl-graphs") if n in rows]
    recipe = "smat-recipe" in rows  # the SMAT step with the recipe's own settings: the row the target is for
    if recipe:
        names.insert(names.index("smat") + 1, "smat-recipe")
    for name in names:
        r = rows.get(name)
        label = name if not name.endswith("-before") else f"{name} (old path)"
        before = STEP_BEFORE.get(name, "")
        target = STEP_TARGETS.get(name, "")
        if recipe and name == "smat":
            label, target = "smat, one shape declared", ""
        elif name == "smat-recipe":
            label, target = "smat as the recipe runs it", STEP_TARGETS["smat"]
        if name == "mrl" and r is None and "mrl-graphs" in rows:
            continue  # the trainer's default on CUDA is the graphed step: that row carries the target
        if r is None or "real_tokens_per_s" not in r:
            why = "not run" if r is None else r.get("skipped") or f"error: {r.get('error', '')[:80]}"
            lines.append(f"| {label} | {before} | {why} | - | - | - | - | - | {target} |")
            continue
        path = r.get("path") or ("packed, compiled" if r.get("packed") else "padded, eager" if "packed" in r else
                                 "compiled" if r.get("compiled") else r.get("what", ""))
        kernels = f"{r['kernels_per_step']:,.0f}" if r.get("kernels_per_step") else "-"
        busy = f"{r['gpu_busy_fraction'] * 100:.0f}%" if r.get("gpu_busy_fraction") else "-"
        vs = f"{r['vs_anchor']:.3f}" if r.get("vs_anchor") is not None else "-"
        lines.append(f"| {label} ({r.get('batch', '')}) | {before} | {path} | {_ms(r['step_ms'])} | "
                     f"{r['real_tokens_per_s']:,.0f} | {vs} | {kernels} | {busy} | {target} |")
    carried = [r for r in d["stages"] if "measured_in" in r]
    for r in carried:
        lines.append(f"\n`{r['stage']}` comes from another run: `{r['measured_in']}`.")
    for r in (r for r in d["stages"] if "note" in r and r["stage"] in names):
        lines.append(f"\n`{r['stage']}`: {r['note']}.")
    return lines


def ddp() -> list[str]:
    d = _load("ddp")
    if not d:
        return []
    one, two = d["gpus_1"], d["gpus_2"]
    return [f"**DDP, joint stage** ({d['stage']}, {d['device']}, {one['rows_per_step']} rows of 256 tokens per step, "
            f"compiled: {one['compiled']}; `{d['command']}`)", "",
            "| GPUs | step | real tokens/s | final loss |", "|---|---|---|---|",
            f"| 1 | {one['step_ms']:.0f} ms | {one['real_tokens_per_s']:,.0f} | {one['loss_curve'][-1]:.4f} |",
            f"| 2 | {two['step_ms']:.0f} ms | {two['real_tokens_per_s']:,.0f} | {two['loss_curve'][-1]:.4f} |", "",
            f"Scaling {d['scaling']:.2f}x; the loss curves ({len(one['loss_curve'])} steps) differ by at most "
            f"{d['loss_max_abs_diff']:.4f}."]


def serving() -> list[str]:
    d = _load("serving")
    if not d:
        return []
    lines = ["**Serving over websockets** (nano unless the model column says otherwise, greedy; `benchmarks/serving.py`; "
             "engine = `DecodeEngine` alone, same run)", "",
             "| device | runtime | model | clients | TTFT p50 | TTFT p99 | aggregate tok/s | engine tok/s | "
             "runtime / engine |",
             "|---|---|---|---|---|---|---|---|---|"]
    for run in d["runs"]:
        version = run["runtime_version"]
        label = ("fixed batches" if "fixed" in version else
                 "scheduler/executor" if "TurnScheduler" in version else "continuous batching")
        if version.startswith("commit "):  # runs of one runtime design told apart by their commit
            label += f" ({version.split(':', 1)[0]})"
        if run.get("update_stream_priority") == "high":  # settings a run changed from the runtime's defaults
            label += ", high-priority updates"
        if run.get("update_stream") is False:
            label += ", updates on the lane's stream"
        if run.get("engine_process"):
            label += ", lane in a child process"
        if run.get("compile_update"):
            label += ", fused update passes"
        if run.get("gil_switch_interval_s", 1.0) < 0.00019:
            label += f", GIL switch {run['gil_switch_interval_s'] * 1e3:.1f} ms"
        for lv in run["levels"]:
            engine = lv.get("engine_tokens_per_s")
            engine_text = f"{engine:.0f}" if engine else "-"
            ratio_text = f"{lv['ratio_to_engine']:.1%}" if engine else "-"
            lines.append(
                f"| {run['device']} | {label} | {run.get('preset', 'nano')} | {lv['clients']} | {lv['ttft_ms_p50']:.0f} ms | {lv['ttft_ms_p99']:.0f} ms "
                f"| {lv['aggregate_tokens_per_s']:.0f} | {engine_text} | {ratio_text} |"
            )
    return lines


def nano_training() -> list[str]:
    d = _load("nano_training")
    if not d:
        return []
    lines = [f"**Trained `nano`: the budgeted GPU run** ({d['device']}, torch {d['versions']['torch']}; "
             + "; ".join(f"`{c}`" for c in d["commands"]) + "; curves: `benchmarks/results/nano_training/`)", "",
             "| stage | seconds | steps | train tokens/s | held-out metric |", "|---|---|---|---|---|"]
    smat = ("val_accuracy", "answer accuracy (memory)")
    keys = {"joint": ("val_ar_acc_peek", "AR accuracy (peeking decoder)"), "sft": ("val_answer_acc", "answer accuracy"),
            "mem-attn": ("val_cosine", "cosine to target"), "smat": smat,
            "baseline": ("val_answer_acc", "answer accuracy (history)")}
    for stage, entry in d["stages"].items():  # in the order they ran; passes and reruns share their step's metric
        base = stage.split(" ")[0]
        if base == "mrl" or base.startswith("mrl"):
            # each curriculum step evaluates at its own distance, so the first and last rollout rewards are shown
            # (held-out recall and reward against stage 4 are in the memory-retention table)
            seconds = f"{entry['seconds']:.0f}" if entry.get("seconds") else "-"
            lines.append(f"| {stage} | {seconds} | {entry['updates']} updates | - | rollout reward "
                         f"{entry['reward_first_update']:.2f} -> {entry['reward_last_update']:.2f} |")
            continue
        key, label = keys.get(base, keys["smat"] if base.startswith("smat") else (None, ""))
        if key is None:
            continue
        value = (entry.get("last_eval") or {}).get(key)
        shown = f"{label} {value:.3f}" if value is not None else "-"
        speed = (entry.get("last_train") or {}).get("tokens_per_s")
        seconds = entry.get("seconds") or (entry.get("time_budget") or {}).get("max_minutes", 0) * 60
        lines.append(f"| {stage} | {seconds:.0f} | {entry['steps']} | {f'{speed:,.0f}' if speed else '-'} | {shown} |")
    return lines


def memory_retention() -> list[str]:
    d = _load("memory_retention")
    if not d:
        return []
    ks = [str(k) for k in d["settings"]["distances"]]
    unseen = any("unseen_phrasing" in r for r in d["systems"].values())
    after = any("after_a_question" in r for r in d["systems"].values())  # recorded since the eighth session
    lines = [f"**Memory retention** ({d['device']}; {d['settings']['episodes_per_k']} held-out episodes per k, "
             f"{d['settings']['chitchat']} held-out chitchat conversations; `{d['command']}`; "
             "plot: `benchmarks/results/memory_retention.png`)", "",
             "| system | " + " | ".join(f"recall k={k}" for k in ks) + (" | unseen phrasing" if unseen else "")
             + (" | after a question" if after else "") + " | reward (0-10) | chitchat ppl | chitchat acc |",
             "|---|" + "---|" * (len(ks) + 3 + unseen + after)]

    def mean_of(r: dict, key: str) -> str:
        mean = (r.get(key) or {}).get("recall_mean")
        return f" | {mean:.2f}" if mean is not None else " | -"

    for name, r in d["systems"].items():
        chat = r.get("chitchat") or {}
        lines.append(f"| {name} | " + " | ".join(f"{r['recall'][k]:.2f}" for k in ks)
                     + (mean_of(r, "unseen_phrasing") if unseen else "")
                     + (mean_of(r, "after_a_question") if after else "")
                     + f" | {r['reward_mean']:.2f} | {chat.get('answer_ppl', float('nan')):.0f}"
                     f" | {chat.get('answer_acc', float('nan')):.3f} |")
    return lines


def memory_diagnostics() -> list[str]:
    """Gates, read-attention entropy and write cosine: before SMAT (from the run's record) and after."""
    after = _load("memory_diagnostics")
    if not after:
        return []
    before = ((_load("nano_training") or {}).get("memory_diagnostics") or {}).get("before", {})
    rows = [(f"{name} (before SMAT)", m) for name, m in before.items()] + list(after["models"].items())
    lines = [f"**Memory diagnostics** (held-out episodes; before SMAT: `benchmarks/results/nano_training.json`; "
             f"after: `{after['command']}`)", "",
             "| model | gate mean (min-max over layers) | read entropy (mean over layers) / max | write cosine |",
             "|---|---|---|---|"]
    for name, m in rows:
        gates = [g["mean"] for g in m["gates"]]
        entropy = sum(m["read_entropy"]) / len(m["read_entropy"])
        lines.append(f"| {name} | {sum(gates) / len(gates):.4f} ({min(gates):.4f}-{max(gates):.4f}) | "
                     f"{entropy:.4f} / {m['read_entropy_max']:.4f} | {m['write_cosine']:.4f} |")
    return lines


def experimental_attention() -> list[str]:
    d = _load("experimental_attention")
    if not d:
        return []
    variants = ["gqa", "sqa", "gma", "dma", "flex-sqa"]
    lengths = sorted({r["seq_len"] for r in d["speed"]})
    ms = {(r["variant"], r["seq_len"]): r["ms"] for r in d["speed"] if "ms" in r}
    lines = [f"**Experimental attention** ({d['device']}, {d['dtype']}, {d['speed_setup']['pass']}, "
             f"D={d['speed_setup']['dim']}, H={d['speed_setup']['num_heads']}; `{d['command']}`): forward ms", "",
             "| variant | " + " | ".join(f"{t // 1024}k" for t in lengths) + " | held-out loss (tiny, same tokens) |",
             "|---|" + "---|" * (len(lengths) + 1)]
    quality = d["quality"]["results"]
    for v in variants:
        cells = [f"{ms[(v, t)]:.2f}" if (v, t) in ms else "-" for t in lengths]
        q = quality.get(v, {}).get("heldout_loss")
        loss = f"{q:.3f}" if q is not None else "-"
        lines.append(f"| {v} | " + " | ".join(cells) + f" | {loss} |")
    return lines


def smat_step() -> list[str]:
    d = _load("smat_step")
    if not d:
        return []
    lines = [f"**Where a SMAT step goes** (nano, untrained, {d['device']}, {d['dtype']}; `{d['command']}`)", "",
             "| path | episodes x turns | step | tokens/s | kernels per step | GPU busy |", "|---|---|---|---|---|---|"]
    for r in d["results"]:
        path = r.get("path", "reference")  # files from before the restructured step measured the per-turn loop
        if r.get("attention"):  # `--trainer-attention` rows: the SMAT trainer's backends (no cuDNN)
            path += f" ({r['attention']})"
        lines.append(f"| {path} | {r['batch']} x {r['turns']} | {r['step_ms']:.0f} ms | {r['tokens_per_s']:.0f} | "
                     f"{r.get('kernels_per_step', 0):.0f} | {r.get('gpu_busy_fraction', float('nan')) * 100:.0f}% |")
    return lines


def copy_gate_ablation() -> list[str]:
    d = _load("copy_gate_ablation")
    if not d:
        return []
    lines = [f"**The CPU gate, one change at a time** ({d['device']}; `{d['command']}` plus each row's `--set` "
             f"overrides, listed in `benchmarks/results/copy_gate_ablation.json`; {d['steps']} steps each)", "",
             "| change | held-out recall, k = 1 | memory reset | in context | seconds |", "|---|---|---|---|---|"]
    for run in d["runs"]:
        lines.append(f"| {run['change']} | {run['recall']:.2f} | {run['recall_memory_reset']:.2f} | "
                     f"{run['recall_in_context']:.2f} | {run['seconds']:.0f} |")
    return lines


def copy_gate_sweep() -> list[str]:
    d = _load("copy_gate_sweep")
    if not d:
        return []
    lines = [f"**The copy gate at nano size** ({d['device']}, {d['concurrent_processes']} variants at once on one GPU; "
             f"`{d['command']}`; every variant: `{' '.join(d['base'])}` (in-context steps first, then memory "
             "steps); held-out recall at k = 1)", "",
             "| variant | changes | steps | recall | memory reset | in context |", "|---|---|---|---|---|---|"]
    for r in d["runs"]:
        if "error" in r:
            lines.append(f"| {r['variant']} | failed: {r['error']} | - | - | - | - |")
            continue
        changes = ", ".join(r["overrides"])  # beyond the shared `base` overrides
        lines.append(f"| {r['variant']} | {changes} | {r['steps']} | {r['recall']:.2f} | "
                     f"{r['recall_memory_reset']:.2f} | {r['recall_in_context']:.2f} |")
    return lines


def main() -> None:
    for section in (nano_training, memory_retention, memory_diagnostics, copy_gate_ablation, copy_gate_sweep,
                    where_a_step_goes, ddp,
                    smat_step, attention,
                    decode, latency, serving, train_throughput, tensorbleu, experimental_attention):
        lines = section()
        if lines:
            print("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()

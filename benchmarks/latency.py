"""Per-turn latency over long conversations: RxT against stateless models that keep or re-read the history.

Conversations of 1..N turns (default 100) with fixed query and answer lengths. For every turn it records the
time to first token (TTFT), the per-token decode time (the answer's remaining tokens), the whole turn's time, and
the memory held for the conversation:

- **RxT**: the prompt is only the current query; the STM is read through memory cross-attention. The memory
  update (encoder + memory attention over the finished interaction) is timed separately: it runs after the
  answer is delivered and is not user-facing. Memory held: the STM, constant.
- **Stateless, prefix-cached** (the fair baseline): our `DecoderLM` (the same size as the no-cache arm below) through the
  same engine machinery as the RxT (`PrefixCachedEngine`, a `DecodeEngine` whose slot keeps its KV cache across
  turns, every prefill and decode step a CUDA graph, captured before the conversation): each turn prefills only
  the new tokens against the cached history, as a serving engine with prefix caching does, then decodes over the
  used part of the cache. Memory held: the KV cache of the history.
- **Stateless baseline, no cache across turns** (`DecoderLM` with at least the RxT's parameter count, see
  `rxt.classic.matched_decoder_config`): every turn re-reads the whole history ``[Q]q1[A]a1 ... [Q]qN[A]``
  (an eager prefill; the decode steps are graphs). Memory held: the KV cache of the history.
- **Hugging Face transformers** (a Llama config of the same size) keeping its KV cache across turns, eager.

Per config, ``rxt_advantage_vs_prefix_cached`` states the RxT's advantage against the fair baseline: the ratios
(stateless over RxT) of TTFT, per-token decode time and turn time, each the median of the last three turns.
Runs at `nano` and at a ~1B configuration; untrained weights are fine for timing.

    python benchmarks/latency.py --out benchmarks/results/latency.json   # GPU: nano and ~1B
    # CPU smoke run (tiny model, a few turns; CPU timings are refused inside benchmarks/results):
    python benchmarks/latency.py --device cpu --configs tiny --turns 3 --query-tokens 8 --answer-tokens 8 --out /tmp/l.json
    python benchmarks/latency.py --plot-only benchmarks/results/latency.json   # re-draw the PNG
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.bench_utils import RESULTS_DIR, git_commit, inside
from rxt.atomic_io import atomic_write_json

QUERY_BUCKETS = tuple(range(8, 2049, 8))
ARMS = ("rxt", "stateless_prefix_cached", "stateless_no_cache", "hf_kv_cache")
CONFIGS = {
    "tiny": dict(preset="tiny", overrides={}),  # CPU smoke runs only
    "nano": dict(preset="nano", overrides={}),
    "1b": dict(
        preset="nano",
        overrides=dict(dim=2048, num_layers=16, num_heads=16, ffn_hidden_dim=5632, max_seq_len=1024, stm_slots=512,
                       self_attention="gqa", cross_attention="gqa", memory_attention_heads="gqa"),
    ),
}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _ms(fn, device):
    _sync(device)
    start = time.perf_counter()
    result = fn()
    _sync(device)
    return (time.perf_counter() - start) * 1e3, result


def _timed_turn(first_logits, next_logits, a_len: int, device: torch.device):
    """One greedy answer: ``first_logits()`` (the prefill), then ``next_logits(token)`` for each of the other
    ``a_len - 1`` tokens, timed on the host with the device drained at both ends. Returns the times (TTFT, the
    whole turn, per decoded token after the first) and the answer's ids."""
    _sync(device)
    t0 = time.perf_counter()
    answer = [first_logits().argmax()]
    _sync(device)
    ttft = (time.perf_counter() - t0) * 1e3
    for _ in range(a_len - 1):
        answer.append(next_logits(answer[-1]).argmax())
    _sync(device)
    total = (time.perf_counter() - t0) * 1e3
    per_token = (total - ttft) / (a_len - 1) if a_len > 1 else 0.0
    return {"ttft_ms": ttft, "turn_ms": total, "per_token_ms": per_token}, torch.stack(answer)


def _engine_stepper(engine, device: torch.device):
    """``next_logits`` for `_timed_turn` through a one-slot engine's (graphed) decode step."""
    tokens = torch.zeros(1, dtype=torch.long, device=device)

    def next_logits(token: torch.Tensor) -> torch.Tensor:
        tokens[0] = token  # a device-to-device copy: the host never waits for the token
        return engine.step(tokens)[0]

    return next_logits


def _kv_bytes(base, tokens: int, dtype: torch.dtype) -> int:
    """Keys and values of ``tokens`` history tokens in every layer of the stateless ``base`` config."""
    kv = base.attention_config(base.self_attention).num_kv_heads
    return 2 * base.num_layers * tokens * kv * base.head_dim * torch.finfo(dtype).bits // 8


def run_rxt(cfg, turns, q_len, a_len, device, dtype):
    from rxt.decode_engine import DecodeEngine
    from rxt.model import RxT

    torch.manual_seed(0)
    model = _build(lambda: RxT(cfg), device).to(device=device, dtype=dtype).eval()
    engine = DecodeEngine(model.decoder, max_slots=1, capacity=q_len + a_len + 1)
    stm = model.initial_memory(1)
    step = _engine_stepper(engine, device)
    rows = []
    with torch.no_grad():
        for turn in range(0, turns + 1):  # turn 0 is an untimed warm-up (graph capture happens there)
            if turn == 1:
                rows.clear()
                stm = model.initial_memory(1)
            query = torch.randint(10, cfg.vocab_size, (q_len,), device=device)
            engine.release(0)
            times, answer = _timed_turn(lambda q=query, s=stm: engine.start(0, q, stm=s[:, 0]), step, a_len, device)
            interaction = torch.cat([query, answer])[None]
            update_ms, stm = _ms(lambda stm=stm, interaction=interaction: model.update_memory(stm, interaction),
                                 device)
            rows.append({"turn": turn, **times, "memory_update_ms": update_ms, "prompt_tokens": q_len,
                         "memory_bytes": stm.numel() * stm.element_size()})
    params = model.num_parameters()
    _release_memory(device)
    return params, rows


def _stateless_lm(cfg, turns, q_len, a_len, device, dtype):
    """The stateless baseline model for a conversation of ``turns`` turns: (its config, the model, the tokens
    the whole conversation holds)."""
    from rxt.classic import DecoderLM

    history_len = turns * (q_len + a_len) + 1
    base = matched_baseline_config(cfg, max_seq_len=history_len + 1)
    torch.manual_seed(0)
    return base, _build(lambda: DecoderLM(base), device).to(device=device, dtype=dtype).eval(), history_len


def run_stateless(cfg, turns, q_len, a_len, device, dtype):
    from rxt.decode_engine import DecodeEngine

    base, lm, history_len = _stateless_lm(cfg, turns, q_len, a_len, device, dtype)
    engine = DecodeEngine(lm.decoder, max_slots=1, capacity=history_len)
    step = _engine_stepper(engine, device)
    history = torch.empty(0, dtype=torch.long, device=device)
    rows = []
    with torch.no_grad():
        for turn in range(0, turns + 1):  # turn 0 is an untimed warm-up
            if turn == 1:
                rows.clear()
                history = history[:0]
            query = torch.randint(10, cfg.vocab_size, (q_len,), device=device)
            prompt = torch.cat([history, query])
            engine.release(0)
            # engine.start re-reads the whole history
            times, answer = _timed_turn(lambda p=prompt: engine.start(0, p), step, a_len, device)
            history = torch.cat([prompt, answer])
            rows.append({"turn": turn, **times, "prompt_tokens": prompt.numel(),
                         "memory_bytes": _kv_bytes(base, history.numel(), dtype)})
    params = lm.num_parameters()
    _release_memory(device)
    return params, rows


def run_prefix_cached(cfg, turns, q_len, a_len, device, dtype):
    """The stateless decoder with its KV cache kept across turns, through the RxT's engine machinery."""
    from rxt.prefix_cached_engine import PrefixCachedEngine

    base, lm, history_len = _stateless_lm(cfg, turns, q_len, a_len, device, dtype)
    # Query buckets every 8 tokens (vLLM's graph sizes), so the 33 new tokens of a turn pad to 40, not to 64.
    engine = PrefixCachedEngine(lm.decoder, max_slots=1, capacity=history_len, query_buckets=QUERY_BUCKETS)
    t0 = time.perf_counter()
    graphs = engine.capture(0, [q_len, q_len + 1])  # the first turn's query, then last answer token + query
    capture_s = time.perf_counter() - t0
    step = _engine_stepper(engine, device)
    rows = []
    last = None
    with torch.no_grad():
        for turn in range(0, turns + 1):  # turn 0 is an untimed warm-up; turn 1 starts a new conversation
            if turn == 1:
                rows.clear()
                engine.release(0)
                last = None
            query = torch.randint(10, cfg.vocab_size, (q_len,), device=device)
            new = query if last is None else torch.cat([last[None], query])
            times, answer = _timed_turn(lambda n=new: engine.extend(0, n), step, a_len, device)
            last = answer[-1]
            rows.append({"turn": turn, **times, "prompt_tokens": new.numel(), "cached_tokens": engine.slot_length[0],
                         "memory_bytes": _kv_bytes(base, engine.slot_length[0], dtype)})
    params = lm.num_parameters()
    info = {"parameters": params, "graphs": graphs, "graph_capture_s": capture_s, "key_buckets": engine.key_buckets}
    _release_memory(device)
    return info, rows


def _build(make, device: torch.device):
    """Construct a model with its parameters initialised on ``device`` (a ~1B model initialised on the host
    first would take tens of seconds of the GPU run)."""
    with torch.device(device):
        return make()


def _release_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()


def matched_baseline_config(cfg, max_seq_len: int):
    """The stateless baseline: the RxT's widths, at least its parameter count (see rxt.classic)."""
    from rxt.classic import matched_decoder_config

    return matched_decoder_config(cfg, max_seq_len, at_least=True)[0]


def run_hf(cfg, turns, q_len, a_len, device, dtype, measure_every: int = 10):
    import transformers
    from transformers import DynamicCache, LlamaConfig, LlamaForCausalLM

    base = matched_baseline_config(cfg, max_seq_len=turns * (q_len + a_len) + 16)
    kv = base.attention_config(base.self_attention).num_kv_heads
    hf_cfg = LlamaConfig(
        vocab_size=base.vocab_size, hidden_size=base.dim, intermediate_size=base.ffn_hidden_dim,
        num_hidden_layers=base.num_layers, num_attention_heads=base.num_heads, num_key_value_heads=kv,
        max_position_embeddings=base.max_seq_len, tie_word_embeddings=True,
    )
    torch.manual_seed(0)
    model = _build(lambda: LlamaForCausalLM(hf_cfg), device).to(device=device, dtype=dtype).eval()
    with torch.no_grad():  # warm-up outside the conversation
        warm = torch.randint(10, cfg.vocab_size, (1, q_len), device=device)
        for _ in range(2):
            model(input_ids=warm, past_key_values=DynamicCache(), use_cache=True)
    cache = DynamicCache()

    def forward(ids: torch.Tensor) -> torch.Tensor:
        """Next-token logits (V,) after feeding ``ids`` (1, T) on top of the cached history."""
        return model(input_ids=ids, past_key_values=cache, use_cache=True).logits[0, -1]

    seen = 0
    rows = []
    with torch.no_grad():
        for turn in range(1, turns + 1):
            if turn not in (1, 2, 3) and turn % measure_every and turn < turns - 2:
                # Untimed turn: grow the cached history by one interaction in a single forward pass (HF's eager
                # decode is slow; timing every turn would dominate the benchmark's run time).
                model(input_ids=torch.randint(10, cfg.vocab_size, (1, q_len + a_len), device=device),
                      past_key_values=cache, use_cache=True)
                seen += q_len + a_len
                continue
            query = torch.randint(10, cfg.vocab_size, (1, q_len), device=device)
            times, answer = _timed_turn(lambda q=query: forward(q), lambda t: forward(t.view(1, 1)), a_len, device)
            forward(answer[-1].view(1, 1))  # the last answer token joins the history
            seen += q_len + a_len
            rows.append({"turn": turn, **times, "prompt_tokens": q_len, "cached_tokens": seen,
                         "memory_bytes": _kv_bytes(base, seen, dtype)})
    params = sum(p.numel() for p in model.parameters())
    _release_memory(device)
    return transformers.__version__, params, rows


def _summary(rows: list[dict]) -> dict:
    """Medians of the first and of the last three turns, for TTFT, per-token decode time and the whole turn."""
    out = {}
    for key in ("ttft_ms", "per_token_ms", "turn_ms"):
        first = statistics.median(r[key] for r in rows[:3])
        last = statistics.median(r[key] for r in rows[-3:])
        out |= {"turn1_" + key: first, "last_" + key: last}
        out["last_over_first" if key == "ttft_ms" else f"{key}_last_over_first"] = last / first if first else None
    return out


def advantage(rxt: dict, baseline: dict) -> dict:
    """The baseline's time over the RxT's at the last turns (medians of the last three): >1 means RxT is faster."""
    return {f"{key}_ratio": baseline[f"last_{key}_ms"] / rxt[f"last_{key}_ms"] for key in ("ttft", "per_token", "turn")}


PLOTTED = (("rxt", "-"), ("stateless_prefix_cached", "-."), ("stateless_no_cache", "--"), ("hf_kv_cache", ":"))


def plot(doc: dict, path: Path) -> None:
    """Per config (columns): TTFT, per-token decode time and memory held against the turn (rows)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    configs = doc["configs"]
    panels = (("ttft_ms", 1, "time to first token", "ms"), ("per_token_ms", 1, "decode time per token", "ms"),
              ("memory_bytes", 2**20, "memory held per conversation", "MiB"))
    fig, axes = plt.subplots(len(panels), len(configs), figsize=(6 * len(configs), 11), squeeze=False)
    for col, entry in enumerate(configs):
        for system, style in PLOTTED:
            rows = entry.get(system, {}).get("turns")
            if not rows:
                continue
            turns = [r["turn"] for r in rows]
            for row, (key, scale, _, _) in enumerate(panels):
                axes[row][col].plot(turns, [r[key] / scale for r in rows], style, label=system)
        for row, (_, _, title, unit) in enumerate(panels):
            axes[row][col].set_title(f"{entry['config']}: {title}")
            axes[row][col].set_xlabel("turn")
            axes[row][col].set_ylabel(unit)
            axes[row][col].set_yscale("log")
            axes[row][col].legend(fontsize=8)
    fig.suptitle(f"Latency against turn ({doc['device']}, {doc['dtype']})")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def run_config(name: str, arms: list[str], args: argparse.Namespace, device: torch.device, dtype) -> dict:
    from rxt.config import RxTConfig

    spec = CONFIGS[name]
    cfg = RxTConfig.preset(spec["preset"], **spec["overrides"])
    shape = (cfg, args.turns, args.query_tokens, args.answer_tokens, device, dtype)
    entry: dict = {"config": name}
    if "rxt" in arms:
        params, rows = run_rxt(*shape)
        entry["rxt"] = {"parameters": params, "turns": rows, **_summary(rows)}
    if "stateless_prefix_cached" in arms:
        info, rows = run_prefix_cached(*shape)
        entry["stateless_prefix_cached"] = {**info, "turns": rows, **_summary(rows)}
    if "stateless_no_cache" in arms:
        params, rows = run_stateless(*shape)
        entry["stateless_no_cache"] = {"parameters": params, "turns": rows, **_summary(rows)}
    if "hf_kv_cache" in arms:
        try:
            version, params, rows = run_hf(*shape, measure_every=args.hf_every)
            entry["hf_kv_cache"] = {"transformers": version, "parameters": params, "turns": rows, **_summary(rows)}
        except Exception as exc:
            entry["hf_kv_cache"] = {"error": repr(exc)[:500]}
    if "rxt" in entry and "stateless_prefix_cached" in entry:
        entry["rxt_advantage_vs_prefix_cached"] = advantage(entry["rxt"], entry["stateless_prefix_cached"])
    if "rxt" in entry and "stateless_no_cache" in entry:
        rxt_last = entry["rxt"]["last_ttft_ms"]
        entry["stateless_over_rxt_ttft_at_last_turn"] = entry["stateless_no_cache"]["last_ttft_ms"] / rxt_last
        entry["stateless_over_rxt_turn_ms_at_last_turn"] = (
            entry["stateless_no_cache"]["last_turn_ms"] / entry["rxt"]["last_turn_ms"]
        )
    return entry


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configs", nargs="+", default=["nano", "1b"], choices=list(CONFIGS),
                        help="model sizes (tiny: CPU smoke runs only)")
    parser.add_argument("--arms", nargs="+", default=list(ARMS), choices=ARMS, help="systems to run (default: all)")
    parser.add_argument("--turns", type=int, default=100)
    parser.add_argument("--query-tokens", type=int, default=32)
    parser.add_argument("--answer-tokens", type=int, default=32)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default=None, help="default: bfloat16 on CUDA, float32 on the CPU")
    parser.add_argument("--out", type=Path, default=None,
                        help="results JSON (rewritten after every config, so a run cut short keeps the finished "
                             "ones) and its PNG beside it")
    parser.add_argument("--append", action="store_true",
                        help="keep the other configs already in --out (a config of the same name is replaced)")
    parser.add_argument("--hf-every", type=int, default=10,
                        help="time every n-th turn of the (slow, eager) transformers arm, and the first and last 3")
    parser.add_argument("--plot-only", type=Path, default=None, help="re-draw the PNG from a results JSON")
    args = parser.parse_args(argv)
    if args.plot_only:
        plot(json.loads(args.plot_only.read_text()), args.plot_only.with_suffix(".png"))
        return 0
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA GPU here (use --device cpu --configs tiny for a smoke run)")
    if device.type != "cuda" and args.out and inside(args.out, RESULTS_DIR):
        parser.error(f"--out {args.out}: CPU timings are smoke only; write them outside benchmarks/results")
    if args.turns < 3 or args.answer_tokens < 2 or args.query_tokens < 1 or args.hf_every < 1:
        parser.error("--turns must be >= 3 (summaries take 3 turns), --answer-tokens >= 2, --query-tokens >= 1, "
                     "--hf-every >= 1")
    kept = []
    if args.append and args.out and args.out.exists():
        kept = [c for c in json.loads(args.out.read_text())["configs"] if c["config"] not in args.configs]
    dtype = getattr(torch, args.dtype or ("bfloat16" if device.type == "cuda" else "float32"))
    doc = {
        "benchmark": "latency",
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "torch": torch.__version__, "cuda": torch.version.cuda, "python": platform.python_version(),
        "commit": git_commit(), "dtype": str(dtype).removeprefix("torch."),
        "command": " ".join(["python", *sys.argv]) if argv is None else " ".join(["python", __file__, *argv]),
        "turns": args.turns, "query_tokens": args.query_tokens, "answer_tokens": args.answer_tokens,
        "note": "turn1/last values are medians of the first and last three turns; per_token_ms is the answer's "
                "decode time after the first token over answer_tokens - 1; rxt_advantage_vs_prefix_cached is the "
                "prefix-cached stateless time over the RxT's at the last turns",
        "configs": kept,
    }
    for name in args.configs:
        entry = run_config(name, args.arms, args, device, dtype)
        entry["command"] = doc["command"]
        print(json.dumps({k: v for k, v in entry.items() if k != "config" and not isinstance(v, dict)}
                         | {k: v for k, v in entry.items() if k.startswith("rxt_advantage")}
                         | {s: {k: v for k, v in entry[s].items() if k != "turns"} for s in ARMS if s in entry},
                         indent=1), flush=True)
        doc["configs"].append(entry)
        if args.out:
            atomic_write_json(args.out, doc)
    if args.out:
        try:
            plot(doc, args.out.with_suffix(".png"))
        except Exception as exc:
            print(f"plot failed: {exc!r}")
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

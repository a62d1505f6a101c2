"""Per-turn latency over long conversations: RxT against stateless models that re-read the history.

Conversations of 1..N turns (default 100) with fixed query and answer lengths. For every turn it records the
time to first token (TTFT), the whole turn's time, and the memory held for the conversation:

- **RxT**: the prompt is only the current query; the STM is read through memory cross-attention. The memory
  update (encoder + memory attention over the finished interaction) is timed separately: it runs after the
  answer is delivered and is not user-facing. Memory held: the STM, constant.
- **Stateless baseline, no cache across turns** (our `DecoderLM` of about the same size): every turn
  re-reads the whole history ``[Q]q1[A]a1 ... [Q]qN[A]``. Memory held: the KV cache of the history.
- **Hugging Face transformers** (a Llama config of the same size) keeping its KV cache across turns: each
  turn prefills only the new query against the cached history (the off-the-shelf best case for a stateless
  chat server). Memory held: its KV cache.

Runs at `nano` and at a ~1B configuration; untrained weights are fine for timing.

    python benchmarks/latency.py --out benchmarks/results/latency.json
    python benchmarks/latency.py --plot-only benchmarks/results/latency.json   # re-draw the PNG
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

from rxt.atomic_io import atomic_write_json

CONFIGS = {
    "nano": dict(preset="nano", overrides={}),
    "1b": dict(
        preset="nano",
        overrides=dict(dim=2048, num_layers=16, num_heads=16, ffn_hidden_dim=5632, max_seq_len=1024, stm_slots=512,
                       self_attention="gqa", cross_attention="gqa", memory_attention_heads="gqa"),
    ),
}


def _ms(fn):
    torch.cuda.synchronize()
    start = time.perf_counter()
    result = fn()
    torch.cuda.synchronize()
    return (time.perf_counter() - start) * 1e3, result


def run_rxt(cfg, turns, q_len, a_len, device, dtype):
    from rxt.decode_engine import DecodeEngine
    from rxt.model import RxT

    torch.manual_seed(0)
    model = RxT(cfg).to(device=device, dtype=dtype).eval()
    engine = DecodeEngine(model.decoder, max_slots=1, capacity=q_len + a_len + 1)
    stm = model.initial_memory(1)
    rows = []
    with torch.no_grad():
        for turn in range(0, turns + 1):  # turn 0 is an untimed warm-up (graph capture happens there)
            if turn == 1:
                rows.clear()
                stm = model.initial_memory(1)
            query = torch.randint(10, cfg.vocab_size, (q_len,), device=device)
            engine.release(0)
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            token = engine.start(0, query, stm=stm[:, 0]).argmax()
            torch.cuda.synchronize()
            ttft = (time.perf_counter() - t0) * 1e3
            answer = [token]
            tokens = torch.zeros(1, dtype=torch.long, device=device)
            for _ in range(a_len - 1):
                tokens[0] = answer[-1]
                answer.append(engine.step(tokens)[0].argmax())
            torch.cuda.synchronize()
            total = (time.perf_counter() - t0) * 1e3
            interaction = torch.cat([query, torch.stack(answer)])[None]
            update_ms, stm = _ms(lambda stm=stm, interaction=interaction: model.update_memory(stm, interaction))
            rows.append({"turn": turn, "ttft_ms": ttft, "turn_ms": total, "memory_update_ms": update_ms,
                         "prompt_tokens": q_len, "memory_bytes": stm.numel() * stm.element_size()})
    params = model.num_parameters()
    torch.cuda.empty_cache()
    return params, rows


def run_stateless(cfg, turns, q_len, a_len, device, dtype):
    from rxt.classic import DecoderLM
    from rxt.decode_engine import DecodeEngine

    history_len = turns * (q_len + a_len) + 1
    base = matched_baseline_config(cfg, max_seq_len=history_len + 1)
    torch.manual_seed(0)
    lm = DecoderLM(base).to(device=device, dtype=dtype).eval()
    engine = DecodeEngine(lm.decoder, max_slots=1, capacity=history_len)
    kv = lm.decoder.num_kv_heads
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
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            token = engine.start(0, prompt).argmax()  # re-reads the whole history
            torch.cuda.synchronize()
            ttft = (time.perf_counter() - t0) * 1e3
            answer = [token]
            tokens = torch.zeros(1, dtype=torch.long, device=device)
            for _ in range(a_len - 1):
                tokens[0] = answer[-1]
                answer.append(engine.step(tokens)[0].argmax())
            torch.cuda.synchronize()
            total = (time.perf_counter() - t0) * 1e3
            history = torch.cat([prompt, torch.stack(answer)])
            kv_bytes = 2 * base.num_layers * history.numel() * kv * base.head_dim * torch.finfo(dtype).bits // 8
            rows.append({"turn": turn, "ttft_ms": ttft, "turn_ms": total, "prompt_tokens": prompt.numel(),
                         "memory_bytes": kv_bytes})
    params = lm.num_parameters()
    torch.cuda.empty_cache()
    return params, rows


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
    model = LlamaForCausalLM(hf_cfg).to(device=device, dtype=dtype).eval()
    with torch.no_grad():  # warm-up outside the conversation
        warm = torch.randint(10, cfg.vocab_size, (1, q_len), device=device)
        for _ in range(2):
            model(input_ids=warm, past_key_values=DynamicCache(), use_cache=True)
    cache = DynamicCache()
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
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            out = model(input_ids=query, past_key_values=cache, use_cache=True)
            token = out.logits[:, -1].argmax(-1, keepdim=True)
            torch.cuda.synchronize()
            ttft = (time.perf_counter() - t0) * 1e3
            for _ in range(a_len - 1):
                out = model(input_ids=token, past_key_values=cache, use_cache=True)
                token = out.logits[:, -1].argmax(-1, keepdim=True)
            torch.cuda.synchronize()
            total = (time.perf_counter() - t0) * 1e3
            model(input_ids=token, past_key_values=cache, use_cache=True)  # the last answer token joins the history
            seen += q_len + a_len
            kv_bytes = 2 * base.num_layers * seen * kv * base.head_dim * torch.finfo(dtype).bits // 8
            rows.append({"turn": turn, "ttft_ms": ttft, "turn_ms": total, "prompt_tokens": q_len,
                         "cached_tokens": seen, "memory_bytes": kv_bytes})
    params = sum(p.numel() for p in model.parameters())
    torch.cuda.empty_cache()
    return transformers.__version__, params, rows


def _summary(rows, key="ttft_ms"):
    first = statistics.median(r[key] for r in rows[:3])
    last = statistics.median(r[key] for r in rows[-3:])
    return {"turn1_" + key: first, "last_" + key: last, "last_over_first": last / first}


def plot(doc: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    configs = doc["configs"]
    fig, axes = plt.subplots(2, len(configs), figsize=(6 * len(configs), 8), squeeze=False)
    for col, entry in enumerate(configs):
        for system, style in (("rxt", "-"), ("stateless_no_cache", "--"), ("hf_kv_cache", ":")):
            rows = entry.get(system, {}).get("turns")
            if not rows:
                continue
            turns = [r["turn"] for r in rows]
            axes[0][col].plot(turns, [r["ttft_ms"] for r in rows], style, label=system)
            axes[1][col].plot(turns, [r["memory_bytes"] / 2**20 for r in rows], style, label=system)
        axes[0][col].set_title(f"{entry['config']}: time to first token")
        axes[0][col].set_xlabel("turn")
        axes[0][col].set_ylabel("ms")
        axes[0][col].legend()
        axes[1][col].set_title(f"{entry['config']}: memory held per conversation")
        axes[1][col].set_xlabel("turn")
        axes[1][col].set_ylabel("MiB")
        axes[1][col].legend()
    fig.suptitle(f"Latency against turn ({doc['device']}, {doc['dtype']})")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    parser.add_argument("--turns", type=int, default=100)
    parser.add_argument("--query-tokens", type=int, default=32)
    parser.add_argument("--answer-tokens", type=int, default=32)
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--plot-only", type=Path, default=None, help="re-draw the PNG from a results JSON")
    args = parser.parse_args()
    if args.plot_only:
        plot(json.loads(args.plot_only.read_text()), args.plot_only.with_suffix(".png"))
        return
    if not torch.cuda.is_available():
        parser.error("this benchmark needs a CUDA GPU")
    from rxt.config import RxTConfig

    device, dtype = torch.device("cuda"), getattr(torch, args.dtype)
    configs = []
    for name in args.configs:
        spec = CONFIGS[name]
        cfg = RxTConfig.preset(spec["preset"], **spec["overrides"])
        entry = {"config": name}
        params, rows = run_rxt(cfg, args.turns, args.query_tokens, args.answer_tokens, device, dtype)
        entry["rxt"] = {"parameters": params, "turns": rows, **_summary(rows), **_summary(rows, "turn_ms")}
        params, rows = run_stateless(cfg, args.turns, args.query_tokens, args.answer_tokens, device, dtype)
        entry["stateless_no_cache"] = {"parameters": params, "turns": rows, **_summary(rows), **_summary(rows, "turn_ms")}
        try:
            version, params, rows = run_hf(cfg, args.turns, args.query_tokens, args.answer_tokens, device, dtype)
            entry["hf_kv_cache"] = {"transformers": version, "parameters": params, "turns": rows, **_summary(rows),
                                    **_summary(rows, "turn_ms")}
        except Exception as exc:
            entry["hf_kv_cache"] = {"error": repr(exc)[:500]}
        rxt_last = entry["rxt"]["last_ttft_ms"]
        entry["stateless_over_rxt_ttft_at_last_turn"] = entry["stateless_no_cache"]["last_ttft_ms"] / rxt_last
        entry["stateless_over_rxt_turn_ms_at_last_turn"] = (
            entry["stateless_no_cache"]["last_turn_ms"] / entry["rxt"]["last_turn_ms"]
        )
        print(json.dumps({k: v for k, v in entry.items() if not isinstance(v, dict)}
                         | {s: {k: v for k, v in entry[s].items() if k != "turns"} for s in
                            ("rxt", "stateless_no_cache", "hf_kv_cache")}, indent=1), flush=True)
        configs.append(entry)
    doc = {
        "benchmark": "latency", "device": torch.cuda.get_device_name(), "torch": torch.__version__,
        "dtype": args.dtype, "command": " ".join(["python", *sys.argv]), "turns": args.turns,
        "query_tokens": args.query_tokens, "answer_tokens": args.answer_tokens,
        "note": "turn1/last values are medians of the first and last three turns",
        "configs": configs,
    }
    if args.out:
        atomic_write_json(args.out, doc)
        try:
            plot(doc, args.out.with_suffix(".png"))
        except Exception as exc:
            print(f"plot failed: {exc!r}")


if __name__ == "__main__":
    main()

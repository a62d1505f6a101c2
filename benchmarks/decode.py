"""Decode-speed benchmark: RxT (`generate` on an eager DecodeEngine, and the CUDA-graph engine) beside HF `transformers`.

In one process on one GPU, at `nano` and at a ~1B configuration:
- single-stream decode tokens/s (greedy, batch 1) for: our eager loop, our graph engine, HF `generate`
  (a Llama config of the same size, default cache);
- time to first token for a 64-token query (memory K/V projection + prefill + first token);
- memory-update time (encoder + memory attention over a 128-token interaction);
- aggregate tokens/s with 1, 8, 32, 64, 128 concurrent sessions in the engine;
- a profiler split of one decode step: GPU kernel time against wall time (the rest is launch gaps/host);
- a check that graph and eager decoding give identical greedy tokens.

    python benchmarks/decode.py --out benchmarks/results/decode.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
from bench_utils import time_ms

from rxt.atomic_io import atomic_write_json
from rxt.config import RxTConfig
from rxt.decode_engine import DecodeEngine
from rxt.generation import generate
from rxt.model import RxT
from rxt.sampling import SamplingConfig

CONFIGS = {
    "nano": dict(preset="nano", overrides={}),
    # ~1B decoder (TinyLlama-like widths); the RxT adds an encoder and memory attention of its own.
    "1b": dict(
        preset="nano",
        overrides=dict(dim=2048, num_layers=16, num_heads=16, ffn_hidden_dim=5632, max_seq_len=1024, stm_slots=512,
                       self_attention="gqa", cross_attention="gqa", memory_attention_heads="gqa"),
    ),
}


def _sync_time(fn, warmup: int, iters: int) -> float:
    """Median milliseconds of ``fn`` with CUDA events after warm-up, waiting after every run."""
    return time_ms(fn, torch.device("cuda"), warmup, iters)


def _hf_model(cfg: RxTConfig, device, dtype):
    from transformers import LlamaConfig, LlamaForCausalLM

    kv = cfg.attention_config(cfg.self_attention).num_kv_heads
    hf_cfg = LlamaConfig(
        vocab_size=cfg.vocab_size, hidden_size=cfg.dim, intermediate_size=cfg.ffn_hidden_dim,
        num_hidden_layers=cfg.num_layers, num_attention_heads=cfg.num_heads, num_key_value_heads=kv,
        max_position_embeddings=cfg.max_seq_len, tie_word_embeddings=cfg.tie_lm_head,
    )
    return LlamaForCausalLM(hf_cfg).to(device=device, dtype=dtype).eval()


def bench_config(name: str, args, device, dtype) -> dict:
    spec = CONFIGS[name]
    cfg = RxTConfig.preset(spec["preset"], **spec["overrides"])
    torch.manual_seed(0)
    model = RxT(cfg).to(device=device, dtype=dtype).eval()
    decoder_params = sum(p.numel() for p in model.decoder.parameters())
    out: dict = {"config": name, "rxt_parameters": model.num_parameters(), "decoder_parameters": decoder_params}
    n_new = args.new_tokens
    query = torch.randint(10, cfg.vocab_size, (64,), device=device)
    stm = model.initial_memory(1).to(dtype)

    # Single stream, eager: `generate`, the synchronous driver over a one-off DecodeEngine without graphs.
    sampling = SamplingConfig(max_new_tokens=n_new)
    def eager_generate():
        memory = model.project_memory(stm)
        return generate(model.decoder, query[None], sampling=sampling, eos_id=-1, pad_id=0, memory=memory)

    ms = _sync_time(eager_generate, 1, 3)
    eager_tokens = eager_generate().tokens[0]
    out["eager_tokens_per_s"] = n_new / (ms / 1e3)

    # Single stream, graph engine.
    engine = DecodeEngine(model.decoder, max_slots=max(args.sessions), capacity=64 + n_new + 1)
    def engine_generate(slot_count: int = 1, steps: int = n_new):
        engine.live = [False] * engine.max_slots
        tokens = torch.zeros(engine.max_slots, dtype=torch.long, device=device)
        for s in range(slot_count):
            tokens[s] = engine.start(s, query, stm=stm[:, 0]).argmax()
        produced = [tokens[:slot_count].clone()]
        for _ in range(steps - 1):
            logits = engine.step(tokens[: engine.bucket()])
            tokens[: logits.shape[0]] = logits.argmax(dim=-1)
            produced.append(tokens[:slot_count].clone())
        return torch.stack(produced, dim=1)

    graph_tokens = engine_generate()[0]
    engine.use_cuda_graphs = False
    engine_eager_tokens = engine_generate()[0]
    engine.use_cuda_graphs = True
    # Same static step, captured vs eager: must be identical. Against the dynamic-cache loop the reduction shapes
    # differ, so bf16 near-ties may flip a token on random weights: reported, not required.
    out["graph_matches_eager"] = bool(torch.equal(graph_tokens, engine_eager_tokens))
    out["graph_matches_dynamic_cache_eager"] = bool(torch.equal(graph_tokens, eager_tokens))
    ms = _sync_time(engine_generate, 1, 3)
    out["graph_tokens_per_s"] = n_new / (ms / 1e3)
    # Decode-only rate (without the prefill), from a step loop.
    engine.live = [False] * engine.max_slots
    engine.start(0, query[:8], stm=stm[:, 0])  # short prompt: room for the timed steps
    b_tokens = torch.zeros(1, dtype=torch.long, device=device)
    step_ms = _sync_time(lambda: engine.step(b_tokens), 5, 50)
    out["graph_step_ms"] = step_ms
    out["graph_decode_tokens_per_s"] = 1e3 / step_ms

    # Time to first token: project memory + prefill 64 tokens + first-token logits.
    def first_token():
        engine.live = [False] * engine.max_slots
        return engine.start(0, query, stm=stm[:, 0]).argmax()

    # Captured prefill (memory projection + 64-token prefill + first-token logits in one graph) vs eager.
    out["ttft_ms"] = _sync_time(first_token, 3, 20)
    engine.use_cuda_graphs = False
    out["ttft_eager_ms"] = _sync_time(first_token, 3, 20)
    engine.use_cuda_graphs = True

    # Optional torch.compile of the step before capture: does fusing the small kernels pay off?
    try:
        compiled = DecodeEngine(model.decoder, max_slots=1, capacity=64 + n_new + 1, compile_step=True)
        compiled.start(0, query[:8], stm=stm[:, 0])
        one = torch.zeros(1, dtype=torch.long, device=device)
        out["compiled_graph_step_ms"] = _sync_time(lambda: compiled.step(one), 5, 50)
    except Exception as exc:
        out["compiled_error"] = repr(exc)[:500]

    # Memory update over a 128-token interaction.
    interaction = torch.randint(10, cfg.vocab_size, (1, 128), device=device)
    out["memory_update_ms"] = _sync_time(lambda: model.update_memory(stm, interaction), 3, 20)

    # Aggregate throughput with N concurrent sessions (all slots live, decode steps only).
    aggregate = {}
    for n in args.sessions:
        engine_generate(slot_count=n, steps=2)
        tokens = torch.zeros(engine.bucket(), dtype=torch.long, device=device)
        step = _sync_time(lambda tokens=tokens: engine.step(tokens), 3, 20)
        aggregate[str(n)] = n * 1e3 / step
        engine.live = [False] * engine.max_slots
    out["aggregate_tokens_per_s"] = aggregate
    out["aggregate_64_vs_1"] = aggregate.get("64", 0) / aggregate["1"] if "1" in aggregate else None

    # Profiler split of one eager step vs one graph replay: kernel time vs wall time.
    out["profile"] = _profile(engine, model, stm, query, device)

    # Hugging Face transformers, same size, greedy batch 1 with its default cache.
    try:
        import transformers

        hf = _hf_model(cfg, device, dtype)
        ids = query[None]
        def hf_generate():
            return hf.generate(ids, max_new_tokens=n_new, min_new_tokens=n_new, do_sample=False,
                               pad_token_id=0, eos_token_id=None)
        ms = _sync_time(hf_generate, 1, 3)
        out["hf_transformers"] = transformers.__version__
        out["hf_tokens_per_s"] = n_new / (ms / 1e3)
        out["hf_ttft_ms"] = _sync_time(lambda: hf.generate(ids, max_new_tokens=1, do_sample=False, pad_token_id=0), 2, 10)
        out["graph_vs_hf"] = out["graph_tokens_per_s"] / out["hf_tokens_per_s"]
    except Exception as exc:
        out["hf_error"] = repr(exc)
    torch.cuda.empty_cache()
    return out


def _profile(engine: DecodeEngine, model, stm, query, device) -> dict:
    from torch.profiler import ProfilerActivity, profile

    result = {}
    engine.live = [False] * engine.max_slots
    engine.start(0, query, stm=stm[:, 0])
    tokens = torch.zeros(1, dtype=torch.long, device=device)
    for label, use_graph in (("eager_step", False), ("graph_step", True)):
        engine.use_cuda_graphs = use_graph
        for _ in range(3):
            engine.step(tokens)
        torch.cuda.synchronize()
        steps = 20
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            t0 = time.perf_counter()
            for _ in range(steps):
                engine.step(tokens)
            torch.cuda.synchronize()
            wall = (time.perf_counter() - t0) * 1e3 / steps
        kernel_us = sum(e.self_device_time_total for e in prof.key_averages() if e.self_device_time_total > 0)
        kernels = sum(e.count for e in prof.key_averages() if e.self_device_time_total > 0)
        result[label] = {"wall_ms": wall, "kernel_ms": kernel_us / 1e3 / steps, "kernels_per_step": kernels / steps}
    engine.use_cuda_graphs = True
    engine.live = [False] * engine.max_slots
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--sessions", type=int, nargs="+", default=[1, 8, 32, 64, 128])
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        parser.error("this benchmark needs a CUDA GPU")
    device, dtype = torch.device("cuda"), getattr(torch, args.dtype)
    results = []
    for name in args.configs:
        r = bench_config(name, args, device, dtype)
        print(json.dumps(r, indent=1), flush=True)
        results.append(r)
    doc = {
        "benchmark": "decode", "device": torch.cuda.get_device_name(), "torch": torch.__version__,
        "cuda": torch.version.cuda, "dtype": args.dtype, "command": " ".join(["python", *sys.argv]),
        "new_tokens": args.new_tokens, "results": results,
    }
    if args.out:
        atomic_write_json(args.out, doc)


if __name__ == "__main__":
    main()

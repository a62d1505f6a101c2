"""Training throughput: tokens/s and MFU for the stage-1 (joint LM) step and for a dense decoder LM.

Models: the `mini` RxT preset (encoder MLM on a masked copy + decoder AR reading detached encoder states, as
in joint pre-training) and a ~100M dense decoder-only LM (`rxt.classic.DecoderLM`), at sequence length 1024,
bf16 autocast, AdamW, eager and with `torch.compile`. MFU = achieved model FLOPs / the GPU's dense bf16 peak,
with model FLOPs per token = 6 * (parameters touched per token, embeddings excluded) + 12 * layers * T * D
(attention scores and values, forward + backward), the usual nanoGPT/PaLM accounting.

    python benchmarks/train_throughput.py --out benchmarks/results/train_throughput.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

from rxt.atomic_io import atomic_write_json
from rxt.classic import DecoderLM
from rxt.config import RxTConfig, TransformerConfig
from rxt.model import RxT

PEAK_BF16_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0}


def _peak(name: str) -> float:
    return next((v for k, v in PEAK_BF16_TFLOPS.items() if k in name), float("nan"))


def _non_embedding_params(module: torch.nn.Module, embedding: torch.nn.Embedding) -> int:
    skip = {id(embedding.weight)}
    return sum(p.numel() for p in module.parameters() if id(p) not in skip)


def joint_setup(batch: int, seq: int, device):
    cfg = RxTConfig.preset("mini", max_seq_len=seq)
    model = RxT(cfg).to(device)
    ids = torch.randint(10, cfg.vocab_size, (batch, seq), device=device)
    masked = ids.clone()
    mlm_positions = torch.rand(batch, seq, device=device) < 0.15
    masked[mlm_positions] = 4
    mlm_labels = torch.where(mlm_positions, ids, torch.full_like(ids, -100))

    def step_fn():
        encoded = model.encoder(masked)
        mlm_logits = F.linear(encoded.last_hidden, model.embedding.weight)
        memory = model.decoder.project_memory(encoded.hidden_states.detach())
        logits = model.decoder(ids, memory=memory).logits
        ar = F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), ids[:, 1:].flatten())
        mlm = F.cross_entropy(mlm_logits.flatten(0, 1).float(), mlm_labels.flatten(), ignore_index=-100)
        return ar + mlm

    # Per token: encoder + decoder self-attn/FFN + decoder cross-attn over T memory positions + LM/MLM heads.
    params = _non_embedding_params(model, model.embedding) - sum(p.numel() for p in model.memory_attention.parameters())
    params -= model.stm.initial.numel()
    head = 2 * cfg.vocab_size * cfg.dim  # LM head and MLM head (tied weights, computed twice)
    attn = 12 * cfg.num_layers * seq * cfg.dim * 2  # encoder + decoder self-attention
    attn += 12 * cfg.num_layers * seq * cfg.dim  # decoder memory cross-attention over T encoder states
    flops_per_token = 6 * (params + head) + attn
    return model, step_fn, flops_per_token, cfg


def dense_setup(batch: int, seq: int, device):
    cfg = TransformerConfig(vocab_size=8192, dim=768, num_layers=12, num_heads=12, max_seq_len=seq,
                            ffn_hidden_dim=2048, self_attention="mha")
    model = DecoderLM(cfg).to(device)
    ids = torch.randint(10, cfg.vocab_size, (batch, seq), device=device)

    def step_fn():
        logits = model(ids).logits
        return F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), ids[:, 1:].flatten())

    params = _non_embedding_params(model, model.decoder.embedding)
    flops_per_token = 6 * (params + cfg.vocab_size * cfg.dim) + 12 * cfg.num_layers * seq * cfg.dim
    return model, step_fn, flops_per_token, cfg


def measure(setup, name: str, batch: int, seq: int, compile_model: bool, steps: int, device) -> dict:
    torch.manual_seed(0)
    model, step_fn, flops_per_token, _cfg = setup(batch, seq, device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
    fn = torch.compile(step_fn) if compile_model else step_fn

    def train_step():
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = fn()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    for _ in range(3):
        train_step()
    torch.cuda.synchronize()
    times = []
    for _ in range(steps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        train_step()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end) / 1e3)
    step_s = statistics.median(times)
    tokens_per_s = batch * seq / step_s
    achieved = tokens_per_s * flops_per_token / 1e12
    peak = _peak(torch.cuda.get_device_name())
    out = {
        "model": name, "compile": compile_model, "batch": batch, "seq_len": seq,
        "parameters": sum(p.numel() for p in model.parameters()),
        "step_ms": step_s * 1e3, "tokens_per_s": tokens_per_s, "model_tflops": achieved,
        "flops_per_token": flops_per_token, "peak_tflops": peak, "mfu": achieved / peak,
    }
    print(json.dumps(out), flush=True)

    torch.cuda.empty_cache()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seq-len", type=int, default=1024)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--models", nargs="+", default=["joint-mini", "dense-100m"])
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        parser.error("this benchmark needs a CUDA GPU")
    torch.backends.cuda.matmul.allow_tf32 = True
    device = torch.device("cuda")
    setups = {"joint-mini": joint_setup, "dense-100m": dense_setup}
    results = []
    for name in args.models:
        for compile_model in (False, True):
            try:
                results.append(measure(setups[name], name, args.batch, args.seq_len, compile_model, args.steps, device))
            except Exception as exc:
                results.append({"model": name, "compile": compile_model, "error": repr(exc)[:500]})
                print(results[-1], flush=True)
    doc = {
        "benchmark": "train_throughput", "device": torch.cuda.get_device_name(), "torch": torch.__version__,
        "cuda": torch.version.cuda, "command": " ".join(["python", *sys.argv]), "dtype": "bfloat16 autocast",
        "mfu_definition": "model FLOPs (6N + 12*L*T*D per token, embeddings excluded, heads included) / peak",
        "results": results,
    }
    if args.out:
        atomic_write_json(args.out, doc)


if __name__ == "__main__":
    main()

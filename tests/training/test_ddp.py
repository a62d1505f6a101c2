"""DDP under torchrun with 2 CPU processes (gloo): identical weights on both ranks, equal to one process."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[2]

SCRIPT = textwrap.dedent(
    """
    import os, sys
    import torch
    import torch.nn.functional as F
    from rxt.classic import DecoderLM
    from rxt.config import TransformerConfig
    from training.config import TrainConfig
    from training.distributed import cleanup_distributed, dist_env
    from training.trainer import StepOutput, Trainer

    class NextTokenTrainer(Trainer):
        def compute_loss(self, model, batch):
            ids = batch["input_ids"]
            logits = model(ids[:, :-1]).logits
            loss = F.cross_entropy(logits.reshape(-1, logits.size(-1)), ids[:, 1:].reshape(-1))
            return StepOutput(loss, {"n": float(ids.size(0))}, ids[:, 1:].numel())

    out_dir, batch_size = sys.argv[1], int(sys.argv[2])
    g = torch.Generator().manual_seed(0)
    data = [{"input_ids": torch.randint(0, 128, (13,), generator=g)} for _ in range(40)]
    torch.manual_seed(int(os.environ.get("RANK", "0")) + 7)  # different init per rank: DDP must broadcast rank 0's
    if dist_env().rank == 0:
        torch.manual_seed(7)
    model = DecoderLM(TransformerConfig.preset("tiny"))
    cfg = TrainConfig(lr=1e-2, warmup_steps=1, max_steps=6, batch_size=batch_size, grad_accum_steps=2,
                      device="cpu", output_dir=out_dir, log_every=1, keep_last=0, eval_every=3)
    trainer = NextTokenTrainer(model, cfg, data, eval_dataset=data[:10])
    trainer.train()
    rank = dist_env().rank
    torch.save(trainer.unwrapped_model.state_dict(), os.path.join(out_dir, f"weights-rank{rank}.pt"))
    torch.save({"history": trainer.history, "tokens": trainer.tokens_seen},
               os.path.join(out_dir, f"history-rank{rank}.pt"))
    trainer.close()
    cleanup_distributed()
    """
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR",
                                                            "MASTER_PORT")}
    env.update(PYTHONPATH=str(REPO), OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="")
    return env


def test_two_rank_ddp_matches_single_process(tmp_path):
    script = tmp_path / "ddp_train.py"
    script.write_text(SCRIPT)
    ddp_dir, single_dir = tmp_path / "ddp", tmp_path / "single"
    ddp_dir.mkdir()
    single_dir.mkdir()
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--nnodes", "1",
           "--master_addr", "127.0.0.1", "--master_port", str(_free_port()), str(script), str(ddp_dir), "2"]
    ddp = subprocess.Popen(cmd, cwd=REPO, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    # the single-process reference on the same global batch (4 x 1 rank x 2 accum = 2 x 2 ranks x 2 accum)
    single = subprocess.run([sys.executable, str(script), str(single_dir), "4"], check=False, cwd=REPO, env=_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=120)
    ddp_out, _ = ddp.communicate(timeout=120)
    assert single.returncode == 0, single.stdout.decode()[-3000:]
    assert ddp.returncode == 0, ddp_out.decode()[-3000:]

    w0 = torch.load(ddp_dir / "weights-rank0.pt")
    w1 = torch.load(ddp_dir / "weights-rank1.pt")
    ref = torch.load(single_dir / "weights-rank0.pt")
    for k in ref:
        assert torch.equal(w0[k], w1[k]), f"ranks differ on {k}"
        assert torch.allclose(w0[k], ref[k], atol=1e-5, rtol=0), f"{k}: {(w0[k] - ref[k]).abs().max()}"

    h0 = torch.load(ddp_dir / "history-rank0.pt", weights_only=False)
    hs = torch.load(single_dir / "history-rank0.pt", weights_only=False)
    assert h0["tokens"] == hs["tokens"] == 6 * 8 * 12  # global tokens are counted over both ranks
    for a, b in zip(h0["history"]["train"], hs["history"]["train"]):
        assert a["loss"] == pytest.approx(b["loss"], abs=1e-5)
    for a, b in zip(h0["history"]["eval"], hs["history"]["eval"]):
        assert a["val_loss"] == pytest.approx(b["val_loss"], abs=1e-5)
    # only rank 0 writes run artefacts, and they are complete
    assert (ddp_dir / "final" / "model.safetensors").exists()
    assert (ddp_dir / "metrics.json").exists() and (ddp_dir / "loss_curves.png").exists()
    assert [p.name for p in (ddp_dir / "checkpoints").iterdir()] == ["step-00000006"]


DEFERRED_SCRIPT = textwrap.dedent(
    """
    import json, os, sys
    import torch
    import torch.nn.functional as F
    from rxt.classic import DecoderLM
    from rxt.config import TransformerConfig
    from training.callbacks import TokenCounter
    from training.config import TrainConfig
    from training.distributed import cleanup_distributed, dist_env
    from training.trainer import StepOutput, Trainer

    RANK = dist_env().rank

    class DeviceMetricsTrainer(Trainer):
        def compute_loss(self, model, batch):
            ids = batch["input_ids"]
            logits = model(ids[:, :-1]).logits
            loss = F.cross_entropy(logits.reshape(-1, logits.size(-1)), ids[:, 1:].reshape(-1))
            if self.step == 2 and RANK == 1:  # a NaN loss value on ONE rank (its gradients stay finite)
                loss = loss + torch.tensor(float("nan"))
            return StepOutput(loss, {"acc": (logits.argmax(-1) == ids[:, 1:]).float().mean()}, ids[:, 1:].numel())

    out_dir = sys.argv[1]
    g = torch.Generator().manual_seed(0)
    data = [{"input_ids": torch.randint(0, 128, (13,), generator=g)} for _ in range(40)]
    torch.manual_seed(7)
    cfg = TrainConfig(lr=1e-2, warmup_steps=1, max_steps=6, batch_size=2, device="cpu", output_dir=out_dir,
                      log_every=4, keep_last=0, nonfinite_loss_patience=1)
    counter = TokenCounter()  # reads the global token count every step: a read-back (collective) on every rank
    trainer = DeviceMetricsTrainer(DecoderLM(TransformerConfig.preset("tiny")), cfg, data, callbacks=[counter])
    trainer.train()
    torch.save(trainer.unwrapped_model.state_dict(), os.path.join(out_dir, f"weights-rank{RANK}.pt"))
    with open(os.path.join(out_dir, f"state-rank{RANK}.json"), "w") as f:
        json.dump({"skipped": trainer.skipped_steps, "tokens": trainer.tokens_seen, "counter": counter.tokens,
                   "steps": [e["step"] for e in trainer.history["train"]]}, f)
    trainer.close()
    cleanup_distributed()
    """
)


def test_two_rank_ddp_skips_a_one_rank_nan_step_on_both_ranks(tmp_path):
    """Metrics read back only at log steps (4 and the last, 6), the skip decided on the device and agreed by
    both ranks: a NaN loss on one rank leaves the replicas identical."""
    script = tmp_path / "ddp_deferred.py"
    script.write_text(DEFERRED_SCRIPT)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--nnodes", "1",
           "--master_addr", "127.0.0.1", "--master_port", str(_free_port()), str(script), str(tmp_path)]
    done = subprocess.run(cmd, cwd=REPO, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=120,
                          check=False)
    assert done.returncode == 0, done.stdout.decode()[-3000:]
    w0, w1 = (torch.load(tmp_path / f"weights-rank{r}.pt") for r in (0, 1))
    for k in w0:
        assert torch.equal(w0[k], w1[k]), f"ranks differ on {k}"
        assert torch.isfinite(w0[k]).all(), k
    states = [json.loads((tmp_path / f"state-rank{r}.json").read_text()) for r in (0, 1)]
    assert states[0] == states[1]
    assert states[0]["skipped"] == 1 and states[0]["steps"] == [4, 6]
    assert states[0]["tokens"] == states[0]["counter"] == 6 * 2 * 2 * 12  # global tokens, summed over ranks

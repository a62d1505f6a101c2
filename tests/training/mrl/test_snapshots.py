"""`train.save_every` in an MRL run: the policy saved every N updates as a model folder that loads, the newest
`keep_last` kept, and the last snapshot equal to the final model."""

from __future__ import annotations

import torch

from rxt.model import RxT
from rxt.tokenizer import RxTokenizer
from training.config import load_config
from training.mrl.trainer import list_snapshots
from training.stages import get_stage


def _tiny_run(tmp_path, save_every: int, keep_last: int):
    stage = get_stage("mrl")
    cfg = load_config("examples/configs/tiny_mrl.yaml", stage.CONFIG_CLASS)
    cfg.train.output_dir = str(tmp_path)
    cfg.curriculum[0].episodes_per_epoch = 8  # 2 epochs of one 8-episode update each
    cfg.eval_episodes = 0
    cfg.train.save_every, cfg.train.keep_last = save_every, keep_last
    return stage.run_stage(cfg)


def test_the_last_snapshot_is_the_final_model_and_keep_last_prunes(tmp_path):
    final = _tiny_run(tmp_path, save_every=1, keep_last=1)
    (kept,) = list_snapshots(tmp_path)  # update-000001 was saved, then deleted by keep_last
    assert kept.name == "update-000002"
    assert not list((tmp_path / "snapshots").glob(".partial-*"))  # written whole, renamed into place
    snapshot, last = RxT.from_pretrained(kept), RxT.from_pretrained(final)
    for (name, a), (_, b) in zip(snapshot.state_dict().items(), last.state_dict().items(), strict=True):
        assert torch.equal(a, b), name
    assert RxTokenizer.from_pretrained(kept).vocab_size == RxTokenizer.from_pretrained(final).vocab_size


def test_keep_last_zero_keeps_every_snapshot_and_they_differ(tmp_path):
    _tiny_run(tmp_path, save_every=1, keep_last=0)
    first, second = list_snapshots(tmp_path)
    assert (first.name, second.name) == ("update-000001", "update-000002")
    a, b = RxT.from_pretrained(first).state_dict(), RxT.from_pretrained(second).state_dict()
    assert any(not torch.equal(a[k], b[k]) for k in a)  # an IMPO update between them changed the policy

"""The batched memory update (`rxt.memory_update.MemoryUpdater`): the graph path's staging (bucketed, padded rows,
the padding mask as the stacked key mask, the shared buffers and pool) run on the CPU with each "graph" replayed
eagerly, against `RxT.update_memory` on each unpadded interaction alone, in float64."""

import itertools

import pytest
import torch

from rxt.config import RxTConfig
from rxt.graph_capture import GraphPool
from rxt.memory_update import LENGTH_BUCKETS, MemoryUpdater
from rxt.model import RxT


class EagerGraph:
    """A stand-in CUDA graph: ``replay`` runs the captured function again (its results land in its buffers)."""

    def __init__(self, run):
        self.run = run

    def replay(self):
        self.run()


@pytest.fixture
def pools(monkeypatch):
    """Every capture runs eagerly; the pools used, in capture order."""
    used = []

    def capture(self, run, *, stream=None, before_run=None, warmups=2):
        used.append(self)
        if before_run is not None:
            before_run()
        return EagerGraph(run), run()

    monkeypatch.setattr(GraphPool, "capture", capture)
    return used


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    m = RxT(RxTConfig.preset("tiny", max_seq_len=64)).double().eval()
    with torch.no_grad():
        m.stm.initial.normal_()
    return m


def _graphed(model, **kwargs):
    updater = MemoryUpdater(model, **kwargs)
    updater.use_cuda_graphs = True  # the staging code path, with the eager stand-in graphs of ``pools``
    return updater


def _alone(model, stm, rows):
    """Each interaction through `RxT.update_memory` alone, unpadded (an empty one keeps its memory)."""
    out = []
    for i, row in enumerate(rows):
        if not row:
            out.append(stm[:, i])
            continue
        out.append(model.update_memory(stm[:, i : i + 1], torch.tensor([row]))[:, 0])
    return torch.stack(out, dim=1)


@pytest.mark.parametrize("as_list", [False, True])
@pytest.mark.parametrize("lengths", [(3, 11, 6), (7, 9, 2, 13), (5,)])
def test_graph_path_equals_each_interaction_alone(model, pools, as_list, lengths):
    """Padded to the batch bucket (3 rows -> 4, 4 rows -> 4, 1 -> 1) and the length bucket (16), with the STMs
    passed stacked or as one tensor per session (stacked straight into the graph's buffer, contiguous or not)."""
    torch.manual_seed(5)
    rows = [torch.randint(4, 128, (n,)).tolist() for n in lengths]
    stm = torch.randn(model.initial_memory(len(rows)).shape, dtype=torch.float64)
    updater = _graphed(model, max_batch=8)
    given = list(stm.unbind(1)) if as_list else stm
    together = updater(given, rows)
    torch.testing.assert_close(together, _alone(model, stm, rows))
    assert updater.graphed and set(updater._graphs) == {updater._key(len(rows), max(lengths))}
    assert updater._key(len(rows), max(lengths))[1] == 16
    # a second call replays the same graph over new inputs
    stm2 = torch.randn_like(stm)
    torch.testing.assert_close(updater(stm2, rows[::-1]), _alone(model, stm2, rows[::-1]))
    assert len(pools) == 1


def test_an_empty_interaction_keeps_its_memory(model, pools):
    torch.manual_seed(6)
    rows = [torch.randint(4, 128, (9,)).tolist(), [], torch.randint(4, 128, (4,)).tolist()]
    stm = torch.randn(model.initial_memory(3).shape, dtype=torch.float64)
    together = _graphed(model)(list(stm.unbind(1)), rows)
    torch.testing.assert_close(together[:, 1], stm[:, 1], rtol=0, atol=0)
    torch.testing.assert_close(together, _alone(model, stm, rows))
    eager = MemoryUpdater(model)(stm, rows)  # the CPU path: the unpadded batch through RxT.update_memory
    torch.testing.assert_close(eager, together)


def test_bucketed_equals_unbucketed(model, pools):
    """The same interactions in a 2-row bucket of 16 positions and in a 16-row bucket of 64 positions: the padding
    changes nothing (float64)."""
    torch.manual_seed(7)
    rows = [torch.randint(4, 128, (n,)).tolist() for n in (12, 5)]
    stm = torch.randn(model.initial_memory(2).shape, dtype=torch.float64)
    small = _graphed(model, max_batch=2)(stm, rows)
    wide = _graphed(model, max_batch=16)
    wide._key = lambda n, tokens: (16, 64)  # every call in the widest bucket
    torch.testing.assert_close(wide(stm, rows), small)


def test_graphs_share_one_pool_and_one_set_of_buffers(model, pools):
    """Every update graph captures into the updater's one pool and reads and writes views of one set of buffers
    (made for ``max_batch`` rows at the first capture), so the graphs hold one set, not one per bucket."""
    torch.manual_seed(8)
    updater = _graphed(model, max_batch=8)
    stm = model.initial_memory(8)
    for n, length in [(1, 5), (3, 20), (8, 40), (2, 60)]:
        rows = [torch.randint(4, 128, (length,)).tolist() for _ in range(n)]
        torch.testing.assert_close(updater(stm[:, :n], rows), _alone(model, stm[:, :n], rows))
    assert len(updater._graphs) == 4 and pools == [updater.graph_pool] * 4
    for name in ("stm", "out", "tokens"):
        assert len({buffers[name].untyped_storage().data_ptr() for _, buffers in updater._graphs.values()}) == 1


def test_buffers_grow_and_graphs_are_captured_again(model, pools):
    """Without ``max_batch`` the buffers fit the first batch; a larger batch remakes them and drops the graphs that
    read the old ones (captured again on their next use)."""
    updater = _graphed(model)
    stm = model.initial_memory(4)
    rows = [[5, 6, 7], [8, 9], [10], [11, 12]]
    updater(stm[:, :1], rows[:1])
    assert updater._rows == 1
    first_pool = updater.graph_pool
    torch.testing.assert_close(updater(stm, rows), _alone(model, stm, rows))
    assert updater._rows == 4 and set(updater._graphs) == {(4, 16)}
    # the dropped graphs' pool is released with them: the new graphs capture into a new one
    assert updater.graph_pool is not first_pool and pools == [first_pool, updater.graph_pool]
    torch.testing.assert_close(updater(stm[:, :1], rows[:1]), _alone(model, stm[:, :1], rows[:1]))


def test_length_buckets_keep_padding_under_half():
    """A 45-token interaction (the serving benchmark's) runs in 48 positions, not 64; past 32 each bucket is at
    most 1.5x the one below."""
    model = RxT(RxTConfig.preset("tiny", max_seq_len=256))
    updater = MemoryUpdater(model)
    assert updater._key(64, 45) == (64, 48)
    assert updater._key(3, 200) == (4, 256)  # capped at max_seq_len
    for low, high in itertools.pairwise(LENGTH_BUCKETS[1:]):
        assert high <= 1.5 * low


def test_compiled_pass_is_traced_whole_once_for_every_bucket(model, pools):
    """``compile_pass``: the pass traced as one graph (fullgraph: a break raises) with dynamic shapes, so the batch
    and length buckets after the first share its compile (a single row is specialised: one more), and the result
    equals the plain pass (the counting backend runs the traced graph as it is; float64)."""
    compiles = []

    def counting(graph_module, example_inputs):
        compiles.append(len(graph_module.graph.nodes))
        return graph_module.forward

    torch._dynamo.reset()
    plain = _graphed(model, max_batch=16)
    fused = _graphed(model, max_batch=16, compile_pass=True, compile_backend=counting)
    torch.manual_seed(8)
    for lengths in ((3, 11, 6), (7, 20, 2, 13, 5), (30, 4, 9, 9, 9, 9, 9, 9, 2), (5,)):
        rows = [torch.randint(4, 128, (n,)).tolist() for n in lengths]
        stm = torch.randn(model.initial_memory(len(rows)).shape, dtype=torch.float64)
        torch.testing.assert_close(fused(stm, rows), plain(stm, rows))
        torch.testing.assert_close(fused(stm, rows), _alone(model, stm, rows))
    assert len(fused._graphs) == 4  # four (batch, length) buckets: (4, 16), (8, 32), (16, 32), (1, 16)
    assert 1 <= len(compiles) <= 2, compiles
    assert min(compiles) > 50  # the whole pass (encoder and memory attention) in each traced graph

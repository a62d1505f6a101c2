"""The slot-based decode engine (eager path on CPU) against plain generation."""

import pytest
import torch

from rxt.config import RxTConfig
from rxt.decode_engine import DecodeEngine, pad_rows
from rxt.generation import generate
from rxt.model import RxT
from rxt.sampling import SamplingConfig


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    m = RxT(RxTConfig.preset("tiny")).eval()
    with torch.no_grad():
        m.stm.initial.normal_()
    return m


def _reference(model, prompt, stm, n):
    result = generate(model.decoder, prompt[None], sampling=SamplingConfig(max_new_tokens=n), eos_id=-1, pad_id=0,
                      memory=model.project_memory(stm))
    return result.tokens[0].tolist()


def test_continuous_batching_matches_sessions_run_alone(model):
    torch.manual_seed(1)
    prompts = [torch.randint(4, 128, (n,)) for n in (5, 9, 3, 7)]
    stms = [torch.randn_like(model.initial_memory(1)) for _ in prompts]
    budgets = [6, 3, 8, 5]
    expected = [_reference(model, p, s, n) for p, s, n in zip(prompts, stms, budgets)]
    engine = DecodeEngine(model.decoder, max_slots=4, capacity=32, buckets=(1, 2, 4))
    produced = {i: [] for i in range(4)}
    next_token = torch.zeros(4, dtype=torch.long)
    slot_of = {}
    joins = {0: [0, 1], 2: [2], 4: [3]}  # sessions join between steps
    step = 0
    while any(len(produced[i]) < budgets[i] for i in range(4)):
        for session in joins.get(step, []):
            slot = engine.free_slot()
            logits = engine.start(slot, prompts[session], model.project_memory(stms[session]))
            slot_of[session] = slot
            next_token[slot] = logits.argmax()
            produced[session].append(int(next_token[slot]))
        live = [s for s in slot_of if len(produced[s]) < budgets[s]]
        for s in list(slot_of):
            if len(produced[s]) >= budgets[s] and engine.live[slot_of[s]]:
                engine.release(slot_of[s])  # leaves between steps
        if live:
            logits = engine.step(next_token[: engine.bucket()])
            for s in live:
                if len(produced[s]) < budgets[s]:
                    next_token[slot_of[s]] = logits[slot_of[s]].argmax()
                    produced[s].append(int(next_token[slot_of[s]]))
        step += 1
        assert step < 100
    for i in range(4):
        assert produced[i] == expected[i], i


def test_slot_reuse_and_limits(model):
    engine = DecodeEngine(model.decoder, max_slots=2, capacity=8)
    mem = model.project_memory(model.initial_memory(1))
    slot = 0
    assert engine.start(slot, torch.tensor([5, 6, 7]), mem).shape == (128,)
    assert engine.free_slot() == 1
    with pytest.raises(ValueError, match="slot 0 is live"):
        engine.start(0, torch.tensor([5]), mem)
    for _ in range(4):
        engine.step(torch.tensor([9, 0]))
    with pytest.raises(ValueError, match="slot 0 is full"):
        engine.step(torch.tensor([9, 0]))
    engine.release(slot)
    with pytest.raises(ValueError, match="capacity"):
        engine.start(0, torch.arange(8) + 4, mem)
    assert engine.bucket() == 1


def test_start_from_stm_equals_start_from_projected_memory(model):
    stm = torch.randn_like(model.initial_memory(1))
    prompt = torch.randint(4, 128, (6,))
    a = DecodeEngine(model.decoder, max_slots=2, capacity=16)
    b = DecodeEngine(model.decoder, max_slots=2, capacity=16)
    la = a.start(1, prompt, model.project_memory(stm))
    lb = b.start(1, prompt, stm=stm[:, 0])
    torch.testing.assert_close(la, lb)
    torch.testing.assert_close(a.step(torch.tensor([0, 7])), b.step(torch.tensor([0, 7])))
    with pytest.raises(ValueError, match="not both"):
        b.start(0, prompt, model.project_memory(stm), stm=stm[:, 0])


@pytest.mark.parametrize("as_lists", [False, True])
def test_graphed_prefill_staging_matches_eager(model, monkeypatch, as_lists):
    """The graph path's staging (bucketed rows, padding rows, copies into non-contiguous slots), with each
    "graph" replayed eagerly so it runs on the CPU: the same logits and the same next step as the eager path."""

    class EagerGraph:
        def __init__(self, engine, batch, bucket):
            self.run = lambda: engine._prefill(batch, bucket)
            self.logits, self.memory = self.run()

        def replay(self):
            logits, memory = self.run()
            self.logits.copy_(logits)
            for kv, new in zip(self.memory, memory):
                if kv is not None:
                    kv[0].copy_(new[0])
                    kv[1].copy_(new[1])

    def fake_capture(self, batch, bucket):
        graph = EagerGraph(self, batch, bucket)
        self._prefill_graphs[(batch, bucket)] = (graph, graph.logits, graph.memory)
        return self._prefill_graphs[(batch, bucket)]

    monkeypatch.setattr(DecodeEngine, "_capture_prefill", fake_capture)
    torch.manual_seed(2)
    prompts = [torch.randint(4, 128, (n,)) for n in (5, 9, 3)]
    if as_lists:  # as the runtime passes them: padded in Python, one tensor for the batch
        prompts = [p.tolist() for p in prompts]
    stm = torch.randn(model.initial_memory(3).shape)
    slots = [3, 0, 2]
    graphed = DecodeEngine(model.decoder, max_slots=4, capacity=32)
    graphed.use_cuda_graphs = True  # the staging code path, with the eager stand-in graphs above
    eager = DecodeEngine(model.decoder, max_slots=4, capacity=32)
    torch.testing.assert_close(graphed.start_batch(slots, prompts, stm=stm), eager.start_batch(slots, prompts, stm=stm))
    first = torch.as_tensor(prompts[0])
    one = graphed.start(1, first, stm=stm[:, 0])  # a single row takes the same path (batch bucket 1)
    torch.testing.assert_close(one, eager.start(1, first, stm=stm[:, 0]))
    # 3 rows in the batch bucket of 4 with 9 tokens in the length bucket of 16; then 1 row.
    assert set(graphed._prefill_graphs) == {(4, 16), (1, 16)}
    step = torch.tensor([11, 7, 12, 13])
    torch.testing.assert_close(graphed.step(step), eager.step(step))


def test_start_batch_takes_the_sessions_memories_one_by_one(model):
    torch.manual_seed(9)
    prompts = [torch.randint(4, 128, (n,)).tolist() for n in (4, 7)]
    stm = torch.randn(model.initial_memory(2).shape)
    stacked, separate = (DecodeEngine(model.decoder, max_slots=3, capacity=32) for _ in range(2))
    torch.testing.assert_close(separate.start_batch([2, 0], prompts, stm=list(stm.unbind(1))),
                               stacked.start_batch([2, 0], prompts, stm=stm))
    torch.testing.assert_close(separate.start_batch([1], prompts[:1], stm=[stm[:, 0]]),
                               stacked.start_batch([1], prompts[:1], stm=stm[:, :1]))
    step = torch.tensor([5, 6, 7])
    torch.testing.assert_close(separate.step(step), stacked.step(step))


def test_pad_rows_from_lists_equals_from_tensors():
    rows = [[5, 6, 7], [8], [9, 10, 11, 12]]
    from_lists = pad_rows(rows, 5, 6, pad_id=3)
    assert from_lists.dtype == torch.long and from_lists.shape == (5, 6)
    assert from_lists.tolist() == [[5, 6, 7, 3, 3, 3], [8, 3, 3, 3, 3, 3], [9, 10, 11, 12, 3, 3], [3] * 6, [3] * 6]
    assert torch.equal(pad_rows([torch.tensor(r) for r in rows], 5, 6, pad_id=3), from_lists)


def test_step_without_tokens_feeds_the_engine_token_buffer(model):
    """``step()`` feeds what the caller wrote into ``engine.tokens``: the same logits as passing the tokens."""
    torch.manual_seed(4)
    prompts = [torch.randint(4, 128, (n,)) for n in (5, 7)]
    stm = torch.randn(model.initial_memory(2).shape)
    given, buffered = (DecodeEngine(model.decoder, max_slots=2, capacity=32) for _ in range(2))
    for engine in (given, buffered):
        engine.start_batch([0, 1], prompts, stm=stm)
    for tokens in (torch.tensor([11, 12]), torch.tensor([13, 14])):
        buffered.tokens.copy_(tokens)
        torch.testing.assert_close(buffered.step(), given.step(tokens))


def _copy_into(dst, src):
    if isinstance(dst, torch.Tensor):
        dst.copy_(src)
    elif isinstance(dst, (list, tuple)):
        for d, s in zip(dst, src, strict=True):
            if d is not None:
                _copy_into(d, s)


class _ReplayedGraph:
    """A stand-in CUDA graph: ``replay`` runs the captured function again, its results copied into the outputs."""

    def __init__(self, run, out):
        self.run, self.out = run, out

    def replay(self):
        _copy_into(self.out, self.run())


def _eager_captures(monkeypatch, *, run_warmups: bool) -> list:
    """Every `GraphPool.capture` runs eagerly on the CPU (``run_warmups``: its warm-ups too, as a real capture
    does, with ``before_run`` before each); returns the pools captured into, in order."""
    from rxt.graph_capture import GraphPool

    used = []

    def capture(self, run, *, stream=None, before_run=None, warmups=2):
        used.append(self)
        for _ in range(warmups if run_warmups else 0):
            if before_run is not None:
                before_run()
            run()
        if before_run is not None:
            before_run()
        out = run()  # a real capture runs nothing: the stand-in's output is what the first replay overwrites
        return _ReplayedGraph(run, out), out

    monkeypatch.setattr(GraphPool, "capture", capture)
    return used


def test_step_and_prefill_graphs_share_one_pool_and_one_stage(model, monkeypatch):
    """Every decode-step and prefill graph of an engine captures into its one pool (`rxt.graph_capture`), and the
    prefills of every batch bucket stage their rows in views of one set of buffers and one cache; with each
    "graph" replayed eagerly on the CPU, the logits and the next steps equal the eager engine's."""
    used = _eager_captures(monkeypatch, run_warmups=False)
    torch.manual_seed(3)
    prompts = [torch.randint(4, 128, (n,)).tolist() for n in (5, 9, 3)]
    stm = torch.randn(model.initial_memory(3).shape)
    graphed = DecodeEngine(model.decoder, max_slots=4, capacity=32)
    graphed.use_cuda_graphs = True
    eager = DecodeEngine(model.decoder, max_slots=4, capacity=32)
    # the graphed engine gets the sessions' memories one by one (stacked into its staging), the eager one stacked
    torch.testing.assert_close(graphed.start_batch([0, 2, 3], prompts, stm=list(stm.unbind(1))),
                               eager.start_batch([0, 2, 3], prompts, stm=stm))
    torch.testing.assert_close(graphed.start(1, torch.tensor(prompts[1]), stm=stm[:, 1]),
                               eager.start(1, torch.tensor(prompts[1]), stm=stm[:, 1]))
    for _ in range(3):
        step = torch.randint(4, 128, (4,))
        torch.testing.assert_close(graphed.step(step), eager.step(step))
    assert set(graphed._prefill_graphs) == {(4, 16), (1, 16)} and set(graphed._graphs) == {4}
    assert len(used) == 3 and all(pool is graphed.graph_pool for pool in used)
    (four, cache4), (one, cache1) = graphed._stages[4], graphed._stages[1]
    assert four["stm"].untyped_storage().data_ptr() == one["stm"].untyped_storage().data_ptr()
    assert cache4.k.untyped_storage().data_ptr() == cache1.k.untyped_storage().data_ptr()
    inputs = {graphed._prefill_inputs(*key)["flat"].untyped_storage().data_ptr() for key in graphed._prefill_graphs}
    assert len(inputs) == 1


def test_argmax_into_tokens_feeds_the_next_step_and_survives_a_capture(model, monkeypatch):
    """``argmax_into_tokens``: each step writes every row's argmax into the token buffer, so ``step()`` decodes
    greedily with no other call, as a caller feeding the argmax by hand does; a capture mid-decode (a new bucket:
    its warm-ups run the step and write their own argmax) leaves the live rows' tokens as they were."""
    _eager_captures(monkeypatch, run_warmups=True)
    torch.manual_seed(4)
    stm = torch.randn(model.initial_memory(3).shape)
    prompts = [torch.randint(4, 128, (n,)) for n in (4, 6, 5)]
    fed = DecodeEngine(model.decoder, max_slots=4, capacity=32, buckets=(1, 2, 4), argmax_into_tokens=True)
    fed.use_cuda_graphs = True
    by_hand = DecodeEngine(model.decoder, max_slots=4, capacity=32, buckets=(1, 2, 4))
    tokens = torch.zeros(4, dtype=torch.long)
    for slot in range(2):
        first = fed.start(slot, prompts[slot], stm=stm[:, slot]).argmax()
        assert first == by_hand.start(slot, prompts[slot], stm=stm[:, slot]).argmax()
        fed.tokens[slot] = tokens[slot] = first
    for step in range(6):
        if step == 3:  # a third session joins: the step moves to bucket 4, captured now, mid-decode
            first = fed.start(2, prompts[2], stm=stm[:, 2]).argmax()
            assert first == by_hand.start(2, prompts[2], stm=stm[:, 2]).argmax()
            fed.tokens[2] = tokens[2] = first
        b = by_hand.bucket()
        logits = by_hand.step(tokens[:b])
        torch.testing.assert_close(fed.step(), logits)
        tokens[:b] = logits.argmax(dim=-1)  # by hand: the argmax fed back
        assert torch.equal(fed.tokens[:b], tokens[:b])
    assert set(fed._graphs) == {2, 4}


def test_host_ids_equals_torch_tensor_of_the_list():
    """The C-side conversion the serving lane uses for its padded ids: the very tensor ``torch.tensor`` makes."""
    from rxt.decode_engine import host_ids, pad_rows

    for values in ([], [0], [5, 1, 2**40, -3, 8191], list(range(3000))):
        got = host_ids(values)
        assert got.dtype == torch.long and torch.equal(got, torch.tensor(values, dtype=torch.long))
    rows = [[1, 2, 3], [4], []]
    assert torch.equal(pad_rows(rows, 4, 3, pad_id=9),
                       torch.tensor([[1, 2, 3], [4, 9, 9], [9, 9, 9], [9, 9, 9]], dtype=torch.long))

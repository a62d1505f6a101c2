"""The executor's and the commit path's CUDA-only code (skipped without a GPU): pinned token buffers reused across
pipelined steps, the greedy rows' in-place argmax beside the per-row choice, and committed STMs kept on the
device by the in-process store. Run on a GPU machine:

    python -m pytest tests/rxnn_runtime/test_runtime_cuda.py -q
"""

import pytest
import torch
from runtime_helpers import EventLog, tiny_model

from rxnn_runtime.active_turn import ActiveTurn
from rxnn_runtime.events import AnswerDone, MemoryUpdated
from rxnn_runtime.messages import GenerationOptions, Query
from rxnn_runtime.model_executor import ModelExecutor
from rxnn_runtime.reactive_model import ReactiveModel
from rxnn_runtime.turn_scheduler import StepPlan

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def _cuda_model():
    model, tokenizer = tiny_model()
    return model.to("cuda"), tokenizer


def _turns(tokenizer, temperatures):
    turns = []
    for i, temperature in enumerate(temperatures):
        options = GenerationOptions(max_new_tokens=8, temperature=temperature, seed=i if temperature else None)
        turn = ActiveTurn(Query(f"s{i}", "q", options), 1, tokenizer.encode("hello there" + " again" * i), slot=i)
        turns.append(turn)
    return turns


def _tokens(model, tokenizer, temperatures, pipelined: bool, steps: int = 6):
    """Each row's tokens over a prefill and ``steps`` decode steps, collected step by step or pipelined (step k+1
    launched before step k is collected, as the runtime runs them)."""
    executor = ModelExecutor(model, max_slots=4, pad_id=tokenizer.pad_id, eos_id=tokenizer.eos_id)
    stm = model.initial_memory(1)[:, 0]
    turns = _turns(tokenizer, temperatures)
    plans = [StepPlan(admit=turns)] + [StepPlan(decode=turns) for _ in range(steps)]
    tokens = {t.session_id: [] for t in turns}
    results = []
    if pipelined:
        inflight = None
        for plan in plans:
            launched = executor.launch(plan, lambda sid: stm)
            if inflight is not None:
                results.append(executor.collect(inflight))
            inflight = launched
        results.append(executor.collect(inflight))
    else:
        results = [executor.collect(executor.launch(plan, lambda sid: stm)) for plan in plans]
    for result in results:
        assert not result.failures
        for turn, (token, _) in result.tokens.items():
            tokens[turn.session_id].append(token)
    return tokens, executor


@pytest.mark.parametrize("temperatures", [(0.0, 0.0, 0.0), (0.0, 0.8, 0.0)], ids=["greedy", "mixed"])
def test_pipelined_steps_read_their_own_tokens_from_reused_pinned_buffers(temperatures):
    model, tokenizer = _cuda_model()
    one_by_one, _ = _tokens(model, tokenizer, temperatures, pipelined=False)
    pipelined, executor = _tokens(model, tokenizer, temperatures, pipelined=True)
    assert pipelined == one_by_one
    assert all(len(t) == 7 for t in pipelined.values())
    assert len(executor._host_buffers) == 2  # two steps in flight at most: two pinned buffers, reused
    assert all(host.is_pinned() for host in executor._host_buffers)


def test_committed_stms_stay_on_the_device_in_the_in_process_store():
    model, tokenizer = _cuda_model()
    reactive = ReactiveModel(model, tokenizer, max_batch_size=4)
    log = EventLog()
    reactive.events.subscribe(log)
    reactive.connect()
    try:
        for i in range(3):
            reactive.submit(Query(f"s{i}", "hello there", GenerationOptions(max_new_tokens=5)))
        assert log.wait_for(lambda es: sum(isinstance(e, MemoryUpdated) for e in es) == 3)
        assert reactive.wait_idle(10)
        for i in range(3):
            record = reactive.store._records[f"s{i}"][0]
            live = reactive.sessions.get(f"s{i}").stm
            assert record.stm.is_cuda and record.stm.data_ptr() == live.data_ptr()  # kept, not copied
            loaded = reactive.store.load(f"s{i}")
            assert loaded.stm.device.type == "cpu" and torch.equal(loaded.stm, live.cpu())
            assert loaded.turns == 1 and loaded.memory_version == 1
    finally:
        reactive.dispose()


def _served(model, tokenizer, update_stream: bool, high_priority: bool = False):
    """Sessions of different answer lengths, all queued before connect (one prefill, then a schedule fixed by the
    lengths): each update pass runs while the longer answers still decode. Returns each session's answer and
    committed STM."""
    reactive = ReactiveModel(model, tokenizer, max_batch_size=8, update_stream=update_stream)
    assert (reactive.executor._update_stream is not None) == update_stream
    reactive.executor.set_update_priority(high_priority)
    log = EventLog()
    reactive.events.subscribe(log)
    for i in range(6):  # one turn each: a second turn's admission would hang on commit timing
        reactive.submit(Query(f"s{i}", "hello there" + " again" * i, GenerationOptions(max_new_tokens=3 + 4 * i)))
    reactive.connect()
    try:
        assert log.wait_for(lambda es: sum(isinstance(e, MemoryUpdated) for e in es) == 6)
        assert reactive.wait_idle(10)
        answers = {e.session_id: e.token_ids for e in log.events if isinstance(e, AnswerDone)}
        memory = {i: reactive.session_state(f"s{i}").stm for i in range(6)}
    finally:
        reactive.dispose()
    return answers, memory


def test_update_passes_on_their_own_stream_write_the_same_memory():
    """Memory-update passes on a side stream, beside decode steps, give the same answers and bit-identical
    committed memories as passes on the lane's stream (the same graphs: a race would show as different bits)."""
    model, tokenizer = _cuda_model()
    side_answers, side_memory = _served(model, tokenizer, update_stream=True)
    lane_answers, lane_memory = _served(model, tokenizer, update_stream=False)
    high_answers, high_memory = _served(model, tokenizer, update_stream=True, high_priority=True)
    assert side_answers == lane_answers == high_answers
    for i in range(6):
        assert torch.equal(side_memory[i], lane_memory[i]), i
        assert torch.equal(high_memory[i], lane_memory[i]), i  # a high-priority update stream races nothing either


def test_an_executors_graphs_share_one_pool_per_stream_and_updates_match_eager():
    """Decode-step and prefill graphs (the lane's stream) share one memory pool, the update graphs (their own
    stream) another; the graphed update, bucketed and padded, equals the eager one on the unpadded batch."""
    from rxt.memory_update import MemoryUpdater

    model, tokenizer = _cuda_model()
    executor = ModelExecutor(model, max_slots=4, pad_id=tokenizer.pad_id, eos_id=tokenizer.eos_id)
    assert executor.precapture(max_prompt_tokens=20, max_interaction_tokens=40) > 0
    engine, updater = executor.engine, executor.updater
    lane = {g[0].pool() for g in [*engine._graphs.values(), *engine._prefill_graphs.values()]}
    update = {g[0].pool() for g in updater._graphs.values()}
    assert len(lane) == 1 and len(update) == 1 and lane != update
    torch.manual_seed(0)
    rows = [torch.randint(4, 100, (n,)).tolist() for n in (5, 23, 11)]
    stm = torch.randn(model.initial_memory(3).shape, device="cuda")
    graphed = updater(list(stm.unbind(1)), rows)
    eager = MemoryUpdater(model, use_cuda_graphs=False)(stm, rows)
    # padded shapes may take other matmul kernels: float32 rounding, far below what a masking error would give
    torch.testing.assert_close(graphed, eager, rtol=1e-4, atol=1e-4)

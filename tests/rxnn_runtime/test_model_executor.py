"""The model executor's host cost per step does not grow with the step's rows: the same number of torch calls
for 2 rows as for 16 (prefill, memory update, decode). In a server each torch call lets another thread take the
GIL, and the lane may wait up to a switch interval to get it back, so calls per row cost milliseconds."""

import contextlib

import torch
from runtime_helpers import tiny_model
from torch.overrides import TorchFunctionMode

from rxnn_runtime.active_turn import ActiveTurn
from rxnn_runtime.messages import GenerationOptions, Query
from rxnn_runtime.model_executor import ModelExecutor
from rxnn_runtime.turn_scheduler import StepPlan
from rxt.decode_engine import DecodeEngine
from rxt.memory_update import MemoryUpdater


class _CountCalls(TorchFunctionMode):
    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        self.calls += 1
        return func(*args, **(kwargs or {}))


def _turns(n: int, tokenizer) -> list[ActiveTurn]:
    turns = []
    for i in range(n):
        prompt = tokenizer.encode("hello there" + " again" * (i % 5))  # rows of different lengths
        turn = ActiveTurn(Query(f"s{i}", "q", GenerationOptions(max_new_tokens=4)), 1, prompt, slot=i)
        turn.answer = [5 + i % 3] * (1 + i % 4)
        turns.append(turn)
    return turns


def _calls_per_phase(n: int) -> dict[str, int]:
    model, tokenizer = tiny_model()
    executor = ModelExecutor(model, max_slots=16, pad_id=tokenizer.pad_id, eos_id=tokenizer.eos_id)
    stm = model.initial_memory(1)[:, 0]
    turns = _turns(n, tokenizer)
    counts = {}
    for phase, plan in (("prefill", StepPlan(admit=turns)), ("decode", StepPlan(decode=turns)),
                        ("update", StepPlan(updates=turns))):
        with _CountCalls() as counter:
            step = executor.launch(plan, lambda sid: stm)
            result = executor.collect(step)
        assert not result.failures
        assert len(result.tokens) == (0 if phase == "update" else n)
        assert len(result.new_memory) == (n if phase == "update" else 0)
        counts[phase] = counter.calls
    return counts


def test_torch_calls_per_step_do_not_grow_with_rows():
    assert _calls_per_phase(2) == _calls_per_phase(16)


def test_decode_rows_of_a_partial_bucket_get_their_own_logits():
    """Live slots 0, 2 and 3 of bucket 4 (slot 1 ended): the executor's cached index picks their rows, and each
    row's token equals that of the same turn decoded alone."""
    model, tokenizer = tiny_model()
    stm = model.initial_memory(1)[:, 0]

    def run(slots: list[int], steps: int) -> dict[str, list[int]]:
        executor = ModelExecutor(model, max_slots=4, pad_id=tokenizer.pad_id, eos_id=tokenizer.eos_id)
        turns = [t for t in _turns(4, tokenizer) if t.slot in slots]
        tokens = {t.session_id: [] for t in turns}
        for plan in [StepPlan(admit=turns)] + [StepPlan(decode=turns)] * steps:
            result = executor.collect(executor.launch(plan, lambda sid: stm))
            for turn, (token, _) in result.tokens.items():
                tokens[turn.session_id].append(token)
        return tokens

    together = run([0, 2, 3], 3)
    for slot in (0, 2, 3):
        assert together[f"s{slot}"] == run([slot], 3)[f"s{slot}"], slot


def test_precapture_covers_every_batch_and_length_a_step_can_meet(monkeypatch):
    """With stand-in captures (the CPU has no CUDA graphs; they record their key): after `precapture`, a prefill
    of any 1..max_slots prompts of up to the given length, and an update pass of any 1..max_slots interactions of
    up to the given length, finds its graph, so no capture is left to stall the lane while sessions wait."""
    from rxt.decode_engine import DecodeEngine
    from rxt.memory_update import MemoryUpdater

    def fake_prefill(self, batch, bucket):
        self._prefill_graphs[(batch, bucket)] = ("graph", None, None)
        return self._prefill_graphs[(batch, bucket)]

    def fake_update(self, key, stm):
        self._graphs[key] = ("graph", {})
        return self._graphs[key]

    monkeypatch.setattr(DecodeEngine, "_capture_prefill", fake_prefill)
    monkeypatch.setattr(DecodeEngine, "_capture", lambda self, key: self._graphs.setdefault(key, ("graph", None)))
    monkeypatch.setattr(MemoryUpdater, "_capture", fake_update)
    model, tokenizer = tiny_model()
    executor = ModelExecutor(model, max_slots=12, pad_id=tokenizer.pad_id, eos_id=tokenizer.eos_id)
    assert executor.precapture(max_prompt_tokens=20, max_interaction_tokens=60) == 0  # the CPU: nothing
    executor.engine.use_cuda_graphs = executor.updater.use_cuda_graphs = True
    captured = executor.precapture(max_prompt_tokens=20, max_interaction_tokens=60)
    assert captured == executor.graph_count() > 0
    # The update passes run beside the decode steps (their own stream): a pool of their own, not the lane's.
    assert executor.engine.graph_pool is not executor.updater.graph_pool
    for n in range(1, 13):
        for tokens in range(1, 21):
            assert executor.engine._prefill_key(n, tokens) in executor.engine._prefill_graphs, (n, tokens)
        for tokens in range(1, 61):
            assert executor.updater._key(n, tokens) in executor.updater._graphs, (n, tokens)
    assert executor.precapture(max_prompt_tokens=20, max_interaction_tokens=60) == 0  # all there already


def test_precapture_covers_the_decode_step_of_every_session_count(monkeypatch):
    """With stand-in captures: after `precapture`, a decode step with any 1..max_slots live slots finds its
    bucket's graph (no capture inside serving: at 64 sessions one once stalled the timed level), and every step
    graph was captured with the memory K/V buffers in place (a step captured without them would never read the
    sessions' memory)."""
    from rxt.decode_engine import DecodeEngine
    from rxt.memory_update import MemoryUpdater

    captured_with_memory = []

    def fake_step(self, key):
        captured_with_memory.append(self.memory is not None)
        self._graphs[key] = ("graph", None)
        return self._graphs[key]

    monkeypatch.setattr(DecodeEngine, "_capture", fake_step)
    monkeypatch.setattr(DecodeEngine, "_capture_prefill",
                        lambda self, batch, bucket: self._prefill_graphs.setdefault((batch, bucket), ("graph",)))
    monkeypatch.setattr(MemoryUpdater, "_capture", lambda self, key, stm: self._graphs.setdefault(key, ("graph",)))
    model, tokenizer = tiny_model()
    max_slots = 12
    executor = ModelExecutor(model, max_slots=max_slots, pad_id=tokenizer.pad_id, eos_id=tokenizer.eos_id)
    engine = executor.engine
    engine.use_cuda_graphs = executor.updater.use_cuda_graphs = True
    assert executor.precapture(max_prompt_tokens=20, max_interaction_tokens=60) > 0
    assert len(engine._graphs) == len(engine.buckets) and all(captured_with_memory)

    def no_capture(self, key):
        raise AssertionError(f"decode graph {key} captured after precapture")

    monkeypatch.setattr(DecodeEngine, "_capture", no_capture)
    for n in range(1, max_slots + 1):
        engine.live = [slot < n for slot in range(max_slots)]
        key = engine._step_key(engine.bucket())
        assert key in engine._graphs, n
    assert executor.precapture(max_prompt_tokens=20, max_interaction_tokens=60) == 0  # all there already


class _CountOutsideForward(TorchFunctionMode):
    """Torch calls outside the engine's decode forward (a graph replay on CUDA); no op is dispatched for an
    attribute read or a no_grad switch."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[str] = []
        self.inside = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        name = getattr(func, "__name__", str(func))
        if not self.inside and name not in ("__get__", "_set_grad_enabled"):  # attribute reads, no_grad
            self.calls.append(name)
        return func(*args, **(kwargs or {}))


def test_a_greedy_decode_step_builds_nothing_and_makes_one_torch_call(monkeypatch):
    """Greedy rows (the common case) take their argmax straight into the engine's token buffer inside the decode
    step (its graph on CUDA), and the whole buffer is read once (on CUDA: one copy into a reused pinned buffer and an
    event): no argmax call, index, slice, stack or host tensor per step, however many rows. A sampled row switches
    the step to the per-row choice."""
    counter = _CountOutsideForward()
    step = DecodeEngine._step

    def uncounted_step(self, b):
        counter.inside += 1
        try:
            return step(self, b)
        finally:
            counter.inside -= 1

    monkeypatch.setattr(DecodeEngine, "_step", uncounted_step)
    model, tokenizer = tiny_model()
    stm = model.initial_memory(1)[:, 0]
    for n in (2, 16):
        executor = ModelExecutor(model, max_slots=16, pad_id=tokenizer.pad_id, eos_id=tokenizer.eos_id)
        turns = _turns(n, tokenizer)
        executor.collect(executor.launch(StepPlan(admit=turns), lambda sid: stm))
        per_step = []
        for _ in range(4):
            counter.calls = []
            with counter:
                result = executor.collect(executor.launch(StepPlan(decode=turns), lambda sid: stm))
            assert len(result.tokens) == n and not result.failures
            per_step.append(counter.calls)
        assert per_step == [["tolist"]] * 4, per_step
    sampled = _turns(2, tokenizer)
    sampled[1].query = Query("s1", "q", GenerationOptions(max_new_tokens=4, temperature=0.7, seed=1))
    executor = ModelExecutor(model, max_slots=16, pad_id=tokenizer.pad_id, eos_id=tokenizer.eos_id)
    executor.collect(executor.launch(StepPlan(admit=sampled), lambda sid: stm))
    assert executor._special == {1}
    executor.collect(executor.launch(StepPlan(release=[1]), lambda sid: stm))
    assert not executor._special  # a released slot no longer holds the step to the per-row choice


def test_retired_slots_are_not_fed():
    """A retired slot (its turn's token in flight is its last) is freed in the engine at once: the decode step
    feeds only the other rows, and the bucket shrinks when it was the highest."""
    model, tokenizer = tiny_model()
    stm = model.initial_memory(1)[:, 0]
    executor = ModelExecutor(model, max_slots=4, pad_id=tokenizer.pad_id, eos_id=tokenizer.eos_id)
    turns = _turns(3, tokenizer)
    executor.collect(executor.launch(StepPlan(admit=turns), lambda sid: stm))
    lengths = list(executor.engine.slot_length)
    result = executor.collect(executor.launch(StepPlan(decode=turns[:2], retire=[2]), lambda sid: stm))
    assert set(result.tokens) == set(turns[:2])
    assert executor.engine.live[:3] == [True, True, False]
    assert executor.engine.slot_length[:2] == [lengths[0] + 1, lengths[1] + 1]
    assert executor.engine.bucket() == 2


class _FakeStream:
    def __init__(self, name):
        self.name = name
        self.calls = []

    def wait_event(self, event):
        self.calls.append(("wait_event", event))

    def wait_stream(self, stream):
        self.calls.append(("wait_stream", stream.name))


def test_update_pass_on_its_stream_waits_only_as_far_as_its_inputs_need(monkeypatch):
    """The side-stream pass (CUDA) with stand-in streams on the CPU: a pass of answers waits on the last collected
    step's event (not for the step queued since), a pass with a primed interaction for everything on the lane's
    stream; the new STMs are marked as used by the lane's stream, the commit waits on the event recorded inside,
    and the memory is the lane-stream pass's."""
    model, tokenizer = tiny_model()
    stm = model.initial_memory(1)[:, 0]
    lane, marked, recorded = _FakeStream("lane"), [], []

    class _Event:
        def record(self):
            recorded.append(self)

    monkeypatch.setattr(torch.cuda, "current_stream", lambda: lane)
    monkeypatch.setattr(torch.cuda, "stream", lambda s: contextlib.nullcontext())
    monkeypatch.setattr(torch.cuda, "Event", _Event)
    monkeypatch.setattr(torch.Tensor, "record_stream", lambda self, s: marked.append(s.name), raising=False)
    monkeypatch.setattr(MemoryUpdater, "graphed", property(lambda self: True))
    reference = ModelExecutor(model, max_slots=8, pad_id=tokenizer.pad_id, eos_id=tokenizer.eos_id)
    executor = ModelExecutor(model, max_slots=8, pad_id=tokenizer.pad_id, eos_id=tokenizer.eos_id)
    executor._update_stream = side = _FakeStream("side")
    executor._last_ready = last = object()  # the last collected step's event
    turns = _turns(3, tokenizer)
    result = executor.launch(StepPlan(updates=turns), lambda sid: stm).result
    assert side.calls == [("wait_event", last)] and marked == ["lane"]
    assert result.memory_ready is recorded[-1]
    expected = reference.launch(StepPlan(updates=turns), lambda sid: stm).result
    for turn in turns:
        assert torch.equal(result.new_memory[turn], expected.new_memory[turn])
    prime = ActiveTurn(Query("p", ""), 1, tokenizer.encode("an earlier turn"), kind="prime")
    executor.launch(StepPlan(updates=[prime, *turns]), lambda sid: stm)
    assert side.calls[-1] == ("wait_stream", "lane")


def test_update_priority_is_a_no_op_without_an_update_stream():
    """On the CPU there is no update stream: asking for a high-priority one changes nothing (on CUDA it makes the
    stream; tests/rxnn_runtime/test_runtime_cuda.py runs passes on it)."""
    from runtime_helpers import tiny_model

    from rxnn_runtime.model_executor import ModelExecutor

    model, tokenizer = tiny_model()
    executor = ModelExecutor(model, max_slots=2, pad_id=tokenizer.pad_id, eos_id=tokenizer.eos_id)
    executor.set_update_priority(True)
    assert executor._update_stream is None

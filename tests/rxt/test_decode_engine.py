"""The slot-based decode engine (eager path on CPU) against plain generation."""

import pytest
import torch

from rxt.config import RxTConfig
from rxt.decode_engine import DecodeEngine
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

"""`generate`/`decode_steps` as a driver over `DecodeEngine`, against references that share none of its code."""

import pytest
import torch

from rxt.config import RxTConfig
from rxt.decode_engine import DecodeEngine
from rxt.generation import generate
from rxt.model import RxT
from rxt.sampling import SamplingConfig, choose_tokens


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    m = RxT(RxTConfig.preset("tiny")).eval().double()
    with torch.no_grad():
        m.stm.initial.normal_()
    return m


def _full_recompute_greedy(model, prompt, stm, n, eos):
    """Float64, no KV cache: the whole sequence through the decoder for every token."""
    ids = prompt.tolist()
    out = []
    with torch.no_grad():
        memory = model.project_memory(stm)
        for _ in range(n):
            logits = model.decoder(torch.tensor([ids]), memory=memory).logits[0, -1]
            token = int(logits.argmax())
            out.append(token)
            if token == eos:
                break
            ids.append(token)
    return out


def _previous_loop(model, input_ids, lengths, sampling, memory, eos, pad):
    """The decode loop generation used before the engine (dynamic cache; the batch's noise streams)."""
    decoder = model.decoder
    batch, prompt_len = input_ids.shape
    cache = decoder.new_cache(batch, prompt_len + sampling.max_new_tokens)
    valid = torch.arange(prompt_len)[None, :] < lengths[:, None]
    with torch.no_grad():
        out = decoder(input_ids, attention_mask=valid, memory=memory, cache=cache, compute_logits=False)
        logits = decoder.lm_head(out.hidden[torch.arange(batch), lengths - 1])
        streams = sampling.streams(batch)
        finished = torch.zeros(batch, dtype=torch.bool)
        tokens_out, lp_out = [], []
        for step in range(sampling.max_new_tokens):
            tokens, log_probs = choose_tokens(logits, sampling, streams)
            active = ~finished
            tokens = torch.where(active, tokens, torch.full_like(tokens, pad))
            log_probs = torch.where(active, log_probs, torch.zeros_like(log_probs))
            finished = finished | (tokens == eos)
            tokens_out.append(tokens)
            lp_out.append(log_probs)
            if bool(finished.all()) or step == sampling.max_new_tokens - 1:
                break
            logits = decoder(tokens[:, None], memory=memory, cache=cache, validate=False).logits[:, -1]
    return torch.stack(tokens_out, 1), torch.stack(lp_out, 1)


def _padded_batch():
    torch.manual_seed(3)
    lengths = torch.tensor([5, 9, 2])
    ids = torch.zeros(3, 9, dtype=torch.long)
    for i, n in enumerate(lengths.tolist()):
        ids[i, :n] = torch.randint(4, 128, (n,))
    return ids, lengths


def test_greedy_padded_batch_matches_full_recompute_per_row(model):
    ids, lengths = _padded_batch()
    stm = torch.randn(model.initial_memory(3).shape, dtype=torch.float64)
    eos = 7
    result = generate(model.decoder, ids, lengths, SamplingConfig(max_new_tokens=8), eos_id=eos, pad_id=0,
                      memory=model.project_memory(stm))
    for i, n in enumerate(lengths.tolist()):
        expected = _full_recompute_greedy(model, ids[i, :n], stm[:, i : i + 1], 8, eos)
        assert result.tokens[i, : len(expected)].tolist() == expected, i
        assert int(result.lengths[i]) == len(expected)


def test_seeded_sampling_with_log_probs_matches_the_previous_loop(model):
    ids, lengths = _padded_batch()
    stm = torch.randn(model.initial_memory(3).shape, dtype=torch.float64)
    sampling = SamplingConfig(max_new_tokens=10, temperature=1.3, top_k=40, top_p=0.9, seed=11,
                              return_log_probs=True)
    memory = model.project_memory(stm)
    result = generate(model.decoder, ids, lengths, sampling, eos_id=9, pad_id=0, memory=memory)
    tokens, log_probs = _previous_loop(model, ids, lengths, sampling, memory, eos=9, pad=0)
    assert result.tokens.tolist() == tokens.tolist()
    torch.testing.assert_close(result.log_probs, log_probs)
    # ... and the stm= form (memory projected inside the prefill) is the same decode.
    again = generate(model.decoder, ids, lengths, sampling, eos_id=9, pad_id=0, stm=stm)
    assert again.tokens.tolist() == tokens.tolist()


def test_reused_engine_gives_the_same_tokens_and_frees_its_slots(model):
    ids, lengths = _padded_batch()
    stm = torch.randn(model.initial_memory(3).shape, dtype=torch.float64)
    engine = DecodeEngine(model.decoder, max_slots=4, capacity=64)
    sampling = SamplingConfig(max_new_tokens=6)
    first = generate(model.decoder, ids, lengths, sampling, eos_id=-1, pad_id=0, stm=stm, engine=engine)
    assert engine.num_live == 0
    second = generate(model.decoder, ids, lengths, sampling, eos_id=-1, pad_id=0, stm=stm, engine=engine)
    fresh = generate(model.decoder, ids, lengths, sampling, eos_id=-1, pad_id=0, stm=stm)
    assert first.tokens.tolist() == second.tokens.tolist() == fresh.tokens.tolist()


def test_start_batch_equals_one_start_per_slot(model):
    ids, lengths = _padded_batch()
    stm = torch.randn(model.initial_memory(3).shape, dtype=torch.float64)
    prompts = [ids[i, :n] for i, n in enumerate(lengths.tolist())]
    slots = [3, 0, 2]  # not contiguous, not in order
    together = DecodeEngine(model.decoder, max_slots=4, capacity=32)
    alone = DecodeEngine(model.decoder, max_slots=4, capacity=32)
    first = together.start_batch(slots, prompts, stm=stm)
    for j, (slot, prompt) in enumerate(zip(slots, prompts)):
        torch.testing.assert_close(first[j], alone.start(slot, prompt, stm=stm[:, j]))
    step = torch.tensor([11, 0, 12, 13])
    torch.testing.assert_close(together.step(step)[slots], alone.step(step)[slots])
    with pytest.raises(ValueError, match="repeat"):
        DecodeEngine(model.decoder, max_slots=4, capacity=32).start_batch([1, 1], prompts[:2], stm=stm[:, :2])
    with pytest.raises(ValueError, match="is live"):
        together.start_batch([0, 1], prompts[:2], stm=stm[:, :2])


def test_memory_updater_equals_update_memory_per_row(model):
    from rxt.memory_update import MemoryUpdater

    torch.manual_seed(5)
    rows = [torch.randint(4, 128, (n,)).tolist() for n in (3, 11, 6)]
    stm = torch.randn(model.initial_memory(3).shape, dtype=torch.float64)
    together = MemoryUpdater(model)(stm, rows)
    for i, row in enumerate(rows):
        alone = model.update_memory(stm[:, i : i + 1], torch.tensor([row]))
        torch.testing.assert_close(together[:, i : i + 1], alone)

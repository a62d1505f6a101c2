"""The pipelined collection (every session's queries queued at once, the runtime connected after them) gives the
rollouts of the turn-by-turn reference path, and a fresh runtime takes all the sessions of a batch together."""

from __future__ import annotations

import random
import threading
import time

import pytest
import torch

from rxnn_runtime.messages import GenerationOptions
from rxnn_runtime.reactive_model import ReactiveModel
from rxt.config import RxTConfig
from rxt.model import RxT
from training.data.synthetic import SyntheticDialogueConfig, generate_episodes
from training.mrl.episodes import collect_episodes


def _collect(model, tok, episodes, *, pipelined, temperature, teacher_forcing, counts, batch, max_pending=8):
    reactive = ReactiveModel(model, tok, max_batch_size=batch, use_cuda_graphs=False,
                             max_pending_per_session=max_pending)
    launch = reactive.executor.launch

    def counted_launch(plan, stm_of):
        counts.setdefault("first_update", len(plan.updates))  # the first step's memory-update pass: the primes
        return launch(plan, stm_of)

    reactive.executor.launch = counted_launch
    try:
        logs = collect_episodes(reactive, episodes, options=GenerationOptions(max_new_tokens=5, temperature=temperature),
                                teacher_forcing=teacher_forcing, generator=random.Random(11), max_steps=3,
                                reset_prob=0.5)
        reactive.wait_idle()
    finally:
        reactive.dispose()
    return logs


@pytest.mark.parametrize(("temperature", "teacher_forcing", "batch", "max_pending"),
                         [(1.0, True, 12, 8), (0.0, False, 5, 8), (1.0, True, 6, 1)])
def test_pipelined_collection_matches_turn_by_turn(tok, temperature, teacher_forcing, batch, max_pending):
    torch.manual_seed(0)
    model = RxT(RxTConfig.preset("tiny", vocab_size=tok.vocab_size))
    # 12 episodes of 1-4 follow-ups (cut to 3): sessions of different lengths in one batch
    episodes = generate_episodes(SyntheticDialogueConfig(num_episodes=12, distance=(0, 1, 2, 3), seed=4))
    counts = {True: {}, False: {}}
    new = _collect(model, tok, episodes, pipelined=True, temperature=temperature, teacher_forcing=teacher_forcing,
                   counts=counts[True], batch=batch, max_pending=max_pending)
    ref = _collect(model, tok, episodes, pipelined=False, temperature=temperature, teacher_forcing=teacher_forcing,
                   counts=counts[False], batch=batch, max_pending=max_pending)
    assert len(new) == len(ref) == 12
    for a, b in zip(new, ref, strict=True):
        assert (a.reset, a.first_ids, len(a.steps)) == (b.reset, b.first_ids, len(b.steps))
        torch.testing.assert_close(a.stm_initial, b.stm_initial, atol=1e-5, rtol=1e-5)
        for s, t in zip(a.steps, b.steps, strict=True):
            assert (s.prompt_ids, s.action_ids, s.memory_ids, s.answer_text) == \
                (t.prompt_ids, t.action_ids, t.memory_ids, t.answer_text)
            torch.testing.assert_close(torch.tensor(s.runtime_log_probs), torch.tensor(t.runtime_log_probs),
                                       atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(s.stm_before, t.stm_before, atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(s.stm_after, t.stm_after, atol=1e-5, rtol=1e-5)
        for k in range(1, len(a.steps)):
            assert torch.equal(a.steps[k].stm_before, a.steps[k - 1].stm_after)
    # every message sent before `connect` is taken in one lane action: all the batch's sessions are primed in the
    # first step's one memory-update pass (connected first, the reference path primes them one lane action at a
    # time, so how many share a pass depends on thread timing)
    assert counts[True]["first_update"] == min(batch, 12)


def _collect_with(model, tok, episodes, executor=None, batch=6):
    reactive = ReactiveModel(model, tok, max_batch_size=batch, use_cuda_graphs=False, executor=executor)
    try:
        logs = collect_episodes(reactive, episodes, options=GenerationOptions(max_new_tokens=5, temperature=1.0),
                                teacher_forcing=True, generator=random.Random(3), max_steps=3, reset_prob=0.5)
        reactive.wait_idle()
    finally:
        reactive.dispose()
    return logs, reactive.executor


def test_a_reused_executor_collects_what_a_fresh_one_does(tok):
    """An MRL trainer hands one executor to every collection's runtime (its CUDA graphs captured once): a
    collection after another one on it gives the rollouts of a fresh executor, and a mismatched one is refused."""
    torch.manual_seed(0)
    model = RxT(RxTConfig.preset("tiny", vocab_size=tok.vocab_size))
    first = generate_episodes(SyntheticDialogueConfig(num_episodes=9, distance=(0, 1, 2, 3), seed=5))
    second = generate_episodes(SyntheticDialogueConfig(num_episodes=7, distance=(0, 1, 2, 3), seed=6))
    _, executor = _collect_with(model, tok, first)
    reused, same = _collect_with(model, tok, second, executor)
    fresh, _ = _collect_with(model, tok, second)
    assert same is executor and len(reused) == len(fresh) == 7
    for a, b in zip(reused, fresh, strict=True):
        assert (a.reset, a.first_ids, len(a.steps)) == (b.reset, b.first_ids, len(b.steps))
        for s, t in zip(a.steps, b.steps, strict=True):
            assert (s.prompt_ids, s.action_ids, s.memory_ids) == (t.prompt_ids, t.action_ids, t.memory_ids)
            # the runtime batches memory updates as the sessions' turns end (padding to a batch's longest row):
            # float rounding apart, as between the pipelined and the turn-by-turn paths above
            torch.testing.assert_close(torch.tensor(s.runtime_log_probs), torch.tensor(t.runtime_log_probs),
                                       atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(s.stm_before, t.stm_before, atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(s.stm_after, t.stm_after, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="max_batch_size=5"):
        ReactiveModel(model, tok, max_batch_size=5, executor=executor)
    with pytest.raises(ValueError, match="the executor must run this model"):
        ReactiveModel(RxT(RxTConfig.preset("tiny", vocab_size=tok.vocab_size)), tok, max_batch_size=6,
                      executor=executor)


def test_a_session_whose_first_interaction_commits_at_once_still_gets_its_queries(tok):
    """A connected runtime (every batch after the first) may commit a session's primed interaction before the
    collection has queued that session's queries; with one message pending per session, that commit is what
    submits its first query. Here every prime is made to commit before `prime` returns: the collection must still
    finish (it used to wait for its timeout)."""
    torch.manual_seed(0)
    model = RxT(RxTConfig.preset("tiny", vocab_size=tok.vocab_size))
    episodes = generate_episodes(SyntheticDialogueConfig(num_episodes=4, distance=(1, 2), seed=4))
    reactive = ReactiveModel(model, tok, max_batch_size=2, use_cuda_graphs=False, max_pending_per_session=1)
    committed = threading.Event()
    seen: set = set()
    reactive.batches.subscribe(on_next=lambda batch: [seen.add((e.session_id, e.query_id)) for e in batch
                                                      if type(e).__name__ == "MemoryUpdated"])
    prime = reactive.prime

    def prime_and_wait(sid, interactions, *, query_id=""):
        prime(sid, interactions, query_id=query_id)
        if reactive._connected:  # a later batch: let the commit happen first
            deadline = time.monotonic() + 10
            while (sid, query_id) not in seen and time.monotonic() < deadline:
                time.sleep(0.005)
            committed.set()

    reactive.prime = prime_and_wait
    try:
        logs = collect_episodes(reactive, episodes, options=GenerationOptions(max_new_tokens=3), max_steps=2,
                                generator=random.Random(1), reset_prob=1.0, timeout=20.0)
    finally:
        reactive.dispose()
    assert committed.is_set()  # the second batch's primes did commit before the queries were queued
    assert len(logs) == 4 and all(len(log.steps) == min(2, len(e.interactions)) for log, e in zip(logs, episodes))

"""`EngineProcess`: the lane in a child process gives the events the lane in this process gives, and fails clearly."""

from __future__ import annotations

import pytest
from runtime_helpers import EventLog, tiny_model

from rxnn_runtime.cli import load_parts
from rxnn_runtime.engine_process import EngineProcess, EngineProcessError, EngineSpec
from rxnn_runtime.events import AnswerDone, MemoryUpdated, Token
from rxnn_runtime.messages import GenerationOptions, Query
from rxnn_runtime.reactive_model import ReactiveModel


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    model, tokenizer = tiny_model(seed=3)
    path = tmp_path_factory.mktemp("engine") / "tiny"
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def _turns(reactive, queries) -> list[tuple]:
    """Each turn's (session, query id, token ids, AnswerDone's ids, memory version), in the order they ended."""
    log = EventLog()
    reactive.batches.subscribe(lambda batch: [log(e) for e in batch])
    for query in queries:
        reactive.submit(query)
    assert log.wait_for(lambda es: sum(isinstance(e, MemoryUpdated) for e in es) == len(queries), timeout=120)
    turns = []
    for done in [e for e in log.events if isinstance(e, AnswerDone)]:
        key = (done.session_id, done.query_id)
        tokens = [e.token_id for e in log.events if isinstance(e, Token) and (e.session_id, e.query_id) == key]
        (updated,) = [e for e in log.events if isinstance(e, MemoryUpdated) and (e.session_id, e.query_id) == key]
        turns.append((*key, tokens, list(done.token_ids), updated.version))
    return sorted(turns)


QUERIES = [Query("a", "hello there", GenerationOptions(max_new_tokens=6), query_id=1),
           Query("b", "what is my name?", GenerationOptions(max_new_tokens=9), query_id="q"),
           Query("a", "and again", GenerationOptions(max_new_tokens=4), query_id=2)]


def test_the_lane_in_a_child_process_gives_the_same_turns_as_in_this_one(model_dir):
    model, tokenizer, store = load_parts(str(model_dir), "cpu")
    here = ReactiveModel(model, tokenizer, store=store)
    here.connect()
    try:
        expected = _turns(here, QUERIES)
    finally:
        here.dispose()
    engine = EngineProcess(EngineSpec(load_parts, (str(model_dir), "cpu")))
    engine.connect()
    try:
        assert engine.model.config.max_seq_len == model.config.max_seq_len  # what the server reads, sent by the child
        assert engine.template.query_ids("hello") == here.template.query_ids("hello")
        assert _turns(engine, QUERIES) == expected
        assert engine.wait_idle(30)
        assert engine.session_state("a").memory_version == 2 and engine.session_state("zz") is None
        health = engine.lane_health(5)
        assert health["alive"] is True and health["latency_ms"] >= 0
        assert engine.store.health() == {"status": "ok", "store": "InMemoryStore"}  # the child's store
        assert engine.call("graph_count") == 0  # the CPU captures nothing
    finally:
        engine.dispose()
    assert not engine._process.is_alive()
    assert engine.lane_health()["alive"] is False
    with pytest.raises(EngineProcessError, match="gone|stopped"):
        engine.submit(QUERIES[0])


def test_a_child_that_cannot_load_its_model_fails_connect_with_the_reason(tmp_path):
    engine = EngineProcess(EngineSpec(load_parts, (str(tmp_path / "missing"), "cpu"), start_timeout_s=120))
    with pytest.raises(EngineProcessError, match="failed to start.*cannot load model .*missing"):
        engine.connect()
    assert not engine._process.is_alive()


def test_the_factory_must_be_importable_by_name():
    with pytest.raises(ValueError, match="module-level function"):
        EngineSpec(lambda: None)
    with pytest.raises(ValueError, match="start_timeout_s=0"):
        EngineSpec(load_parts, start_timeout_s=0)

"""Prefix caching (`PrefixCachedEngine`) against a stateless decoder re-reading the whole history every token.

float64 on the CPU, tiny model: the cached path (extend the kept KV cache by the new tokens, decode over a key
window) must choose the very tokens a full forward over the whole history chooses.
"""

import pytest
import torch

from rxt.classic import DecoderLM
from rxt.config import TransformerConfig
from rxt.prefix_cached_engine import PrefixCachedEngine

ANSWER = 4


@pytest.fixture(scope="module")
def lm():
    torch.manual_seed(0)
    cfg = TransformerConfig(vocab_size=128, dim=32, num_layers=2, num_heads=4, ffn_hidden_dim=64, max_seq_len=160)
    return DecoderLM(cfg).double().eval()


@torch.no_grad()
def _rereading(lm, queries: list[torch.Tensor]) -> list[list[int]]:
    """Greedy answers of a stateless chat that re-reads ``q1 a1 ... qN`` in full for every token."""
    history, answers = torch.empty(0, dtype=torch.long), []
    for query in queries:
        history = torch.cat([history, query])
        answer = []
        for _ in range(ANSWER):
            token = lm(history[None]).logits[0, -1].argmax()
            answer.append(int(token))
            history = torch.cat([history, token[None]])
        answers.append(answer)
    return answers


class _Conversation:
    """One chat held in a slot: each turn feeds the previous answer's last token and the new query."""

    def __init__(self, engine: PrefixCachedEngine, slot: int, queries: list[torch.Tensor]) -> None:
        self.engine, self.slot, self.queries, self.answers = engine, slot, queries, []

    def begin_turn(self) -> int:
        query = self.queries[len(self.answers)]
        new = query if not self.answers else torch.cat([torch.tensor(self.answers[-1][-1:]), query])
        token = int(self.engine.extend(self.slot, new).argmax())
        self.answers.append([token])
        return token


def _queries(seed: int, lengths: list[int]) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return [torch.randint(4, 128, (n,), generator=gen) for n in lengths]


@torch.no_grad()
def _run_together(engine: PrefixCachedEngine, chats: list[_Conversation], turns: int) -> None:
    """Turns of several conversations whose answer tokens are decoded in the same steps."""
    for _ in range(turns):
        tokens = torch.zeros(engine.max_slots, dtype=torch.long)
        for chat in chats:
            tokens[chat.slot] = chat.begin_turn()
        for _ in range(ANSWER - 1):
            logits = engine.step(tokens[: engine.bucket()])
            for chat in chats:
                tokens[chat.slot] = logits[chat.slot].argmax()
                chat.answers[-1].append(int(tokens[chat.slot]))


def test_key_buckets_double_up_to_the_capacity(lm):
    engine = PrefixCachedEngine(lm.decoder, max_slots=1, capacity=100, min_key_bucket=8)
    assert engine.key_buckets == (8, 16, 32, 64, 100)
    assert [engine.key_bucket(n) for n in (1, 8, 9, 64, 65, 100)] == [8, 8, 16, 64, 100, 100]


@pytest.mark.parametrize("query_buckets", [(4, 8, 16), (64,)])
def test_prefix_cached_turns_equal_rereading_the_history(lm, query_buckets):
    # Query lengths below, at and above a bucket; key windows of 8 tokens force several window changes.
    queries = [_queries(1, [5, 3, 8, 2, 11, 4, 9]), _queries(2, [7, 16, 1, 6, 3, 5, 2])]
    engine = PrefixCachedEngine(lm.decoder, max_slots=2, capacity=120, min_key_bucket=8,
                                query_buckets=query_buckets)
    chats = [_Conversation(engine, slot, q) for slot, q in enumerate(queries)]
    _run_together(engine, chats, turns=7)
    for chat, q in zip(chats, queries, strict=True):
        assert chat.answers == _rereading(lm, q)
    # The history held is every query and answer token but the last answer token (not fed yet).
    assert engine.slot_length == [sum(map(len, q)) + 7 * ANSWER - 1 for q in queries]


def test_idle_row_of_a_longer_conversation_stays_in_bounds(lm):
    """Slot 0 held a long chat and was released; slot 1's short chat steps over a small key window that the
    idle row's stale length lies beyond."""
    engine = PrefixCachedEngine(lm.decoder, max_slots=2, capacity=120, min_key_bucket=8, query_buckets=(8, 16))
    long_chat = _Conversation(engine, 0, _queries(3, [12] * 6))
    _run_together(engine, [long_chat], turns=6)
    assert engine.slot_length[0] > 64
    engine.release(0)
    queries = _queries(4, [3, 2])
    short = _Conversation(engine, 1, queries)
    _run_together(engine, [short], turns=2)
    assert engine.bucket() == 2 and engine.key_bucket(engine.slot_length[1]) == 16
    assert short.answers == _rereading(lm, queries)
    # A new conversation in the released slot starts from an empty history.
    fresh = _Conversation(engine, 0, queries)
    _run_together(engine, [fresh], turns=2)
    assert fresh.answers == short.answers


def test_extend_refuses_more_than_the_room_left(lm):
    engine = PrefixCachedEngine(lm.decoder, max_slots=1, capacity=20, min_key_bucket=8, query_buckets=(8,))
    engine.extend(0, torch.arange(4, 14))
    with pytest.raises(ValueError, match=r"within 1\.\.9 \(the room left in slot 0"):
        engine.extend(0, torch.arange(4, 14))
    with pytest.raises(ValueError, match="slot=1 is outside"):
        engine.extend(1, torch.arange(4, 6))
    assert engine.capture(0, [8]) == 0  # no CUDA graphs on the CPU


class _EagerGraph:
    """Stands in for a CUDA graph on the CPU: "capture" runs once with the cache lengths put back (as the real
    warm-ups leave them) and keeps the output tensor; each replay runs again and writes into that tensor."""

    def __init__(self, engine, run):
        self.run = run
        saved = engine.cache.lengths.clone()
        self.out = run().clone()
        engine.cache.lengths.copy_(saved)

    def replay(self):
        self.out.copy_(self.run())


def test_graph_path_replays_the_staged_inputs(lm, monkeypatch):
    """The graph path (graphs taken up front by `capture`, then replayed with the new tokens staged in fixed
    buffers) chooses the tokens of re-reading the history, with no graph captured during the conversation."""

    def fake_capture_graph(self, run):
        graph = _EagerGraph(self, run)
        return graph, graph.out

    monkeypatch.setattr(PrefixCachedEngine, "capture_graph", fake_capture_graph)
    engine = PrefixCachedEngine(lm.decoder, max_slots=1, capacity=120, min_key_bucket=16, query_buckets=(8, 16))
    engine.use_cuda_graphs = True
    count = engine.capture(0, [5, 6])  # the first turn's query, then the last answer token + a query
    # Key windows 16, 32, 64, 120: extend graphs of query bucket 8 in all four, one step graph each.
    assert set(engine._extend_graphs) == {(0, 8, w) for w in (16, 32, 64, 120)}
    assert set(engine._graphs) == {(1, w) for w in (16, 32, 64, 120)} and count == 8
    queries = _queries(5, [5] * 9)
    chat = _Conversation(engine, 0, queries)
    _run_together(engine, [chat], turns=9)
    assert chat.answers == _rereading(lm, queries)
    assert len(engine._extend_graphs) + len(engine._graphs) == count  # nothing captured mid-conversation
    with pytest.raises(ValueError, match=r"slots \[0\] are live"):
        engine.capture(0, [5])

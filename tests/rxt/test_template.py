import pytest
import torch

from rxt.template import Interaction, InteractionTemplate, pad_batch
from rxt.tokenizer import RxTokenizer


@pytest.fixture(scope="module")
def tok() -> RxTokenizer:
    return RxTokenizer.default()


@pytest.fixture(scope="module")
def tpl(tok) -> InteractionTemplate:
    return InteractionTemplate(tok)


ROUND_TRIPS = [
    ("What is your name?", "I am a reactive model.", None),
    ("hi", "hello", "the user greets me, greet back"),
    (" leading space", "  two leading spaces\nand a newline\n", None),
    ("emoji 😀 and 東京", "café ✓ 👍🏽", "think with ünïcödé\n"),
    ("a query that types [A] and [EOS]", "an answer mentioning [Q] [T] [BOS]", "[A] in thought"),
    ("empty answer", "", None),
    ("", "empty query", ""),
]


def test_query_ids_layout(tok, tpl):
    ids = tpl.query_ids("Hi there")
    assert ids == [tok.bos_id, tok.query_id, *tok.encode("Hi there"), tok.answer_id]
    with_think = tpl.query_ids("Hi", think="hmm")
    assert with_think == [tok.bos_id, tok.query_id, *tok.encode("Hi"), tok.think_id, *tok.encode("hmm"),
                          tok.answer_id]


def test_interaction_ids_layout(tok, tpl):
    ids = tpl.interaction_ids("q", "a", think="t")
    assert ids == [*tpl.query_ids("q", think="t"), *tok.encode("a"), tok.eos_id]
    assert ids[0] == tok.bos_id and ids[-1] == tok.eos_id


def test_system_ids_layout_and_parse(tok, tpl):
    ids = tpl.system_ids("You are helpful. 😀")
    assert ids == [tok.bos_id, tok.internal_id, *tok.encode("You are helpful. 😀"), tok.eos_id]
    assert tok.query_id not in ids
    assert tpl.parse_system(ids + [tok.pad_id] * 3) == "You are helpful. 😀"
    with pytest.raises(ValueError):
        tpl.parse_system(tpl.query_ids("x"))


@pytest.mark.parametrize(("query", "answer", "think"), ROUND_TRIPS)
def test_parse_round_trip(tpl, query, answer, think):
    ids = tpl.interaction_ids(query, answer, think=think)
    assert tpl.parse(ids) == Interaction(query=query, answer=answer, think=think)
    assert tpl.parse(torch.tensor(ids)) == Interaction(query=query, answer=answer, think=think)


def test_parse_ignores_padding_and_accepts_cut_off_answer(tok, tpl):
    ids = tpl.interaction_ids("q?", "a long answer")
    assert tpl.parse(ids + [tok.pad_id] * 4) == Interaction("q?", "a long answer")
    assert tpl.parse(ids[:-1]) == Interaction("q?", "a long answer")
    assert tpl.parse(tpl.query_ids("q?")) == Interaction("q?", "")


def test_parse_rejects_malformed(tok, tpl):
    body = tok.encode("hello")
    with pytest.raises(ValueError, match=r"expected \[Q\] at position 1"):
        tpl.parse([tok.bos_id, *body, tok.answer_id, tok.eos_id])
    with pytest.raises(ValueError, match=r"no \[A\]"):
        tpl.parse([tok.bos_id, tok.query_id, *body])
    with pytest.raises(ValueError, match="after"):
        tpl.parse([*tpl.interaction_ids("q", "a"), *body])
    with pytest.raises(ValueError, match="inside the query"):
        tpl.parse([tok.bos_id, tok.query_id, tok.eos_id, *body, tok.answer_id, tok.eos_id])
    with pytest.raises(ValueError):
        tpl.parse([])


@pytest.mark.parametrize("think", [None, "reasoning here"])
def test_answer_mask_marks_exactly_answer_and_eos(tok, tpl, think):
    prompt = tpl.query_ids("What time is it?", think=think)
    ids = tpl.interaction_ids("What time is it?", "Noon, I think.", think=think)
    n_answer = len(tok.encode("Noon, I think."))
    expected = [False] * len(prompt) + [True] * (n_answer + 1)
    assert tpl.answer_mask(ids) == expected
    assert [i for i, m in zip(ids, expected) if m][-1] == tok.eos_id


def test_answer_mask_batched_with_padding_and_two_interactions(tok, tpl):
    first = tpl.interaction_ids("a", "b")
    second = tpl.interaction_ids("c", "dd ee", think="x")
    both = first + second
    batch, lengths = pad_batch([first, both], tok.pad_id)
    mask = tpl.answer_mask(batch)
    assert mask.dtype == torch.bool and mask.shape == batch.shape
    assert mask[0, : len(first)].tolist() == tpl.answer_mask(first)
    assert not mask[0, len(first):].any()
    expected_both = tpl.answer_mask(first) + tpl.answer_mask(second)
    assert mask[1].tolist() == expected_both
    assert mask[1].sum().item() == (len(tok.encode("b")) + 1) + (len(tok.encode("dd ee")) + 1)
    assert lengths.tolist() == [len(first), len(both)]


def test_answer_mask_edge_cases(tok, tpl):
    assert tpl.answer_mask([]) == []
    assert tpl.answer_mask(tpl.query_ids("q")) == [False] * len(tpl.query_ids("q"))
    assert not tpl.answer_mask(torch.tensor(tpl.system_ids("sys"))).any()
    with pytest.raises(ValueError, match="shape"):
        tpl.answer_mask(torch.zeros(2, 2, 2, dtype=torch.long))


def test_pad_batch_right_pads():
    ids, lengths = pad_batch([[5, 6, 7], [8], []], pad_id=0)
    assert ids.dtype == torch.long and lengths.dtype == torch.long
    assert ids.tolist() == [[5, 6, 7], [8, 0, 0], [0, 0, 0]]
    assert lengths.tolist() == [3, 1, 0]
    ids, lengths = pad_batch([[1, 2]], pad_id=9, max_len=4)
    assert ids.tolist() == [[1, 2, 9, 9]]
    ids, lengths = pad_batch([], pad_id=0)
    assert ids.shape == (0, 0) and lengths.shape == (0,)


def test_pad_batch_too_long_names_max_len():
    with pytest.raises(ValueError, match=r"sequences\[1\] has 3 tokens.*max_len=2"):
        pad_batch([[1], [1, 2, 3]], pad_id=0, max_len=2)
    with pytest.raises(ValueError, match="max_len"):
        pad_batch([[1]], pad_id=0, max_len=-1)


def test_non_integer_ids_are_rejected(tpl):
    with pytest.raises(TypeError, match="integer"):
        tpl.parse([1.0, 5])
    with pytest.raises(TypeError, match="integer"):
        pad_batch([[1, 2.5]], pad_id=0)


def test_prompt_from_tokens_equals_query_ids():
    from rxt.template import InteractionTemplate
    from rxt.tokenizer import RxTokenizer

    template = InteractionTemplate(RxTokenizer.default())
    for text in ("", "hello there", "Ça va? 😀 東京", "[Q] not special"):
        assert template.prompt_from_tokens(template.tokenizer.encode(text)) == template.query_ids(text)

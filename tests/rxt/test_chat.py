import torch

from rxt.chat import ReactiveChat
from rxt.chat_events import AnswerCompleted, MemoryUpdated, TokenGenerated
from rxt.config import RxTConfig
from rxt.model import RxT
from rxt.sampling import SamplingConfig
from rxt.tokenizer import RxTokenizer


def _chat(**kwargs) -> ReactiveChat:
    torch.manual_seed(0)
    tokenizer = RxTokenizer.default()
    model = RxT(RxTConfig.preset("tiny", vocab_size=tokenizer.vocab_size, max_seq_len=128)).eval()
    return ReactiveChat(model, tokenizer, SamplingConfig(max_new_tokens=8), **kwargs)


def test_stream_yields_typed_events_in_order_and_updates_memory():
    chat = _chat()
    before = chat.stm.clone()
    events = list(chat.stream("Hello there"))
    kinds = [type(e) for e in events]
    assert kinds[-2:] == [AnswerCompleted, MemoryUpdated]
    assert all(k is TokenGenerated for k in kinds[:-2])
    done = events[-2]
    assert "".join(e.text for e in events[:-2]) + done.tail == done.text
    assert events[-1].version == 1
    assert not torch.equal(before, chat.stm)


def test_memory_update_still_runs_when_consumer_stops_after_answer():
    chat = _chat()
    for event in chat.stream("Hi"):
        if isinstance(event, AnswerCompleted):
            break
    assert chat.memory_version == 1


def test_abandoned_turn_is_not_written():
    chat = _chat()
    stream = chat.stream("Hi")
    next(stream)
    stream.close()
    assert chat.memory_version == 0


def test_system_prompt_is_written_into_memory_not_prepended():
    plain, primed = _chat(), _chat(system_prompt="You are terse.")
    assert primed.memory_version == 1 and plain.memory_version == 0
    assert not torch.equal(plain.stm, primed.stm)


def test_greedy_answers_are_reproducible_across_fresh_chats():
    assert _chat().ask("What is up?") == _chat().ask("What is up?")

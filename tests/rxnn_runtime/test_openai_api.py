"""The OpenAI-compatible endpoints against a real aiohttp server on 127.0.0.1."""

from __future__ import annotations

import asyncio
import json

import pytest

from rxnn_runtime.reactive_model import ReactiveModel
from rxnn_runtime.server import create_app
from rxt.model import RxT, RxTConfig
from rxt.tokenizer import RxTokenizer

TIMEOUT = 20.0


@pytest.fixture(scope="module")
def reactive():
    tok = RxTokenizer.default()
    torch_model = RxT(RxTConfig.preset("tiny", vocab_size=tok.vocab_size, max_seq_len=128))
    rm = ReactiveModel(torch_model, tok)
    rm.connect()
    yield rm
    rm.wait_idle(10)
    rm.dispose()


@pytest.fixture
async def client(aiohttp_client, reactive):
    return await aiohttp_client(create_app(reactive, model_name="rxt-tiny", max_body_bytes=64 * 1024))


def body(text="hello", **kw):
    return {"model": "rxt-tiny", "messages": [{"role": "user", "content": text}], "max_tokens": 6,
            "temperature": 0, **kw}


async def post(client, payload, **kw):
    return await asyncio.wait_for(client.post("/v1/chat/completions", json=payload, **kw), TIMEOUT)


async def read_sse(resp):
    events = []
    raw = await asyncio.wait_for(resp.text(), TIMEOUT)
    for block in raw.split("\n\n"):
        if block.strip():
            assert block.startswith("data: "), block
            events.append(block[len("data: "):])
    return events


async def test_models(client):
    resp = await client.get("/v1/models")
    data = await resp.json()
    assert data["object"] == "list" and data["data"][0]["id"] == "rxt-tiny"


async def test_streaming_matches_non_streaming_for_greedy(client, reactive):
    resp = await post(client, body(user="oa-plain"))
    assert resp.status == 200
    plain = await resp.json()
    assert plain["object"] == "chat.completion" and plain["model"] == "rxt-tiny"
    choice = plain["choices"][0]
    assert choice["message"]["role"] == "assistant" and choice["finish_reason"] in ("stop", "length")
    usage = plain["usage"]
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]

    # same memory state (a fresh session each), greedy: same text
    resp = await post(client, body(stream=True), headers={"X-Session-Id": "oa-stream"})
    assert resp.status == 200 and resp.headers["Content-Type"].startswith("text/event-stream")
    assert resp.headers["X-Session-Id"] == "oa-stream"
    events = await read_sse(resp)
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert chunks[-1]["choices"][0]["finish_reason"] == choice["finish_reason"]
    assert all(c["choices"][0]["finish_reason"] is None for c in chunks[:-1])
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks)
    assert text == choice["message"]["content"]


async def test_session_memory_advances(client, reactive):
    for _ in range(2):
        resp = await post(client, body(user="oa-mem"))
        assert resp.status == 200
    assert reactive.wait_idle(10)
    assert reactive.session_state("oa-mem").turns == 2


async def test_history_without_session_is_primed(client, reactive):
    if not hasattr(ReactiveModel, "prime"):
        pytest.skip("ReactiveModel.prime is not available")
    messages = [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "hello"},
        {"role": "user", "content": [{"type": "text", "text": "how are "}, {"type": "text", "text": "you"}]},
    ]
    resp = await post(client, {"messages": messages, "max_tokens": 4, "temperature": 0})
    assert resp.status == 200, await resp.text()
    session = resp.headers["X-Session-Id"]
    assert reactive.wait_idle(10)
    state = reactive.session_state(session)
    assert state.turns == 3  # (system, ""), (hi, hello), then the new turn


@pytest.mark.parametrize(
    ("payload", "param", "needle"),
    [
        ({"model": "x"}, "messages", "required"),
        ({"messages": []}, "messages", "non-empty"),
        ({"messages": "hi"}, "messages", "non-empty"),
        ({"messages": [{"role": "wizard", "content": "x"}]}, "messages[0].role", "must be one of"),
        ({"messages": [{"role": "user", "content": 5}]}, "messages[0].content", "string"),
        ({"messages": [{"role": "assistant", "content": "x"}]}, "messages", "last message"),
        (body(max_tokens=0), "max_tokens", "1..1024"),
        (body(max_tokens=5000), "max_tokens", "1..1024"),
        (body(max_tokens="9"), "max_tokens", "integer"),
        (body(temperature=50), "temperature", "0..10"),
        (body(top_p=0), "top_p", "(0, 1]"),
        (body(seed="x"), "seed", "integer"),
        (body(stream="yes"), "stream", "boolean"),
        (body(n=2), "n", "n=1"),
        (body(model=3), "model", "string"),
        (body(user="bad user!"), "user", "letters"),
        (body(text="a" * 9000), "messages", "8000"),
        ([1, 2], None, "JSON object"),
    ],
)
async def test_bad_requests(client, payload, param, needle):
    resp = await post(client, payload)
    assert resp.status == 400
    err = (await resp.json())["error"]
    assert err["type"] == "invalid_request_error" and err["param"] == param
    assert needle in err["message"], err


async def test_bad_json_and_oversize_body(client):
    resp = await asyncio.wait_for(client.post("/v1/chat/completions", data=b"{nope",
                                              headers={"Content-Type": "application/json"}), TIMEOUT)
    assert resp.status == 400 and "not valid JSON" in (await resp.json())["error"]["message"]
    resp = await post(client, body(text="a" * 70_000))
    assert resp.status == 413
    assert "max_body_bytes=65536" in (await resp.json())["error"]["message"]
    resp = await post(client, body(), headers={"X-Session-Id": "x" * 200})
    assert resp.status == 400 and (await resp.json())["error"]["param"] == "X-Session-Id"


@pytest.mark.parametrize("where", ["query", "history"])
async def test_lone_surrogate_is_a_400_at_once_not_a_hang(client, where):
    text = "hi \ud800 there"
    if where == "query":
        payload = body(text=text, user="oa-surrogate")
    else:  # in the history a session-less request primes into memory
        payload = {"messages": [{"role": "user", "content": text}, {"role": "assistant", "content": "ok"},
                                {"role": "user", "content": "and now?"}], "max_tokens": 4}
    raw = json.dumps(payload)  # json escapes the lone surrogate as \ud800: valid JSON text
    resp = await asyncio.wait_for(client.post("/v1/chat/completions", data=raw,
                                              headers={"Content-Type": "application/json"}), 5.0)
    assert resp.status == 400, await resp.text()
    message = (await resp.json())["error"]["message"]
    assert "surrogate" in message or "tokenized" in message  # refused at the edge, or by the lane as an Error

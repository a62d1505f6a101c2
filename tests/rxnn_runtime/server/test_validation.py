"""Bad input at the edges gets a 400 or an error frame naming the field and the limit (real server, 127.0.0.1)."""

from __future__ import annotations

import asyncio
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from server_helpers import TIMEOUT, tiny_reactive, turn_done, ws_recv, ws_until

from rxnn_runtime.messages import MAX_SESSION_ID_LENGTH, InvalidMessage, _check_session_id
from rxnn_runtime.server import create_app
from rxnn_runtime.server.validation import MAX_JSON_DEPTH, check_depth
from rxnn_runtime.stores.directory import DirectoryStore, check_file_session_id


def chat(text="hello", **kw):
    return {"messages": [{"role": "user", "content": text}], "max_tokens": 4, "temperature": 0, **kw}


async def post_raw(client, data: str | bytes, **headers):
    return await asyncio.wait_for(client.post("/v1/chat/completions", data=data,
                                              headers={"Content-Type": "application/json", **headers}), TIMEOUT)


async def error_of(resp, status=400):
    assert resp.status == status, await resp.text()
    return (await resp.json())["error"]


@pytest.fixture
async def client(aiohttp_client, reactive):
    return await aiohttp_client(create_app(reactive, max_history_messages=8))


@pytest.mark.parametrize("depth", [MAX_JSON_DEPTH + 1, 100_000])
async def test_deeply_nested_json_is_400(client, depth):
    body = json.dumps(chat())[:-1] + ', "x": ' + "[" * depth + "]" * depth + "}"
    err = await error_of(await post_raw(client, body))
    assert f"deeper than the limit {MAX_JSON_DEPTH}" in err["message"]


@pytest.mark.parametrize(
    ("override", "param", "needle"),
    [
        ({"seed": 2**64}, "seed", "18446744073709551615"),
        ({"seed": -(2**63) - 1}, "seed", "outside"),
        ({"top_p": 1e-300}, "top_p", "at least 1e-06"),
        ({"temperature": 1e-300}, "temperature", "at least 0.001"),
        ({"max_tokens": 200}, "max_tokens", "at most"),
        ({"user": "caf\u00e9"}, "user", "ASCII"),
        ({"user": ".hidden"}, "user", "start with '.'"),
        ({"user": "a..b"}, "user", "contain '..'"),
    ],
)
async def test_bad_options_are_400(client, override, param, needle):
    err = await error_of(await post_raw(client, json.dumps(chat(**override))))
    assert err["param"] == param and needle in err["message"], err


async def test_max_tokens_over_the_models_room_names_the_limit(client, reactive):
    room = reactive.model.config.max_seq_len - len(reactive.template.query_ids(""))
    err = await error_of(await post_raw(client, json.dumps(chat(max_tokens=room + 1))))
    assert err["param"] == "max_tokens" and f"at most {room}" in err["message"], err
    fits = reactive.model.config.max_seq_len - len(reactive.template.query_ids("hello"))
    resp = await post_raw(client, json.dumps(chat(max_tokens=fits)))
    assert resp.status == 200, await resp.text()
    # a long message with a budget that would fit an empty one: the message is what is too long
    err = await error_of(await post_raw(client, json.dumps(chat(text="word " * 100, max_tokens=room))))
    assert err["param"] == "messages" and "the limit is" in err["message"]


@pytest.mark.parametrize("where", ["last", "history", "part"])
async def test_lone_surrogate_is_400(client, where):
    bad = "hi \\ud800 there"  # a JSON escape that decodes to a lone surrogate
    if where == "last":
        body = '{"messages": [{"role": "user", "content": "' + bad + '"}]}'
        param = "messages[0].content"
    elif where == "history":
        body = ('{"messages": [{"role": "user", "content": "' + bad + '"}, {"role": "assistant", "content": "a"},'
                ' {"role": "user", "content": "ok"}]}')
        param = "messages[0].content"
    else:
        body = '{"messages": [{"role": "user", "content": [{"type": "text", "text": "' + bad + '"}]}]}'
        param = "messages[0].content[0].text"
    err = await asyncio.wait_for(error_of(await post_raw(client, body)), 5.0)  # at once, not after 300 s
    assert err["param"] == param and "lone surrogate U+D800" in err["message"], err


async def test_primed_history_is_capped(client):
    messages = [{"role": r, "content": "x"} for _ in range(5) for r in ("user", "assistant")]
    messages.append({"role": "user", "content": "q"})
    err = await error_of(await post_raw(client, json.dumps({"messages": messages, "max_tokens": 2})))
    assert err["param"] == "messages" and "10 earlier messages" in err["message"]
    assert "max_history_messages=8" in err["message"]
    # with a session the earlier messages are not primed, so they are not capped
    resp = await post_raw(client, json.dumps({"messages": messages, "max_tokens": 2}), **{"X-Session-Id": "capped"})
    assert resp.status == 200, await resp.text()


@pytest.mark.parametrize(
    ("options", "field"),
    [
        ('{"top_k": Infinity}', "options.top_k"),
        ('{"max_new_tokens": NaN}', "options.max_new_tokens"),
        ('{"temperature": -Infinity}', "options.temperature"),
        ('{"max_new_tokens": 1e400}', "options.max_new_tokens"),
        ('{"seed": 18446744073709551616}', "options.seed"),
        ('{"top_p": 1e-300}', "options.top_p"),
        ('{"max_new_tokens": 1000}', "options.max_new_tokens"),
    ],
)
async def test_websocket_bad_numbers_get_an_error_frame(client, options, field):
    async with client.ws_connect("/ws") as ws:
        await ws.send_str('{"type": "query", "session": "n", "id": "q", "text": "hi", "options": ' + options + "}")
        frame = await ws_recv(ws)
        assert frame["type"] == "error" and frame["field"] == field, frame
        # the connection lives on
        await ws.send_str(json.dumps({"type": "query", "session": "n", "id": "q2", "text": "hi",
                                      "options": {"max_new_tokens": 2}}))
        assert (await ws_until(ws, turn_done("q2")))[-1]["type"] == "memory_updated"


async def test_websocket_deep_nesting_and_surrogates_get_error_frames(client):
    async with client.ws_connect("/ws") as ws:
        await ws.send_str("[" * 5000 + "]" * 5000)
        frame = await ws_recv(ws)
        assert frame["type"] == "error" and frame["field"] == "frame" and "deeper" in frame["message"]
        await ws.send_str('{"type": "query", "session": "u", "id": "q", "text": "a\\udfff"}')
        frame = await ws_recv(ws)
        assert frame["field"] == "text" and "lone surrogate U+DFFF" in frame["message"]


def test_check_depth_counts_maps_and_lists():
    check_depth({"a": [{"b": 1}]}, "x", limit=3)
    with pytest.raises(InvalidMessage, match="deeper than the limit 2"):
        check_depth({"a": [{"b": 1}]}, "x", limit=2)


_ID_CHARS = st.characters(codec="ascii") | st.sampled_from("é日\u00a0.")


@settings(max_examples=300, deadline=None)
@given(st.text(_ID_CHARS, min_size=1, max_size=MAX_SESSION_ID_LENGTH + 2))
def test_every_protocol_session_id_is_a_valid_file_name(session_id):
    """The protocol and the directory store agree: an id the protocol accepts is never refused by the store."""
    try:
        _check_session_id(session_id)
    except InvalidMessage:
        return
    check_file_session_id(session_id)


async def test_directory_store_serves_every_protocol_id(aiohttp_client, tmp_path):
    rm = tiny_reactive(DirectoryStore(tmp_path))
    try:
        client = await aiohttp_client(create_app(rm))
        for sid in ("x" * MAX_SESSION_ID_LENGTH, "a:b@c-d_e.f", "a.b"):
            resp = await post_raw(client, json.dumps(chat(max_tokens=2)), **{"X-Session-Id": sid})
            assert resp.status == 200, (sid, await resp.text())
        for sid in ("a..b", ".x", "..", "caf\u00e9", "a/b"):  # refused by the protocol: 400, never a store 500
            err = await error_of(await post_raw(client, json.dumps(chat(max_tokens=2)), **{"X-Session-Id": sid}))
            assert err["param"] == "X-Session-Id", err
        assert rm.wait_idle(10)
        assert sorted(rm.store.session_ids()) == sorted(["x" * MAX_SESSION_ID_LENGTH, "a:b@c-d_e.f", "a.b"])
    finally:
        rm.dispose()


async def test_mistyped_record_is_an_error_frame_at_once(aiohttp_client, tmp_path):
    """A stored record with a wrongly typed field reaches the client as an error frame, not a silent hang."""
    import msgpack
    import torch
    from safetensors.torch import save

    raw = {"format": 1, "session_id": "bad", "turns": "many", "memory_version": 2, "metadata": {},
           "updated_at": 1.5, "stm": save({"stm": torch.zeros(2, 4, 8)})}
    (tmp_path / "bad.rxs").write_bytes(msgpack.packb(raw, use_bin_type=True))
    rm = tiny_reactive(DirectoryStore(tmp_path))
    try:
        client = await aiohttp_client(create_app(rm))
        async with client.ws_connect("/ws") as ws:
            await ws.send_str(json.dumps({"type": "query", "session": "bad", "id": "q", "text": "hi"}))
            frame = await ws_recv(ws, timeout=5.0)
            assert frame["type"] == "error" and frame["id"] == "q" and "'turns'" in frame["message"], frame
    finally:
        rm.dispose()


def test_check_room_without_the_length_tokenizes_only_where_the_bound_cannot_tell():
    """need_length=False (the websocket edge): a text whose byte bound fits is not tokenized; a longer one is,
    and the verdict and error messages equal those of the exact check."""
    from rxnn_runtime.server.validation import TooLong, check_room
    from rxt.template import InteractionTemplate
    from rxt.tokenizer import RxTokenizer

    template = InteractionTemplate(RxTokenizer.default())
    tokenized = []
    exact = template.query_ids
    template.query_ids = lambda text, *args: tokenized.append(text) or exact(text, *args)
    kw = dict(tokens_field="options.max_new_tokens", text_field="text")
    assert check_room(template, 64, "hello there", 8, need_length=False, **kw) is None
    assert [t for t in tokenized if t] == []  # not tokenized (the framing "" at most once per template)
    assert check_room(template, 64, "hello there", 8, **kw) == len(exact("hello there"))
    near = "hello " * 9  # 54 bytes: the bound says maybe not, the tokens (about 18) fit
    assert check_room(template, 64, near, 8, need_length=False, **kw) == len(exact(near)) and near in tokenized
    for text, budget in (("word " * 80, 8), ("hi", 62)):
        errors = []
        for need in (True, False):
            with pytest.raises(TooLong) as caught:
                check_room(template, 64, text, budget, need_length=need, **kw)
            errors.append((caught.value.field, str(caught.value)))
        assert errors[0] == errors[1]


def test_queries_accepted_together_are_tokenized_in_one_call_with_the_same_prompts():
    """The lane tokenizes the texts of the queries one action takes in one call: the prompts equal one-by-one
    tokenizing (`InteractionTemplate.query_ids`)."""
    from runtime_helpers import tiny_model

    from rxnn_runtime import reactive_model
    from rxnn_runtime.messages import Query
    from rxnn_runtime.reactive_model import ReactiveModel

    model, tokenizer = tiny_model()
    reactive = ReactiveModel(model, tokenizer, max_batch_size=4)
    texts = ["hello there", "Ça va? 😀", "what is your name"]
    queries = [Query(f"s{i}", text) for i, text in enumerate(texts)]
    batch = reactive.intake.tokenize_many(queries)
    assert [reactive.template.prompt_from_tokens(batch[id(q)]) for q in queries] == \
        [reactive.template.query_ids(t) for t in texts]
    assert reactive.intake.tokenize_many(queries[:1]) == {}  # alone: tokenized where it is accepted
    calls, prompts = [], {}
    encode_batch, add = tokenizer.encode_batch, reactive.scheduler.add
    tokenizer.encode_batch = lambda many: calls.append(len(many)) or encode_batch(many)
    reactive.scheduler.add = lambda turn: prompts.setdefault(turn.session_id, turn.prompt) and add(turn)
    try:
        reactive._on_messages(queries)  # not connected yet: they wait, and are taken together at connect
        assert calls == [] and prompts == {}
        reactive._on_messages([reactive_model._CONNECT])
        assert calls == [3] and prompts == {f"s{i}": reactive.template.query_ids(t) for i, t in enumerate(texts)}
    finally:
        del tokenizer.encode_batch
        reactive.dispose()

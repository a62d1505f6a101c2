"""Access control on a real server (127.0.0.1): API key, Origin check, session ownership."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest
from server_helpers import TIMEOUT, turn_done, ws_recv, ws_send, ws_until

from rxnn_runtime.server import create_app
from rxnn_runtime.server.security import AccessPolicy, SessionOwners, exposure_warning, normalize_origin

KEY = "s3cret-key"


def chat(text="hello", **kw):
    return {"messages": [{"role": "user", "content": text}], "max_tokens": 4, "temperature": 0, **kw}


async def post(client, payload, **kw):
    return await asyncio.wait_for(client.post("/v1/chat/completions", json=payload, **kw), TIMEOUT)


# -- API key ---------------------------------------------------------------------------------------------------


async def test_http_needs_the_key(aiohttp_client, reactive):
    client = await aiohttp_client(create_app(reactive, api_key=KEY))
    resp = await post(client, chat())
    assert resp.status == 401 and resp.headers["WWW-Authenticate"] == "Bearer"
    assert (await resp.json())["error"]["type"] == "authentication_error"
    resp = await post(client, chat(), headers={"Authorization": "Bearer wrong"})
    assert resp.status == 401
    assert (await client.get("/v1/models")).status == 401
    resp = await post(client, chat(), headers={"Authorization": f"Bearer {KEY}"})
    assert resp.status == 200, await resp.text()
    assert (await client.get("/healthz")).status == 200  # probes need no key


async def test_key_from_the_environment(aiohttp_client, reactive, monkeypatch):
    monkeypatch.setenv("RXNN_API_KEY", KEY)
    client = await aiohttp_client(create_app(reactive))
    assert (await post(client, chat())).status == 401
    assert (await post(client, chat(), headers={"Authorization": f"Bearer {KEY}"})).status == 200


async def test_websocket_needs_the_key(aiohttp_client, reactive):
    client = await aiohttp_client(create_app(reactive, api_key=KEY))
    async with client.ws_connect("/ws") as ws:  # no key: the first frame is not an auth frame
        await ws_send(ws, {"type": "query", "session": "k1", "id": "q", "text": "hi"})
        frames = await ws_until(ws, lambda f: False, limit=5)
        assert frames[0]["type"] == "error" and frames[0]["code"] == "unauthorized"
        assert frames[-1] == {"type": "_closed", "code": 1008}
    async with client.ws_connect("/ws") as ws:  # wrong key in the auth frame
        await ws_send(ws, {"type": "auth", "api_key": "nope"})
        frames = await ws_until(ws, lambda f: False, limit=5)
        assert frames[0]["code"] == "unauthorized" and frames[-1]["code"] == 1008
    async with client.ws_connect("/ws") as ws:  # the right key in the first frame
        await ws_send(ws, {"type": "auth", "api_key": KEY})
        assert (await ws_recv(ws))["type"] == "auth_ok"
        await ws_send(ws, {"type": "query", "session": "k2", "id": "q", "text": "hi", "options": {"max_new_tokens": 2}})
        assert (await ws_until(ws, turn_done("q")))[-1]["type"] == "memory_updated"
    for kw in ({"headers": {"Authorization": f"Bearer {KEY}"}}, {"params": {"api_key": KEY}}):
        async with client.ws_connect("/ws", **kw) as ws:  # the key with the upgrade request
            await ws_send(ws, {"type": "query", "session": "k3", "id": "q", "text": "hi",
                               "options": {"max_new_tokens": 2}})
            assert (await ws_until(ws, turn_done("q")))[-1]["type"] == "memory_updated"


# -- Origin ----------------------------------------------------------------------------------------------------


async def test_cross_origin_websocket_is_refused(aiohttp_client, reactive):
    client = await aiohttp_client(create_app(reactive))
    with pytest.raises(aiohttp.WSServerHandshakeError) as info:
        await client.ws_connect("/ws", headers={"Origin": "http://evil.example"})
    assert info.value.status == 403
    with pytest.raises(aiohttp.WSServerHandshakeError):
        await client.ws_connect("/ws", headers={"Origin": "null"})
    own = f"http://127.0.0.1:{client.port}"
    async with client.ws_connect("/ws", headers={"Origin": own}) as ws:
        await ws_send(ws, {"type": "reset", "session": "o1"})
        assert (await ws_recv(ws))["type"] == "memory_updated"


async def test_allowed_origins(aiohttp_client, reactive):
    client = await aiohttp_client(create_app(reactive, allowed_origins=["https://chat.example.com"]))
    async with client.ws_connect("/ws", headers={"Origin": "https://CHAT.example.com:443"}) as ws:
        await ws_send(ws, {"type": "reset", "session": "o2"})
        assert (await ws_recv(ws))["type"] == "memory_updated"
    resp = await post(client, chat(), headers={"Origin": "https://chat.example.com"})
    assert resp.status == 200
    with pytest.raises(aiohttp.WSServerHandshakeError):
        await client.ws_connect("/ws", headers={"Origin": "https://chat.example.com.evil.example"})


async def test_cross_origin_and_text_plain_posts_are_refused(aiohttp_client, reactive):
    client = await aiohttp_client(create_app(reactive))
    resp = await post(client, chat(), headers={"Origin": "http://evil.example"})
    assert resp.status == 403 and (await resp.json())["error"]["param"] == "Origin"
    import json

    # The CORS "simple request" a foreign page can send without a preflight:
    resp = await asyncio.wait_for(client.post("/v1/chat/completions", data=json.dumps(chat()),
                                              headers={"Content-Type": "text/plain"}), TIMEOUT)
    assert resp.status == 415 and "application/json" in (await resp.json())["error"]["message"]
    resp = await post(client, chat(), headers={"Origin": f"http://127.0.0.1:{client.port}"})
    assert resp.status == 200


def test_listening_beyond_loopback_without_a_key_warns():
    assert exposure_warning("127.0.0.1", AccessPolicy()) is None
    assert exposure_warning("0.0.0.0", AccessPolicy(api_key=KEY)) is None
    warning = exposure_warning("0.0.0.0", AccessPolicy())
    assert warning is not None and "without an API key" in warning and "RXNN_API_KEY" in warning


def test_origin_rules():
    assert normalize_origin("HTTP://Example.COM:80") == "http://example.com"
    assert normalize_origin("https://[::1]:8443") == "https://[::1]:8443"
    assert normalize_origin("null") is None and normalize_origin("ftp://x") is None
    with pytest.raises(ValueError, match="not an origin"):
        AccessPolicy(allowed_origins=frozenset({"example.com"}))
    with pytest.raises(ValueError, match="api_key"):
        AccessPolicy(api_key="  ")


# -- ownership -------------------------------------------------------------------------------------------------


async def test_a_connection_cannot_cancel_or_watch_another_ones_session(aiohttp_client, reactive):
    client = await aiohttp_client(create_app(reactive))
    async with client.ws_connect("/ws") as alice, client.ws_connect("/ws") as mallory:
        await ws_send(alice, {"type": "query", "session": "alice", "id": "a1", "text": "my secret",
                              "options": {"max_new_tokens": 16}})
        assert (await ws_recv(alice))["type"] == "query_accepted"
        for frame in ({"type": "cancel", "session": "alice"}, {"type": "reset", "session": "alice"},
                      {"type": "query", "session": "alice", "id": "m", "text": "x"}):
            await ws_send(mallory, frame)
            reply = await ws_recv(mallory)
            assert reply["type"] == "error" and reply["code"] == "forbidden" and reply["field"] == "session"
            assert "another client" in reply["message"]
        frames = await ws_until(alice, turn_done("a1"))
        assert frames[-1]["type"] == "memory_updated"  # not cancelled by mallory
        # HTTP cannot use a session a websocket owns either
        resp = await post(client, chat(), headers={"X-Session-Id": "alice"})
        assert resp.status == 409 and (await resp.json())["error"]["param"] == "X-Session-Id"
        # mallory heard nothing of alice's turn
        await ws_send(mallory, {"type": "reset", "session": "mallory"})
        reply = await ws_recv(mallory)
        assert reply["type"] == "memory_updated" and reply["session"] == "mallory"
    # once alice is gone the session can be taken up again (a reconnecting client resumes its session)
    async with client.ws_connect("/ws") as again:
        await ws_send(again, {"type": "query", "session": "alice", "id": "a2", "text": "back",
                              "options": {"max_new_tokens": 2}})
        assert (await ws_until(again, turn_done("a2")))[-1]["type"] == "memory_updated"


async def test_sessions_per_connection_are_capped(aiohttp_client, reactive):
    client = await aiohttp_client(create_app(reactive, max_sessions_per_connection=2))
    async with client.ws_connect("/ws") as ws:
        for sid in ("c1", "c2"):
            await ws_send(ws, {"type": "reset", "session": sid})
            assert (await ws_recv(ws))["type"] == "memory_updated"
        await ws_send(ws, {"type": "reset", "session": "c3"})
        reply = await ws_recv(ws)
        assert reply["code"] == "forbidden" and "max_sessions_per_connection=2" in reply["message"]


def test_session_owners_counts_http_requests():
    owners, conn = SessionOwners(), object()
    assert owners.claim("s", SessionOwners.HTTP) and owners.claim("s", SessionOwners.HTTP)
    assert not owners.claim("s", conn)
    owners.release("s", SessionOwners.HTTP)
    assert not owners.claim("s", conn)  # one request still running
    owners.release("s", SessionOwners.HTTP)
    assert owners.claim("s", conn) and len(owners) == 1
    owners.release("s", conn)
    assert len(owners) == 0

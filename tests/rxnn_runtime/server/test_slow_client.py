"""A client that stops reading is really closed: the 1013 path aborts the transport (real server, raw socket)."""

from __future__ import annotations

import asyncio
import os
import time

import pytest
from server_helpers import FloodModel, raw_websocket, send_json_frame, tcp_states

from rxnn_runtime.server import create_app
from rxnn_runtime.server.app import CONNECTIONS


@pytest.mark.skipif(not os.path.exists("/proc/net/tcp"), reason="reads the kernel's TCP table (Linux)")
async def test_client_that_stops_reading_is_aborted_and_leaves_healthz(aiohttp_server, aiohttp_client):
    model = FloodModel(frames=400, size=64 * 1024)  # ~26 MB of frames: far more than the socket buffers hold
    app = create_app(model, outbox_limit=8, heartbeat=None)
    server = await aiohttp_server(app)
    sock, handshake = await raw_websocket(server.port, rcvbuf=4096)
    try:
        assert handshake.startswith(b"HTTP/1.1 101"), handshake
        await send_json_frame(sock, {"type": "query", "session": "reader", "id": "q", "text": "hi"})
        # The client never reads again. The server must notice (outbox over its limit), try to close with 1013,
        # and, since the close frame cannot be delivered either, abort the TCP connection.
        deadline = time.monotonic() + 20.0
        while app[CONNECTIONS] and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        assert not app[CONNECTIONS], "the slow connection is still registered"
        health = await (await aiohttp_client(server)).get("/healthz")
        assert (await health.json())["websockets"] == 0
        # The server's end of the TCP connection is gone (aborted), not ESTABLISHED with megabytes still queued
        # for a client that will never read them: checked in the kernel's table before the client reads a byte.
        client_port = sock.getsockname()[1]
        while "01" in tcp_states(server.port, client_port) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        assert "01" not in tcp_states(server.port, client_port), "the server's socket is still ESTABLISHED"
        # Its socket is gone: the server reset it, so reading hits the reset (or EOF) within a bounded time.
        loop = asyncio.get_running_loop()
        received, gone = 0, False
        while time.monotonic() < deadline:
            try:
                chunk = await asyncio.wait_for(loop.sock_recv(sock, 1 << 20), 5.0)
            except (ConnectionResetError, BrokenPipeError):
                gone = True
                break
            if not chunk:
                gone = True
                break
            received += len(chunk)
        assert gone, f"the server kept the connection open ({received} bytes read)"
        assert received < 8 * 1024 * 1024, "the server kept sending to a client it had dropped"
    finally:
        sock.close()

"""Server frames straight onto the transport: encode once, one write per connection per drain.

aiohttp's ``send_bytes``/``send_str`` is a coroutine per frame, so a connection needs a send task woken per drain
and pays aiohttp's checks and a socket write per frame. With 64 sessions the event loop then spends more per step
than the model's lane (and the loop and the lane share one interpreter). Here the frames a drain gives one
connection are encoded (a reused JSON encoder or msgpack packer), framed (RFC 6455: FIN, the opcode, the payload
length; a server never masks) and handed to the transport in one ``write``, synchronously, from the bridge's
callback: no task, no await. Only when the transport can take them right away (`can_write_now`); otherwise the
connection's send loop sends them through aiohttp, as before, awaiting its flow control.
"""

from __future__ import annotations

import asyncio
import json
import struct
from typing import Any

import msgpack

OPCODE_TEXT = 0x1
OPCODE_BINARY = 0x2

encode_json = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode
"""``json.dumps(value, ensure_ascii=False, separators=(",", ":"))`` without building an encoder per call."""

_PACKER = msgpack.Packer(use_bin_type=True)  # the loop thread only (a packer keeps a buffer)
_LEN1 = struct.Struct("!BB").pack
_LEN2 = struct.Struct("!BBH").pack
_LEN3 = struct.Struct("!BBQ").pack


def encode_msgpack(value: Any) -> bytes:
    """``msgpack.packb(value, use_bin_type=True)`` with one reused packer."""
    return _PACKER.pack(value)


def frame_header(length: int, opcode: int) -> bytes:
    """The header of one unmasked, final websocket frame of ``length`` payload bytes."""
    first = 0x80 | opcode
    if length < 126:
        return _LEN1(first, length)
    if length < 65536:
        return _LEN2(first, 126, length)
    return _LEN3(first, 127, length)


def can_write_now(ws: Any, transport: asyncio.BaseTransport | None) -> bool:
    """Whether frames may go straight to ``transport``: the websocket is open without compression (a negotiated
    permessage-deflate is left to aiohttp's writer) and the transport's buffer is below its high-water mark (a
    client that reads slowly gets its frames through the send loop, which waits on aiohttp's flow control)."""
    if transport is None or transport.is_closing() or getattr(ws, "closed", True) or getattr(ws, "compress", True):
        return False
    return transport.get_write_buffer_size() <= transport.get_write_buffer_limits()[1]


def write_frames(transport: asyncio.WriteTransport, payloads: list[bytes], opcode: int) -> None:
    """``payloads`` as frames of ``opcode``, in order, in one transport write."""
    parts = []
    for payload in payloads:
        parts.append(frame_header(len(payload), opcode))
        parts.append(payload)
    transport.write(b"".join(parts))


__all__ = ["OPCODE_BINARY", "OPCODE_TEXT", "can_write_now", "encode_json", "encode_msgpack", "frame_header",
           "write_frames"]

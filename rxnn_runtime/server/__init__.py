"""HTTP and websocket bridges to a `ReactiveModel` (aiohttp). Protocol: docs/protocol.md."""

from rxnn_runtime.server.app import create_app, run_server

__all__ = ["create_app", "run_server"]

"""The aiohttp application: `/ws`, `/v1/chat/completions`, `/v1/models`, `/healthz` and the chat page at `/`.

Binds 127.0.0.1 by default. Access control (API key, Origin check, session ownership) is in `security.py`;
`/healthz` reports the session store's health and the model lane's (503 when either fails). On shutdown websockets are closed with 1001 (going away) and the server waits
(bounded) for the model to go idle, so running turns finish and their sessions are saved (the runtime saves on
every commit).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import WSCloseCode, web

from rxnn_runtime.reactive_model import ReactiveModel
from rxnn_runtime.server.security import AccessPolicy, SessionOwners, exposure_warning

log = logging.getLogger(__name__)

WEB_DIR = Path(__file__).resolve().parent.parent / "web"


@dataclass(frozen=True)
class ServerConfig:
    max_message_bytes: int = 64 * 1024
    outbox_limit: int = 256
    heartbeat: float | None = 20.0
    model_name: str = "rxt"
    shutdown_timeout: float = 10.0
    request_timeout: float = 300.0
    max_body_bytes: int = 1024 * 1024
    access: AccessPolicy = field(default_factory=AccessPolicy)
    max_history_messages: int = 64  # messages one session-less OpenAI request may prime into memory
    max_sessions_per_connection: int = 256  # sessions one websocket connection may own at a time
    health_timeout: float = 2.0  # seconds /healthz waits for the store's answer


REACTIVE: web.AppKey[ReactiveModel] = web.AppKey("rxnn_reactive", ReactiveModel)
CONFIG: web.AppKey[ServerConfig] = web.AppKey("rxnn_config", ServerConfig)
CONNECTIONS: web.AppKey[set] = web.AppKey("rxnn_connections", set)
OWNERS: web.AppKey[SessionOwners] = web.AppKey("rxnn_session_owners", SessionOwners)


def create_app(
    reactive: ReactiveModel,
    *,
    max_message_bytes: int = 64 * 1024,
    outbox_limit: int = 256,
    heartbeat: float | None = 20.0,
    model_name: str = "rxt",
    shutdown_timeout: float = 10.0,
    request_timeout: float = 300.0,
    max_body_bytes: int = 1024 * 1024,
    api_key: str | None = None,
    allowed_origins: tuple[str, ...] | list[str] = (),
    max_history_messages: int = 64,
    max_sessions_per_connection: int = 256,
) -> web.Application:
    """Wire the routes around a connected (or soon connected) `ReactiveModel`.

    ``api_key`` None reads ``$RXNN_API_KEY`` (unset or empty: no key); see `security.py` for the rules.
    """
    from rxnn_runtime.server.openai_api import chat_completions, list_models
    from rxnn_runtime.server.security import access_middleware
    from rxnn_runtime.server.websocket import websocket_handler

    if max_message_bytes < 1:
        raise ValueError(f"max_message_bytes={max_message_bytes} must be >= 1")
    if outbox_limit < 1:
        raise ValueError(f"outbox_limit={outbox_limit} must be >= 1")
    for name, value in (("max_history_messages", max_history_messages),
                        ("max_sessions_per_connection", max_sessions_per_connection)):
        if value < 1:
            raise ValueError(f"{name}={value} must be >= 1")
    app = web.Application(client_max_size=max_body_bytes, middlewares=[access_middleware])
    app[REACTIVE] = reactive
    app[CONFIG] = ServerConfig(
        max_message_bytes=max_message_bytes, outbox_limit=outbox_limit, heartbeat=heartbeat, model_name=model_name,
        shutdown_timeout=shutdown_timeout, request_timeout=request_timeout, max_body_bytes=max_body_bytes,
        access=AccessPolicy.from_env(api_key, allowed_origins), max_history_messages=max_history_messages,
        max_sessions_per_connection=max_sessions_per_connection,
    )
    app[CONNECTIONS] = set()
    app[OWNERS] = SessionOwners()
    app.router.add_get("/", index)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/ws", websocket_handler)
    app.router.add_post("/v1/chat/completions", chat_completions)
    app.router.add_get("/v1/models", list_models)
    app.on_shutdown.append(_on_shutdown)
    return app


async def index(request: web.Request) -> web.StreamResponse:
    page = WEB_DIR / "index.html"
    if not page.is_file():
        return web.Response(status=404, text="404: the chat page (rxnn_runtime/web/index.html) is not installed\n")
    return web.FileResponse(page, headers={"Cache-Control": "no-cache"})


async def healthz(request: web.Request) -> web.Response:
    """``status`` "ok", or "degraded" (HTTP 503) when the session store does not answer its health check or the
    model's lane does not run a probe within ``health_timeout``."""
    config = request.app[CONFIG]
    reactive = request.app[REACTIVE]
    loop = asyncio.get_running_loop()
    try:  # off the loop: a Redis ping may block up to its socket timeout
        store_health = await asyncio.wait_for(loop.run_in_executor(None, reactive.store.health), config.health_timeout)
    except TimeoutError:
        store_health = {"status": "degraded", "error": f"no answer within health_timeout={config.health_timeout}s"}
    except Exception as exc:
        store_health = {"status": "degraded", "error": f"{type(exc).__name__}: {exc}"}
    lane = await loop.run_in_executor(None, reactive.lane_health, config.health_timeout)
    ok = store_health.get("status") == "ok" and lane["alive"]
    return web.json_response(
        {"status": "ok" if ok else "degraded", "model": config.model_name,
         "websockets": len(request.app[CONNECTIONS]), "store": store_health, "lane": lane},
        status=200 if ok else 503,
    )


async def _on_shutdown(app: web.Application) -> None:
    for conn in list(app[CONNECTIONS]):
        conn.close(WSCloseCode.GOING_AWAY, "server shutdown")
    closers = [c._closer for c in list(app[CONNECTIONS]) if c._closer is not None]
    if closers:
        await asyncio.wait(closers, timeout=5.0)
    timeout = app[CONFIG].shutdown_timeout
    loop = asyncio.get_running_loop()
    idle = await loop.run_in_executor(None, app[REACTIVE].wait_idle, timeout)
    if not idle:
        log.warning("model did not go idle within %.1fs of shutdown; unfinished turns are not saved", timeout)


async def run_server(reactive: ReactiveModel, host: str = "127.0.0.1", port: int = 8765, *,
                     on_listening: Callable[[str], None] | None = None, **kw: Any) -> None:
    """Serve until cancelled or SIGTERM/SIGINT, then shut down gracefully (see `create_app`). Once bound,
    ``on_listening`` gets the server's URL with the real port (the one the OS chose when ``port`` is 0)."""
    app = create_app(reactive, **kw)
    warning = exposure_warning(host, app[CONFIG].access)
    if warning:
        log.warning(warning)
    runner = web.AppRunner(app, handle_signals=False)
    await runner.setup()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    installed = []
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.add_signal_handler(sig, stop.set)
            installed.append(sig)
    try:
        site = web.TCPSite(runner, host, port)
        await site.start()
        url = listening_url(host, runner.addresses[0][1] if runner.addresses else port)
        log.info("rxnn server on %s", url)
        if on_listening is not None:
            on_listening(url)
        await stop.wait()
    finally:
        for sig in installed:
            loop.remove_signal_handler(sig)
        await runner.cleanup()


def listening_url(host: str, port: int) -> str:
    """``http://HOST:PORT``, an IPv6 literal in brackets."""
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"

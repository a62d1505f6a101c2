"""`EngineProcess`: the model lane (a `ReactiveModel`) in a process of its own, behind the surface the server uses.

Why: in one process the lane and the server's event loop share one GIL. At 64 nano sessions on an H200 a step's
Python work is the lane's (~630 us: launch, tokens -> events, commits) plus the loop's (~540 us: fan-out, frame
encoding, writes), so a step takes about their sum, 1.2 ms, against the device's 0.73 ms
(`benchmarks/results/runtime_overhead.json`, seventh session). With the lane in a child process each side has an
interpreter of its own, as vLLM's engine core runs apart from its API server: the lane pays only for handing each
step's batch to a pipe.

Measured (`benchmarks/results/serving.json`, seventh session, one H200, the two arms alternated twice): at 64 nano
sessions 49.8k and 48.6k tokens/s with the lane in a child process against 46.3k and 48.8k in the server's process,
the same within the runs' spread, and the memory update no shorter. The loop's share of the GIL is not what bounds
the runtime there; the lane's own work per step is. It stays an option (``rxnn serve --engine-process``), off by
default: it costs a process start (the child loads the model) and gains nothing measured yet.

    engine = EngineProcess(EngineSpec(build_default, ("runs/nano/final", "cuda")))
    engine.connect()                      # starts the child, waits until its model is loaded (and graphs captured)
    app = create_app(engine)              # the websocket/OpenAI server, unchanged
    ...
    engine.dispose()                      # the child waits for its lane to go idle, saves, exits

The parent holds what the server reads without the model: the tokenizer (and its template) and the model's config,
both sent by the child once it is ready. Messages (`Query`, `Cancel`, `Reset`, `Prime`) cross to the child as they
come; each lane step's batch of events crosses back as one pickled tuple, read by a thread that hands it to
``batches`` (a connectable stream of tuples, as `ReactiveModel.batches`), from which the event bridge fans out.
Calls that need an answer (`lane_health`, `wait_idle`, the store's health, `session_state`) are small RPCs.

The child is started with "spawn" (a forked child cannot use CUDA once the parent has), so ``EngineSpec.factory``
must be importable by name: a module-level function returning ``(model, tokenizer, store)``.
"""

from __future__ import annotations

import itertools
import logging
import multiprocessing
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

from reactivex import abc
from reactivex import operators as ops
from reactivex.disposable import Disposable
from reactivex.subject import Subject

from rxnn_runtime.isolating_subject import IsolatingSubject

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EngineSpec:
    """How the child builds its lane: ``factory(*args)`` -> ``(model, tokenizer, store)`` (store None: in memory),
    `ReactiveModel`'s keyword arguments, and what to capture before it reports ready (`ModelExecutor.precapture`'s
    keywords; None: graphs are captured on first use)."""

    factory: Callable[..., tuple[Any, Any, Any]]
    args: tuple = ()
    reactive_kwargs: dict[str, Any] = field(default_factory=dict)
    precapture: dict[str, int] | None = None
    start_timeout_s: float = 600.0

    def __post_init__(self) -> None:
        # a lambda or a nested function has "<lambda>" / "<locals>" in its qualified name: not importable by name
        if not callable(self.factory) or "<" in getattr(self.factory, "__qualname__", "<"):
            raise ValueError("EngineSpec.factory must be a module-level function (the child imports it by name)")
        if self.start_timeout_s <= 0:
            raise ValueError(f"EngineSpec.start_timeout_s={self.start_timeout_s} must be > 0")


class EngineProcessError(RuntimeError):
    """The child failed to start, died, or a call to it failed (the message says which)."""


class EngineProcess:
    """The surface of `ReactiveModel` that the server, the session facade and the benchmarks use, served by a
    `ReactiveModel` in a child process (see the module docstring)."""

    def __init__(self, spec: EngineSpec) -> None:
        self.spec = spec
        self._context = multiprocessing.get_context("spawn")
        self._conn, self._child_conn = self._context.Pipe(duplex=True)
        self._process = None
        self._reader: threading.Thread | None = None
        self._send_lock = threading.Lock()
        self._calls: dict[int, tuple[threading.Event, list]] = {}
        self._call_ids = itertools.count()
        self._ready = threading.Event()
        self._failure: str | None = None
        self._out: Subject = Subject()
        self.batches = self._out.pipe(ops.multicast(subject=IsolatingSubject(
            lambda value, exc: log.error("a subscriber failed on a batch: %r", exc))))
        self._connection: abc.DisposableBase | None = None
        self._disposed = False
        self.tokenizer = self.template = self.model = None
        self.store = SimpleNamespace(health=lambda: self._call("store_health"))

    # -- lifecycle -------------------------------------------------------------------------------------------
    def connect(self) -> abc.DisposableBase:
        """Start the child and wait until its lane is connected (model loaded, graphs captured as the spec asks)."""
        if self._disposed:
            raise EngineProcessError("EngineProcess is disposed")
        if self._process is None:
            from rxt.template import InteractionTemplate

            self._connection = self.batches.connect()
            self._process = self._context.Process(target=_child_main, args=(self._child_conn, self.spec),
                                                  name="rxnn-engine", daemon=True)
            self._process.start()
            self._child_conn.close()  # the child holds its end: EOF here when it dies
            self._reader = threading.Thread(target=self._read, name="rxnn-engine-reader", daemon=True)
            self._reader.start()
            if not self._ready.wait(self.spec.start_timeout_s) or self._failure is not None:
                failure = self._failure or f"the engine process was not ready within {self.spec.start_timeout_s}s"
                self.dispose()
                raise EngineProcessError(failure)
            self.template = InteractionTemplate(self.tokenizer)
        return Disposable(self.dispose)

    def dispose(self, timeout: float = 30.0) -> None:
        """Stop the child (it lets its lane finish what it holds and saves its commits), then the reader."""
        if self._disposed:
            return
        self._disposed = True
        if self._process is not None and self._process.is_alive():
            try:
                self._send(("stop",))
            except EngineProcessError:
                pass
            self._process.join(timeout)
            if self._process.is_alive():
                log.error("the engine process did not stop within %ss; terminating it", timeout)
                self._process.terminate()
                self._process.join(5)
        self._conn.close()
        if self._reader is not None:
            self._reader.join(5)
        self._fail_calls("the engine process is stopped")
        if self._connection is not None:
            self._connection.dispose()

    # -- what the server calls -------------------------------------------------------------------------------
    def submit(self, message: Any) -> None:
        """A `Query`, `Cancel`, `Reset` or `Prime` for the lane (as `ReactiveModel.submit`)."""
        self._send(("msg", message))

    def prime(self, session_id: str, interactions: list[tuple[str, str]], *, query_id: str = "") -> None:
        from rxnn_runtime.messages import Prime

        self.submit(Prime(session_id, tuple((str(q), str(a)) for q, a in interactions), query_id=query_id))

    def lane_health(self, timeout: float = 2.0) -> dict[str, Any]:
        if self._disposed or self._process is None or not self._process.is_alive():
            return {"alive": False, "error": self._failure or "the engine process is not running"}
        try:
            return self._call("lane_health", timeout, timeout=timeout + 5)
        except EngineProcessError as exc:
            return {"alive": False, "error": str(exc)}

    def wait_idle(self, timeout: float = 30.0) -> bool:
        if self._disposed or self._process is None:
            return True
        return bool(self._call("wait_idle", timeout, timeout=timeout + 5))

    def session_state(self, session_id: str):
        return self._call("session_state", session_id)

    def call(self, name: str, *args: Any, timeout: float = 60.0) -> Any:
        """Run ``name`` on the child's side (`_CALLS`, e.g. ``graph_count``) and return its value."""
        return self._call(name, *args, timeout=timeout)

    # -- the pipe ----------------------------------------------------------------------------------------------
    def _send(self, item: tuple) -> None:
        if self._failure is not None:
            raise EngineProcessError(self._failure)
        try:
            with self._send_lock:
                self._conn.send(item)
        except (OSError, EOFError, ValueError) as exc:
            raise EngineProcessError(f"the engine process is gone ({exc!r})") from exc

    def _call(self, name: str, *args: Any, timeout: float = 60.0) -> Any:
        call_id = next(self._call_ids)
        done, box = threading.Event(), []
        self._calls[call_id] = (done, box)
        try:
            self._send(("call", call_id, name, args))
            if not done.wait(timeout):
                raise EngineProcessError(f"the engine process did not answer {name} within {timeout}s")
        finally:
            self._calls.pop(call_id, None)
        ok, value = box[0]
        if not ok:
            raise EngineProcessError(f"{name} failed in the engine process: {value}")
        return value

    def _fail_calls(self, reason: str) -> None:
        for done, box in list(self._calls.values()):
            box.append((False, reason))
            done.set()

    def _read(self) -> None:
        """The reader thread: batches to ``batches``, answers to their callers, until the child closes the pipe."""
        while True:
            try:
                item = self._conn.recv()
            except (EOFError, OSError):
                break
            kind = item[0]
            if kind == "batch":
                self._out.on_next(item[1])
            elif kind == "reply":
                waiting = self._calls.get(item[1])
                if waiting is not None:
                    waiting[1].append((item[2], item[3]))
                    waiting[0].set()
            elif kind == "ready":
                self.tokenizer, config = item[1], item[2]
                self.model = SimpleNamespace(config=config)
                self._ready.set()
            elif kind == "failed":
                self._failure = item[1]
                self._ready.set()
        if self._failure is None and not self._disposed:
            self._failure = "the engine process exited"
            log.error("the engine process exited unexpectedly")
        self._ready.set()
        self._fail_calls(self._failure or "the engine process is stopped")


# ------------------------------------------------------------------------------------------------ the child

_CALLS: dict[str, Callable[..., Any]] = {
    "lane_health": lambda reactive, timeout: reactive.lane_health(timeout),
    "wait_idle": lambda reactive, timeout: reactive.wait_idle(timeout),
    "store_health": lambda reactive: reactive.store.health(),
    "session_state": lambda reactive, session_id: reactive.session_state(session_id),
    "graph_count": lambda reactive: reactive.executor.graph_count(),
}


def _child_main(conn, spec: EngineSpec) -> None:
    """The child: build the lane, report ready, then serve the pipe until told to stop or the parent goes."""
    import signal

    from rxnn_runtime.reactive_model import ReactiveModel

    # Ctrl-C in a terminal reaches the whole process group: the parent stops the child (its "stop" lets the lane
    # finish and save), the child does not die on its own in the middle of a step.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    send_lock = threading.Lock()

    def send(item: tuple) -> None:
        with send_lock:
            conn.send(item)

    try:
        model, tokenizer, store = spec.factory(*spec.args)
        reactive = ReactiveModel(model, tokenizer, store=store, **spec.reactive_kwargs)
        if spec.precapture:
            reactive.executor.precapture(**spec.precapture)
        # each lane action's batch goes to the parent as it is emitted (pickled on the lane: tens of us per step)
        reactive.batches.subscribe(lambda batch: send(("batch", batch)))
        reactive.connect()
    except Exception as exc:
        log.exception("the engine process failed to start")
        send(("failed", f"the engine process failed to start: {exc!r}"))
        conn.close()
        return
    send(("ready", tokenizer, model.config))
    try:
        while True:
            try:
                item = conn.recv()
            except (EOFError, OSError):  # the parent is gone
                break
            if item[0] == "msg":
                reactive.submit(item[1])
            elif item[0] == "call":
                _, call_id, name, args = item
                threading.Thread(target=_answer, args=(send, reactive, call_id, name, args), daemon=True).start()
            elif item[0] == "stop":
                reactive.wait_idle(timeout=10)
                break
    finally:
        reactive.dispose()
        conn.close()


def _answer(send, reactive, call_id: int, name: str, args: tuple) -> None:
    """One call, on a thread of its own (a health probe or a wait must not hold up the messages behind it)."""
    try:
        handler = _CALLS.get(name)
        if handler is None:
            raise ValueError(f"unknown call {name!r}; known: {sorted(_CALLS)}")
        reply = (True, handler(reactive, *args))
    except Exception as exc:
        reply = (False, repr(exc))
    try:
        send(("reply", call_id, *reply))
    except (OSError, EOFError, ValueError):
        pass


__all__ = ["EngineProcess", "EngineProcessError", "EngineSpec"]

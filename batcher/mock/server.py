"""The mock server itself: the aiohttp app (`create_app`) with its handlers and shared state,
run on the current loop (`MockServer`), in a thread (`MockServerThread`) or blocking (`serve`)."""

from __future__ import annotations

import asyncio
import contextlib
import random
import signal
import threading
import time
from collections.abc import Callable
from typing import Any

import orjson
from aiohttp import web

from batcher.mock.batches import Batches, add_batch_routes
from batcher.mock.config import DEFAULT_CONFIG, MockConfig
from batcher.mock.faults import error_body
from batcher.mock.log import LoggedRequest, RequestLog
from batcher.mock.planning import Plan, Planner, authenticate
from batcher.mock.replies import json_response
from batcher.mock.writers import (
    Closing,
    drop,
    write_cut,
    write_drip,
    write_events,
    write_huge,
    write_huge_events,
)

__all__ = ["MODELS", "MockServer", "MockServerThread", "create_app", "serve"]

MODELS = (
    "mock-1",
    "mock-2",
    "openai/gpt-5.5",
    "anthropic/claude-opus-4.8",
    "google/gemini-3.5-flash",
)


class _Latency:
    """The wait before each reply: `latency` plus seeded jitter (its own random stream)."""

    def __init__(self, latency: float, jitter: float, seed: int) -> None:
        self.latency = latency
        self.jitter = jitter
        self.active = latency > 0 or jitter > 0
        self._seed = f"jitter:{seed}"
        self._rng = random.Random(self._seed)

    def reset(self) -> None:
        """Restart the jitter stream."""
        self._rng.seed(self._seed)

    def next(self) -> float:
        """Latency plus seeded jitter for one reply."""
        jitter = self.jitter
        return self.latency + (self._rng.uniform(0, jitter) if jitter else 0.0)


class _State:
    """What the handlers share: config, request log, planner, latency, shutdown and clock."""

    def __init__(self, config: MockConfig, keep_log: bool) -> None:
        self.config = config
        self.log = RequestLog(keep_log, config.log_path)
        self.planner = Planner(config)
        self.latency = _Latency(config.latency, config.jitter, config.seed)
        self.closing = Closing()
        self.clock: Callable[[], float] = time.time
        self.batches = Batches(config, self.planner, self.log, lambda: self.clock())

    def reset(self) -> None:
        """Forget the log, attempt counters and rpm window; restart the random streams."""
        self.log.clear()
        self.planner.reset()
        self.latency.reset()


# ---------------------------------------------------------------------------- handlers


async def _respond_slow(state: _State, request: web.BaseRequest, plan: Plan) -> Any:
    """Answer a plan that waits (latency, hang) or streams (huge, drip), or drops."""
    entry, planner, closing = plan.entry, state.planner, state.closing
    index = state.log.record(entry, final=False)
    status = 0
    if plan.admitted:
        planner.in_flight += 1
    try:
        if state.latency.active and await closing.wait(state.latency.next()):
            return drop(request)
        action = plan.action
        if action == "drop":
            return drop(request)
        if action == "hang" and await closing.wait(state.config.hang_seconds):
            return drop(request)
        if plan.events is not None:
            status = 200
            if action == "huge":
                return await write_huge_events(closing, request, entry.model)
            return await write_events(closing, request, plan.events, plan.headers, action)
        if action == "cutstream":
            status = 200
            return await write_cut(request, plan.data)
        if action in ("huge", "drip"):
            status = 200
            if action == "huge":
                return await write_huge(closing, request, entry.model)
            return await write_drip(closing, request, plan.data)
        status = entry.status if action is None else 200
        return plan.response
    finally:
        if plan.admitted:
            planner.in_flight -= 1
        state.log.settle(index, entry, status)


def _chat_handler(state: _State) -> Callable[[web.Request], Any]:
    """The POST /chat/completions handler bound to `state`."""

    async def handle(request: web.Request) -> web.StreamResponse:
        """Decide synchronously; only waiting or streaming answers take the slow path."""
        t = state.clock()
        try:
            raw = await request.read()
        except web.HTTPRequestEntityTooLarge:
            plan = state.planner.too_large(request.headers, t)
            state.log.record(plan.entry)
            return plan.response  # type: ignore[return-value]
        plan = state.planner.decide(request.headers, raw, t)
        if plan.action is None and not state.latency.active:
            state.log.record(plan.entry)
            return plan.response  # type: ignore[return-value]
        return await _respond_slow(state, request, plan)

    return handle


def _models_handler(state: _State) -> Callable[[web.Request], Any]:
    """The GET /models handler (needs the API key when one is configured)."""
    data = orjson.dumps(
        {
            "object": "list",
            "data": [
                {
                    "id": m,
                    "object": "model",
                    "created": 1_700_000_000,
                    "owned_by": m.split("/")[0] if "/" in m else "mock",
                }
                for m in MODELS
            ],
        }
    )

    async def handle(request: web.Request) -> web.Response:
        if not authenticate(request.headers, state.config.api_key)[1]:
            return json_response(401, state.planner.unauthorized)
        return json_response(200, data)

    return handle


async def _health(request: web.Request) -> web.Response:
    """GET /health."""
    return json_response(200, b'{"ok":true}')


def _not_found_handler(state: _State) -> Callable[[web.Request], Any]:
    """Any other route: 404 in the configured error style."""

    async def handle(request: web.Request) -> web.Response:
        message = f"Invalid URL ({request.method} {request.path})"
        data = error_body(state.config.error_style, 404, message, "invalid_request_error", None)
        return json_response(404, data)

    return handle


_STATE = web.AppKey("batcher_mock_state", _State)


def create_app(config: MockConfig = DEFAULT_CONFIG, *, keep_log: bool = True) -> web.Application:
    """The mock API as an aiohttp application (state reachable for MockServer).

    `keep_log=False` keeps no in-memory log (for long-running servers); `log_path` still works.
    """
    state = _State(config, keep_log)
    app = web.Application(client_max_size=64 * 1024 * 1024)
    app[_STATE] = state
    chat = _chat_handler(state)
    models = _models_handler(state)
    app.router.add_post("/v1/chat/completions", chat)
    app.router.add_post("/chat/completions", chat)
    app.router.add_get("/v1/models", models)
    app.router.add_get("/models", models)
    app.router.add_get("/health", _health)
    add_batch_routes(app, state.batches, ("/v1", ""))
    app.router.add_route("*", "/{tail:.*}", _not_found_handler(state))

    async def on_shutdown(app: web.Application) -> None:
        """Wake handlers that wait (hang, drip, latency) so shutdown is quick."""
        state.closing.set()

    async def on_cleanup(app: web.Application) -> None:
        """Close the log file."""
        state.log.close()

    app.on_shutdown.append(on_shutdown)
    app.on_cleanup.append(on_cleanup)
    return app


# ----------------------------------------------------------------------------- servers


def _url(host: str, port: int) -> str:
    """The base URL clients use ("/v1" included)."""
    shown = f"[{host}]" if ":" in host else host
    return f"http://{shown}:{port}/v1"


class MockServer:
    """The mock API on the current event loop; an async context manager."""

    def __init__(
        self,
        config: MockConfig = DEFAULT_CONFIG,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        keep_log: bool = True,
    ) -> None:
        self.config = config
        self.host = host
        self.port = port
        self.url = ""
        self.app = create_app(config, keep_log=keep_log)
        self._state = self.app[_STATE]
        self._runner: web.AppRunner | None = None

    @property
    def log(self) -> list[LoggedRequest]:
        """Every POST received so far (`t` is the arrival time)."""
        return self._state.log.entries

    @property
    def batches(self) -> Batches:
        """The Batch API's files and batches (`batches.batches`: by id, in creation order)."""
        return self._state.batches

    def reset(self) -> None:
        """Clear the log and attempt counters (also the rpm window and random streams)."""
        self._state.reset()

    async def start(self) -> None:
        """Listen on host:port (port 0: any free port); sets `port` and `url`."""
        runner = web.AppRunner(
            self.app, access_log=None, handler_cancellation=True, shutdown_timeout=2.0
        )
        await runner.setup()
        try:
            # A backlog for a thousand clients connecting at once (aiohttp's default, 128,
            # drops the rest of the SYNs: a second's retransmit for each of them).
            await web.TCPSite(runner, self.host, self.port, backlog=4096).start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        self.port = runner.addresses[0][1]
        self.url = _url(self.host, self.port)

    async def close(self) -> None:
        """Stop listening, end waiting handlers and close connections."""
        runner, self._runner = self._runner, None
        if runner is not None:
            self._state.closing.set()
            await runner.cleanup()

    async def __aenter__(self) -> MockServer:
        """Start and return the server."""
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        """Close the server."""
        await self.close()


class MockServerThread:
    """The mock API on its own event loop in a daemon thread, for synchronous callers."""

    def __init__(
        self,
        config: MockConfig = DEFAULT_CONFIG,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        keep_log: bool = True,
    ) -> None:
        self.server = MockServer(config, host, port, keep_log=keep_log)
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._error: BaseException | None = None

    @property
    def url(self) -> str:
        """The base URL ("http://127.0.0.1:PORT/v1"), valid once started."""
        return self.server.url

    @property
    def port(self) -> int:
        """The port listened on, valid once started."""
        return self.server.port

    @property
    def log(self) -> list[LoggedRequest]:
        """Every POST received so far (appended from the server thread)."""
        return self.server.log

    @property
    def batches(self) -> Batches:
        """The Batch API's files and batches."""
        return self.server.batches

    def reset(self) -> None:
        """Clear the log and attempt counters."""
        self.server.reset()

    def start(self) -> None:
        """Start the thread and wait until the server listens (errors re-raised here)."""
        if self._thread is not None:
            return
        ready = threading.Event()
        self._thread = threading.Thread(
            target=asyncio.run, args=(self._main(ready),), name="batcher-mockserver", daemon=True
        )
        self._thread.start()
        ready.wait()
        if self._error is not None:
            self._thread.join()
            self._thread = None
            raise self._error

    async def _main(self, ready: threading.Event) -> None:
        """Run the server until `stop()`."""
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        try:
            await self.server.start()
        except BaseException as exc:
            self._error = exc
            ready.set()
            return
        ready.set()
        try:
            await self._stop.wait()
        finally:
            await self.server.close()

    def stop(self) -> None:
        """Stop the server and join the thread."""
        thread, self._thread = self._thread, None
        if thread is None:
            return
        if self._loop is not None and self._stop is not None:
            with contextlib.suppress(RuntimeError):  # loop already closed
                self._loop.call_soon_threadsafe(self._stop.set)
        thread.join()

    def __enter__(self) -> MockServerThread:
        """Start and return the server."""
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        """Stop the server and join its thread."""
        self.stop()


def _new_event_loop() -> asyncio.AbstractEventLoop:
    """A uvloop loop when uvloop is installed, else the default one."""
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


async def _serve(
    config: MockConfig, host: str, port: int, ready: Callable[[str], None] | None
) -> None:
    """Run a server until SIGINT/SIGTERM (or cancellation)."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    signals = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(sig, stop.set)
            signals.append(sig)
        except (NotImplementedError, RuntimeError, ValueError):
            pass  # Windows or not the main thread: KeyboardInterrupt still works
    server = MockServer(config, host, port, keep_log=False)
    try:
        await server.start()
        if ready is not None:
            ready(server.url)
        await stop.wait()
    finally:
        for sig in signals:
            loop.remove_signal_handler(sig)
        await server.close()


def serve(
    config: MockConfig,
    host: str = "127.0.0.1",
    port: int = 8000,
    *,
    ready: Callable[[str], None] | None = None,
) -> None:
    """Run the mock API until KeyboardInterrupt or SIGTERM (blocking; uvloop if available).

    `ready(url)` is called once the server listens. No in-memory log is kept.
    """
    loop = _new_event_loop()
    main = loop.create_task(_serve(config, host, port, ready))
    try:
        loop.run_until_complete(main)
    except KeyboardInterrupt:
        pass
    finally:
        try:
            if not main.done():
                main.cancel()
                with contextlib.suppress(asyncio.CancelledError, KeyboardInterrupt):
                    loop.run_until_complete(main)
            loop.run_until_complete(loop.shutdown_asyncgens())
        finally:
            loop.close()

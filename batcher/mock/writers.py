"""The mock's slow-path answers: bodies written over time (huge, drip, SSE streams, cut short)
or dropped connections, all ended early when the server shuts down (`Closing`)."""

from __future__ import annotations

import asyncio
from functools import lru_cache
from typing import Any

import orjson
from aiohttp import web

from batcher.mock.replies import JSON_HEADERS, SSE_DONE, sse

_HUGE_BYTES = 100 * 1024 * 1024
_HUGE_CHUNK = 1024 * 1024
_DRIP_INTERVAL = 1.0
_SSE_HEADERS = {"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}


class Closing:
    """Set once the server starts shutting down; cuts every wait short."""

    def __init__(self) -> None:
        self._event = asyncio.Event()

    def set(self) -> None:
        """Start shutting down: wake every waiter."""
        self._event.set()

    def is_set(self) -> bool:
        """True once the server started shutting down."""
        return self._event.is_set()

    async def wait(self, seconds: float) -> bool:
        """Sleep up to `seconds`; True when the server started shutting down meanwhile."""
        if self._event.is_set():
            return True
        try:
            await asyncio.wait_for(self._event.wait(), seconds)
        except asyncio.TimeoutError:
            return False
        return True


def drop(request: web.BaseRequest) -> web.Response:
    """Close the connection without replying; the returned response is never sent."""
    transport = request.transport
    if transport is not None:
        transport.close()
    return web.Response(status=204)


@lru_cache(maxsize=1)
def _huge_chunk() -> bytes:
    """One megabyte of filler for the `huge` fault."""
    return b"x" * _HUGE_CHUNK


async def write_huge(closing: Closing, request: web.BaseRequest, model: str | None) -> Any:
    """Stream a ~100 MB completion in 1 MB chunks; stop when the client goes away."""
    head = (
        orjson.dumps({"id": "chatcmpl-mock-huge", "object": "chat.completion", "model": model})[:-1]
        + b',"choices":[{"index":0,"message":{"role":"assistant","content":"'
    )
    tail = b'"},"finish_reason":"stop"}]}'
    chunk = _huge_chunk()
    count = max(1, (_HUGE_BYTES - len(head) - len(tail)) // len(chunk))
    response = web.StreamResponse(status=200, headers=JSON_HEADERS)
    response.content_length = len(head) + count * len(chunk) + len(tail)
    try:
        await response.prepare(request)
        await response.write(head)
        for _ in range(count):
            if closing.is_set():
                return drop(request)
            await response.write(chunk)
        await response.write(tail)
    except ConnectionError:
        pass
    return response


async def write_drip(closing: Closing, request: web.BaseRequest, data: bytes) -> Any:
    """Write a completion one byte per second; stop when the client or server goes away."""
    response = web.StreamResponse(status=200, headers=JSON_HEADERS)
    response.content_length = len(data)
    try:
        await response.prepare(request)
        for i in range(len(data)):
            await response.write(data[i : i + 1])
            if await closing.wait(_DRIP_INTERVAL):
                return drop(request)
    except ConnectionError:
        pass
    return response


async def write_cut(request: web.BaseRequest, data: bytes) -> Any:
    """Announce the whole body, write half of it and close the connection (`cutstream`)."""
    response = web.StreamResponse(status=200, headers=JSON_HEADERS)
    response.content_length = len(data)
    try:
        await response.prepare(request)
        await response.write(data[: len(data) // 2])
    except ConnectionError:
        return response
    return drop(request)


async def write_events(
    closing: Closing,
    request: web.BaseRequest,
    events: list[bytes],
    headers: dict[str, str] | None,
    action: str | None,
) -> Any:
    """Write a streamed reply (one event a second for `drip`; half, then close, for `cutstream`)."""
    if action == "cutstream":
        events = events[: len(events) // 2]
    interval = _DRIP_INTERVAL if action == "drip" else 0.0
    response = web.StreamResponse(status=200, headers={**_SSE_HEADERS, **(headers or {})})
    try:
        await response.prepare(request)
        for event in events:
            await response.write(event)
            if closing.is_set() or (interval and await closing.wait(interval)):
                return drop(request)
    except ConnectionError:
        return response
    if action == "cutstream":
        return drop(request)
    return response


async def write_huge_events(closing: Closing, request: web.BaseRequest, model: str | None) -> Any:
    """Stream ~100 MB of 1 MB content deltas; stop when the client or server goes away."""
    base = {"id": "chatcmpl-mock-huge", "object": "chat.completion.chunk", "model": model}
    chunk = {**base, "choices": [{"index": 0, "delta": {"content": "x"}, "finish_reason": None}]}
    event = sse(chunk).replace(b'"content":"x"', b'"content":"' + _huge_chunk() + b'"', 1)
    finish = {**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}
    response = web.StreamResponse(status=200, headers=_SSE_HEADERS)
    try:
        await response.prepare(request)
        for _ in range(_HUGE_BYTES // len(event)):
            if closing.is_set():
                return drop(request)
            await response.write(event)
        await response.write(sse(finish) + SSE_DONE)
    except ConnectionError:
        pass
    return response

"""SSE streaming: the mock server's streamed replies, read through `Client.post` (the HTTP
boundary) and assembled by `batcher.engine.replies.StreamReply`."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import time
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp import web

from batcher.engine.http import Attempt, Client
from batcher.engine.replies import parse_reply
from batcher.errors import AttemptError, FatalError, RetryableError
from batcher.mock import MockConfig, MockServer
from batcher.providers import Endpoint
from batcher.types import UNKNOWN_USAGE, Reply, Usage

USAGE = {"stream_options": {"include_usage": True}}
MiB = 2**20


@pytest.fixture(autouse=True)
def quiet_logs(caplog: pytest.LogCaptureFixture):
    """Fail any test during which aiohttp or asyncio logged a warning or an error."""
    yield
    noisy = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert not noisy, [f"{r.name}: {r.getMessage()}" for r in noisy]


def chat(text: str, **extra: Any) -> dict[str, Any]:
    return {"model": "mock-1", "messages": [{"role": "user", "content": text}], **extra}


async def post(
    base_url: str, session: aiohttp.ClientSession, data: bytes, max_bytes: int = MiB
) -> Attempt:
    """POST `data` through the client; the attempt, its error raised."""
    client = Client(session, Endpoint(base_url, "bearer", None), max_body_bytes=max_bytes)
    attempt = await client.post(data)
    if attempt.error is not None:
        raise attempt.error
    assert attempt.http_status == 200
    return attempt


async def stream(
    server: MockServer, session: aiohttp.ClientSession, body: dict, max_bytes: int = MiB
) -> tuple[Attempt, float]:
    """POST a streamed `body`; the attempt (reply, ttft) and the total time."""
    started = time.perf_counter()
    attempt = await post(server.url, session, orjson.dumps(body), max_bytes)
    return attempt, time.perf_counter() - started


async def plain_and_streamed(
    body: dict, config: MockConfig | None = None, extra: dict | None = None
) -> tuple[Reply, Attempt, float]:
    """The non-streamed reply to `body` and the streamed one (with `extra` keys)."""
    async with MockServer(config or MockConfig()) as server, aiohttp.ClientSession() as session:
        async with session.post(server.url + "/chat/completions", json=body) as resp:
            plain = parse_reply(resp.status, resp.headers, await resp.read())
        body = {**body, "stream": True, **(USAGE if extra is None else extra)}
        streamed, total = await stream(server, session, body)
    return plain, streamed, total


async def raw_stream(body: dict, config: MockConfig | None = None) -> tuple[int, str, bytes]:
    async with (
        MockServer(config or MockConfig()) as server,
        aiohttp.ClientSession() as session,
        session.post(server.url + "/chat/completions", json=body) as resp,
    ):
        return resp.status, resp.content_type, await resp.read()


def events(raw: bytes) -> list[Any]:
    """The data of each `data: ...\\n\\n` event ("[DONE]" kept as a string)."""
    assert raw.endswith(b"\n\n")
    out = []
    for event in raw[:-2].split(b"\n\n"):
        assert event.startswith(b"data: ")
        data = event[len(b"data: ") :]
        out.append("[DONE]" if data == b"[DONE]" else orjson.loads(data))
    return out


def same(plain: Reply, streamed: Reply) -> None:
    """Equal replies (`created` is the arrival second, so it may differ by one)."""
    assert streamed.created is not None and abs(streamed.created - (plain.created or 0)) <= 1
    assert streamed == dataclasses.replace(plain, created=streamed.created)


# ------------------------------------------------------------------------ mock server


def test_mock_streams_openai_chunks_and_usage_only_when_asked() -> None:
    status, ctype, raw = asyncio.run(raw_stream(chat("hello there", stream=True, **USAGE)))
    assert (status, ctype) == (200, "text/event-stream")
    got = events(raw)
    first, *deltas, finish, usage, done = got
    assert first["object"] == "chat.completion.chunk" and first["model"] == "mock-1"
    assert first["choices"] == [
        {"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}
    ]
    assert len(deltas) >= 2
    for chunk in deltas:
        (choice,) = chunk["choices"]
        assert choice["finish_reason"] is None and len(choice["delta"]["content"].split()) <= 3
    assert finish["choices"] == [{"index": 0, "delta": {}, "finish_reason": "stop"}]
    assert usage["choices"] == [] and usage["usage"]["total_tokens"] > 0
    assert done == "[DONE]"
    assert len({c["id"] for c in got[:-1]}) == 1

    _, _, raw = asyncio.run(raw_stream(chat("hello there", stream=True)))
    assert all("usage" not in c for c in events(raw)[:-1])


def test_mock_streams_octen_typed_chunks() -> None:
    body = chat("weather today", stream=True, octen_search=True)
    _, _, raw = asyncio.run(raw_stream(body, MockConfig(usage_style="octen")))
    got = events(raw)
    types = [c["type"] for c in got[:-1]]
    assert types[0] == "search_done" and types[-2:] == ["finish", "usage"]
    assert set(types[1:-2]) == {"content"} and got[-1] == "[DONE]"
    assert len(got[0]["search_results"]) == 2
    assert got[-2]["usage"]["num_search_queries"] == 1
    assert got[-3]["finish_reason"] == "stop"


def test_mock_error_kinds_answer_json_before_any_stream() -> None:
    status, ctype, raw = asyncio.run(raw_stream(chat("[[mock:429]] hi", stream=True)))
    assert (status, ctype) == (429, "application/json")
    assert orjson.loads(raw)["error"]["code"] == "rate_limit_exceeded"


def test_mock_cutstream_without_stream_sends_half_the_body_and_closes() -> None:
    async def go() -> None:
        async with MockServer() as server, aiohttp.ClientSession() as session:
            url = server.url + "/chat/completions"
            async with session.post(url, json=chat("[[mock:cutstream]] hi")) as resp:
                with pytest.raises(aiohttp.ClientPayloadError):
                    await resp.read()
            await asyncio.sleep(0.05)
            assert [(e.status, e.fault) for e in server.log] == [(200, "cutstream")]

    asyncio.run(go())


# --------------------------------------------------------------------- read_stream


@pytest.mark.parametrize(
    "body",
    [
        chat("hello there, how are you today?"),
        chat("short", max_tokens=3),
        chat("[[mock:length]] cut me"),
        chat("[[mock:reasoning]] think first"),
        chat("[[mock:refusal]] no"),
        chat("[[mock:toolcall]] find the thing"),
        chat("rate it", response_format={"type": "json_object"}),
        chat(
            "[[mock:prose]] rate it",
            response_format={
                "type": "json_schema",
                "json_schema": {
                    "name": "r",
                    "schema": {
                        "type": "object",
                        "properties": {"score": {"type": "integer"}, "why": {"type": "string"}},
                        "required": ["score", "why"],
                    },
                },
            },
        ),
    ],
)
def test_streamed_reply_equals_the_plain_reply(body: dict) -> None:
    plain, streamed, total = asyncio.run(plain_and_streamed(body))
    same(plain, streamed.reply)
    assert streamed.reply.usage.total_tokens > 0
    assert streamed.ttft_s is not None and 0 < streamed.ttft_s <= total


def test_reasoning_and_tool_call_deltas_are_merged() -> None:
    text = "[[mock:reasoning]] why is the sky blue"
    _, streamed, _ = asyncio.run(plain_and_streamed(chat(text)))
    assert streamed.reply.reasoning == "Mock reasoning: the user asked about " + text
    assert streamed.reply.content is not None and streamed.reply.content.startswith("Mock reply")

    text = "[[mock:toolcall]] look this up"
    plain, streamed, _ = asyncio.run(plain_and_streamed(chat(text)))
    reply = streamed.reply
    call_id = orjson.loads(reply.tool_calls or "null")[0]["id"]
    assert call_id.startswith("call_mock_")
    arguments = json.dumps({"q": text}).replace('"', '\\"')
    assert reply.tool_calls == (
        f'[{{"id":"{call_id}","type":"function",'
        f'"function":{{"name":"lookup","arguments":"{arguments}"}}}}]'
    )
    assert reply.tool_calls == plain.tool_calls
    assert (reply.content, reply.finish_reason) == (None, "tool_calls")


def test_octen_stream_gives_search_results_warning_and_usage() -> None:
    config = MockConfig(usage_style="octen")
    body = chat("weather in Paris", octen_search=True)
    plain, streamed, _ = asyncio.run(plain_and_streamed(body, config, extra={}))
    same(plain, streamed.reply)
    reply = streamed.reply
    assert reply.response_id is not None and reply.response_id.startswith("chatcmpl-mock-")
    assert len(orjson.loads(reply.search_results or "[]")) == 2
    assert reply.warning == "search results are synthetic (batcher mock server)"
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + reply.usage.completion_tokens
    assert reply.usage.prompt_tokens > 0


def test_usage_is_unknown_without_include_usage() -> None:
    plain, streamed, _ = asyncio.run(plain_and_streamed(chat("hi"), extra={}))
    assert plain.usage.total_tokens > 0
    assert streamed.reply.usage == UNKNOWN_USAGE  # no usage chunk: unknown, not 0
    assert streamed.reply.content == plain.content


def test_ttft_includes_the_latency() -> None:
    _, streamed, total = asyncio.run(plain_and_streamed(chat("hi"), MockConfig(latency=0.2)))
    assert streamed.ttft_s is not None and 0.2 <= streamed.ttft_s <= total


async def stream_error(text: str, max_bytes: int = MiB, **config: Any) -> AttemptError:
    async with MockServer(MockConfig(**config)) as server, aiohttp.ClientSession() as session:
        with pytest.raises(AttemptError) as info:
            await stream(server, session, chat(text, stream=True, **USAGE), max_bytes)
    return info.value


@pytest.mark.parametrize(
    ("text", "kind", "message"),
    [
        ("[[mock:cutstream]] hi", "connection_error", "stream cut before [DONE]"),
        ("[[mock:truncated]] hi", "connection_error", "stream cut before [DONE]"),
        ("[[mock:badjson]] hi", "bad_response", "unparseable stream chunk: "),
        ("[[mock:invalid_utf8]] hi", "bad_response", "unparseable stream chunk: "),
        ("[[mock:empty]] hi", "bad_response", "stream had no choices"),
        ("[[mock:nochoices]] hi", "bad_response", "stream had no choices"),
    ],
)
def test_broken_streams_are_retryable(text: str, kind: str, message: str) -> None:
    error = asyncio.run(stream_error(text))
    assert isinstance(error, RetryableError)
    assert error.error_type == kind and error.message.startswith(message)


def test_a_stream_beyond_max_bytes_is_fatal() -> None:
    error = asyncio.run(stream_error("hello there", max_bytes=200))
    assert isinstance(error, FatalError)
    assert (error.error_type, error.message) == (
        "response_too_large",
        "stream larger than 200 bytes",
    )
    error = asyncio.run(stream_error("[[mock:huge]] hi"))  # 1 MiB deltas, 100 MiB in all
    assert (error.error_type, error.message) == (
        "response_too_large",
        f"stream larger than {MiB} bytes",
    )


# ------------------------------------------------------------ hand-written SSE servers


async def read_raw(pieces: list[bytes], max_bytes: int = MiB) -> Attempt:
    """Serve `pieces` (written one by one) as an event stream and read it."""

    async def handle(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        for piece in pieces:
            await response.write(piece)
            await asyncio.sleep(0.002)
        return response

    app = web.Application()
    app.router.add_post("/chat/completions", handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    port = runner.addresses[0][1]
    try:
        async with aiohttp.ClientSession() as session:
            return await post(f"http://127.0.0.1:{port}", session, b"{}", max_bytes)
    finally:
        await runner.cleanup()


def chunk(delta: dict, finish: str | None = None, **top: Any) -> dict:
    return {"id": "c1", "model": "m", "created": 1_700_000_000, **top,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}  # fmt: skip


def test_crlf_comments_fields_and_events_split_anywhere() -> None:
    first = orjson.dumps(chunk({"role": "assistant", "content": "Hel"}))
    body = (
        b": keep-alive\r\n\r\n"
        b"event: message\r\nid: 1\r\ndata: " + first + b"\r\n\r\n"
        b'data:{"choices":[{"index":0,"delta":{"content":"lo, "}}]}\n\n'
        b'data: {"choices":[{"index":0,\r\ndata: "delta":{"content":"world"}}]}\r\n\r\n'
        b": ping\n\n"
        b'data: {"choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}\r\n\r\n'
        b'data: {"choices":[],"usage":{"prompt_tokens":3,"completion_tokens":2}}\r\n\r\n'
        b"data: [DONE]\r\n\r\n"
    )
    cuts = [1, 2, 15, 17, 30, 31, 32, 60, 100, 101, 140, 200, 260, 261, 262, len(body) - 3]
    pieces = [body[a:b] for a, b in zip([0, *cuts], [*cuts, len(body)])]
    assert b"".join(pieces) == body
    streamed = asyncio.run(read_raw(pieces))
    assert streamed.reply == Reply(
        content="Hello, world",
        finish_reason="stop",
        usage=Usage(3, 2, 5),
        response_id="c1",
        response_model="m",
        created=1_700_000_000,
    )
    assert streamed.ttft_s is not None and streamed.ttft_s > 0


def test_octen_chunks_with_choices_are_read_too() -> None:
    events_ = [
        {"type": "search_done", "id": "r1", "search_results": [{"query": "q"}]},
        {"type": "content", **chunk({"role": "assistant", "content": "Hi "})},
        {"type": "content", **chunk({"content": "there"})},
        {"type": "finish", **chunk({}, "stop")},
        {"type": "usage", "usage": {"prompt_tokens": 4, "completion_tokens": 1, "total_tokens": 5}},
    ]
    pieces = [b"data: " + orjson.dumps(e) + b"\n\n" for e in events_] + [b"data: [DONE]\n\n"]
    reply = asyncio.run(read_raw(pieces)).reply
    assert (reply.content, reply.finish_reason, reply.usage) == ("Hi there", "stop", Usage(4, 1, 5))
    assert (reply.response_id, reply.search_results) == ("r1", '[{"query":"q"}]')


@pytest.mark.parametrize(
    ("error", "kind", "retryable"),
    [
        (
            {"error": {"message": "overloaded mid-stream", "type": "server_error"}},
            "server_error",
            True,
        ),
        ({"error": {"message": "slow down", "code": 429}}, "rate_limited", True),
        ({"code": 401, "msg": "bad key"}, "auth_error", False),
    ],
)
def test_an_error_chunk_inside_a_stream_raises_its_error(
    error: dict, kind: str, retryable: bool
) -> None:
    pieces = [
        b"data: " + orjson.dumps(chunk({"content": "partial "})) + b"\n\n",
        b"data: " + orjson.dumps(error) + b"\n\n",
        b"data: [DONE]\n\n",
    ]
    with pytest.raises(AttemptError) as info:
        asyncio.run(read_raw(pieces))
    assert info.value.error_type == kind and info.value.retryable is retryable
    assert info.value.message == (error.get("error") or {}).get("message", error.get("msg"))


def test_no_token_means_no_ttft_and_a_clean_end_without_done_is_a_cut() -> None:
    pieces = [
        b"data: " + orjson.dumps(chunk({"role": "assistant", "content": ""})) + b"\n\n",
        b"data: " + orjson.dumps(chunk({}, "stop")) + b"\n\n",
    ]
    with pytest.raises(RetryableError, match=r"stream cut before \[DONE\]"):
        asyncio.run(read_raw(pieces))
    streamed = asyncio.run(read_raw([*pieces, b"data: [DONE]\n\n"]))
    assert streamed.ttft_s is None
    assert (streamed.reply.content, streamed.reply.finish_reason) == ("", "stop")

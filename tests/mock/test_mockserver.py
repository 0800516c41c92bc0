"""Tests of the built-in OpenAI-compatible mock server."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from typing import Any

import aiohttp
import jsonschema
import orjson
import pytest

from batcher.mock import (
    FAULT_KINDS,
    MODELS,
    LoggedRequest,
    MockConfig,
    MockServer,
    MockServerThread,
    go_duration,
    instance_for_schema,
)

Reply = tuple[int, Any, bytes]


@pytest.fixture(autouse=True)
def mock_quiet_logs(caplog: pytest.LogCaptureFixture):
    """Fail any test during which aiohttp or asyncio logged a warning or an error."""
    yield
    noisy = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert not noisy, [f"{r.name}: {r.getMessage()}" for r in noisy]


def run(coro: Any) -> Any:
    """Run a coroutine on a fresh event loop."""
    return asyncio.run(coro)


def chat(text: str, model: str = "mock-1", **extra: Any) -> dict[str, Any]:
    """A one-message chat-completions body."""
    return {"model": model, "messages": [{"role": "user", "content": text}], **extra}


def request_key(body: dict[str, Any]) -> str:
    """The server's request key: sha256 of the sorted-keys JSON body."""
    return hashlib.sha256(orjson.dumps(body, option=orjson.OPT_SORT_KEYS)).hexdigest()


async def post(
    session: aiohttp.ClientSession,
    server: MockServer,
    body: Any,
    headers: dict[str, str] | None = None,
    path: str = "/chat/completions",
) -> Reply:
    """POST `body` (bytes are sent as-is) and return (status, headers, raw body)."""
    data = body if isinstance(body, bytes) else orjson.dumps(body)
    hdrs = {"Content-Type": "application/json", **(headers or {})}
    async with session.post(server.url + path, data=data, headers=hdrs) as resp:
        return resp.status, resp.headers, await resp.read()


async def exchange(
    bodies: list[Any], config: MockConfig | None = None, headers: dict[str, str] | None = None
) -> tuple[list[Reply], list[LoggedRequest]]:
    """Send `bodies` one after the other to a fresh server; the replies and the log."""
    async with MockServer(config or MockConfig()) as server, aiohttp.ClientSession() as session:
        replies = [await post(session, server, body, headers) for body in bodies]
        return replies, list(server.log)


def one(body: Any, config: MockConfig | None = None, **kw: Any) -> Reply:
    """Send one body to a fresh server."""
    replies, _ = run(exchange([body], config, **kw))
    return replies[0]


def content_of(raw: bytes) -> str:
    """The message content of a completion body."""
    return orjson.loads(raw)["choices"][0]["message"]["content"]


# --------------------------------------------------------------------------- replies


def test_reply_has_openai_shape_and_is_deterministic() -> None:
    body = chat("Say hello to the world")
    (status, headers, raw), *_ = run(exchange([body]))[0]
    reply = orjson.loads(raw)
    assert status == 200
    assert headers["Content-Type"] == "application/json"
    assert list(reply) == ["id", "object", "created", "model", "choices", "usage"]
    assert reply["id"] == "chatcmpl-mock-" + request_key(body)[:12]
    assert reply["object"] == "chat.completion"
    assert isinstance(reply["created"], int) and abs(reply["created"] - time.time()) < 5
    assert reply["model"] == "mock-1"
    [choice] = reply["choices"]
    assert choice["index"] == 0 and choice["finish_reason"] == "stop"
    message = choice["message"]
    assert list(message) == ["role", "content", "refusal"]
    assert message["role"] == "assistant" and message["refusal"] is None
    assert message["content"].startswith("Mock reply to: Say hello to the world (")
    content = message["content"]
    usage = reply["usage"]
    assert usage == {
        "prompt_tokens": 5,  # 22 characters // 4
        "completion_tokens": len(content) // 4,
        "total_tokens": 5 + len(content) // 4,
        "prompt_tokens_details": {"cached_tokens": 0},  # a prompt under 1,024 tokens
        "completion_tokens_details": {"reasoning_tokens": 0},
    }


def test_same_body_same_content_and_different_prompts_differ() -> None:
    long_prompt = "x" * 100
    bodies = [chat("alpha"), chat("alpha"), chat("beta"), chat(long_prompt), chat("alpha", "m2")]
    replies, _ = run(exchange(bodies))
    contents = [content_of(raw) for _, _, raw in replies]
    assert contents[0] == contents[1]
    assert contents[0] != contents[2]
    assert contents[3].startswith("Mock reply to: " + "x" * 60 + " (")
    assert "x" * 61 not in contents[3]
    assert orjson.loads(replies[4][2])["model"] == "m2"
    # a second server (another seed) gives the very same content
    again = one(chat("alpha"), MockConfig(seed=99))
    assert content_of(again[2]) == contents[0]


def test_both_paths_answer_and_the_reply_uses_the_last_user_message() -> None:
    body = {
        "model": "mock-1",
        "messages": [
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": "first question"},
            {"role": "assistant", "content": "an answer"},
            {"role": "user", "content": "second question"},
        ],
    }

    async def scenario() -> tuple[Reply, Reply]:
        async with MockServer() as server, aiohttp.ClientSession() as session:
            a = await post(session, server, body)
            root = server.url.removesuffix("/v1")
            async with session.post(root + "/chat/completions", json=body) as resp:
                b = resp.status, resp.headers, await resp.read()
            return a, b

    a, b = run(scenario())
    assert a[0] == b[0] == 200
    assert content_of(a[2]) == content_of(b[2])
    assert content_of(a[2]).startswith("Mock reply to: second question (")


def test_usage_counts_text_of_every_message_and_content_part() -> None:
    body = {
        "model": "mock-1",
        "messages": [
            {"role": "system", "content": "abcdefgh"},  # 8 characters
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "1234"},
                    {"type": "image_url", "image_url": {"url": "https://example.com/a.png"}},
                    {"type": "text", "text": "5678"},
                ],  # "1234 5678": 9 characters
            },
        ],
    }
    status, _, raw = one(body)
    reply = orjson.loads(raw)
    content = reply["choices"][0]["message"]["content"]
    assert status == 200
    assert content.startswith("Mock reply to: 1234 5678 (")
    assert reply["usage"]["prompt_tokens"] == 4  # 17 // 4
    assert reply["usage"]["completion_tokens"] == len(content) // 4
    assert reply["usage"]["total_tokens"] == 4 + len(content) // 4
    assert orjson.loads(one(chat("hi"))[2])["usage"]["prompt_tokens"] == 1  # at least 1


@pytest.mark.parametrize("field", ["max_tokens", "max_completion_tokens"])
def test_max_tokens_cuts_the_reply_and_sets_length(field: str) -> None:
    replies, _ = run(exchange([chat("tell me a story", **{field: 3}), chat("tell me a story")]))
    short = orjson.loads(replies[0][2])["choices"][0]
    full = orjson.loads(replies[1][2])["choices"][0]
    assert short["finish_reason"] == "length"
    assert short["message"]["content"] == full["message"]["content"][:12]
    assert orjson.loads(replies[0][2])["usage"]["completion_tokens"] == 3
    roomy = one(chat("tell me a story", **{field: 1000}))
    assert orjson.loads(roomy[2])["choices"][0]["finish_reason"] == "stop"


def test_json_object_reply_is_a_json_object() -> None:
    body = chat("give json", response_format={"type": "json_object"})
    replies, _ = run(exchange([body, body]))
    value = orjson.loads(content_of(replies[0][2]))
    assert list(value) == ["answer"]
    assert value["answer"].startswith("Mock reply to: give json (")
    assert content_of(replies[0][2]) == content_of(replies[1][2])


SCHEMAS: dict[str, dict[str, Any]] = {
    "enum": {
        "type": "object",
        "properties": {"label": {"type": "string", "enum": ["pos", "neg", "neutral"]}},
        "required": ["label"],
        "additionalProperties": False,
    },
    "integer_bounds": {
        "type": "object",
        "properties": {
            "a": {"type": "integer", "minimum": 5, "maximum": 7},
            "b": {"type": "integer", "exclusiveMinimum": 0, "exclusiveMaximum": 3},
            "c": {"type": "number", "minimum": 0.5, "maximum": 0.75},
            "d": {"type": "number", "exclusiveMinimum": 1, "exclusiveMaximum": 1.01},
            "e": {"type": "integer", "minimum": 10, "multipleOf": 5},
            "f": {"type": "integer", "maximum": -3},
        },
        "required": ["a", "b", "c", "d", "e", "f"],
    },
    "nested_object": {
        "type": "object",
        "properties": {
            "person": {
                "type": "object",
                "properties": {
                    "name": {"type": "string", "minLength": 12, "maxLength": 20},
                    "age": {"type": "integer", "minimum": 0, "maximum": 120},
                    "active": {"type": "boolean"},
                    "nickname": {"type": ["string", "null"], "maxLength": 3},
                    "nothing": {"type": "null"},
                    "kind": {"const": "human"},
                },
                "required": ["name", "age", "active", "nickname", "nothing", "kind"],
                "additionalProperties": False,
            }
        },
        "required": ["person", "extra_required"],
    },
    "array": {
        "type": "object",
        "properties": {
            "tags": {"type": "array", "items": {"type": "string"}, "minItems": 2, "maxItems": 2},
            "scores": {"type": "array", "items": {"type": "integer", "minimum": 1, "maximum": 9}},
            "flags": {"type": "array", "items": {"type": "boolean"}, "uniqueItems": True},
            "many": {"type": "array", "items": {"type": "string"}, "minItems": 5},
            "none": {"type": "array", "items": {"type": "string"}, "maxItems": 0},
            "pair": {
                "type": "array",
                "prefixItems": [{"type": "integer"}, {"type": "string"}],
                "items": False,
                "minItems": 2,
            },
        },
        "required": ["tags", "scores", "flags", "many", "none", "pair"],
    },
    "anyof": {
        "type": "object",
        "properties": {
            "value": {"anyOf": [{"type": "integer", "minimum": 100}, {"type": "string"}]},
            "one": {"oneOf": [{"type": "string", "enum": ["x"]}, {"type": "integer"}]},
            "both": {
                "allOf": [
                    {"type": "object", "properties": {"a": {"type": "integer"}}},
                    {"required": ["b"], "properties": {"b": {"type": "boolean"}}},
                ]
            },
        },
        "required": ["value", "one", "both"],
    },
    "ref": {
        "$defs": {
            "Item": {
                "type": "object",
                "properties": {
                    "sku": {"type": "string", "maxLength": 8},
                    "qty": {"type": "integer", "minimum": 1, "maximum": 3},
                },
                "required": ["sku", "qty"],
                "additionalProperties": False,
            }
        },
        "definitions": {"Status": {"type": "string", "enum": ["open", "closed"]}},
        "type": "object",
        "properties": {
            "items": {"type": "array", "items": {"$ref": "#/$defs/Item"}, "minItems": 1},
            "status": {"$ref": "#/definitions/Status"},
        },
        "required": ["items", "status"],
        "additionalProperties": False,
    },
    "recursive": {
        "$defs": {
            "Node": {
                "type": "object",
                "properties": {
                    "name": {"type": "string"},
                    "children": {"type": "array", "items": {"$ref": "#/$defs/Node"}},
                },
                "required": ["name"],
            }
        },
        "$ref": "#/$defs/Node",
    },
    "untyped": {"properties": {"x": {}, "y": {"minimum": 3}, "z": {"format": "date"}}},
}


@pytest.mark.parametrize("name", sorted(SCHEMAS))
def test_instance_for_schema_is_valid_and_deterministic(name: str) -> None:
    schema = SCHEMAS[name]
    values = []
    for seed in range(40):
        value = instance_for_schema(schema, seed.to_bytes(4, "big"))
        jsonschema.validate(value, schema)
        assert value == instance_for_schema(schema, seed.to_bytes(4, "big"))
        values.append(orjson.dumps(value, option=orjson.OPT_SORT_KEYS))
    assert len(set(values)) > 1  # the seed matters


def test_instance_for_schema_concrete_values() -> None:
    assert instance_for_schema({"type": "integer", "minimum": 4, "maximum": 4}, b"s") == 4
    assert instance_for_schema({"const": {"k": [1]}}, b"s") == {"k": [1]}
    assert instance_for_schema({"type": "string", "minLength": 30}, b"s").endswith("x")
    assert instance_for_schema({"type": "null"}, b"s") is None
    assert instance_for_schema({"type": ["null", "boolean"]}, b"s") in (True, False)
    assert instance_for_schema({"enum": ["only"]}, b"s") == "only"
    labels = {instance_for_schema(SCHEMAS["enum"], bytes([i]))["label"] for i in range(30)}
    assert labels == {"pos", "neg", "neutral"}


def test_json_schema_reply_validates_through_the_server() -> None:
    schema = SCHEMAS["ref"]
    fmt = {"type": "json_schema", "json_schema": {"name": "order", "schema": schema}}
    bodies = [chat(f"order {i}", response_format=fmt) for i in range(5)]
    replies, _ = run(exchange([*bodies, bodies[0]]))
    values = [orjson.loads(content_of(raw)) for _, _, raw in replies]
    for value in values:
        jsonschema.validate(value, schema)
    assert values[0] == values[5]
    assert len({orjson.dumps(v, option=orjson.OPT_SORT_KEYS) for v in values}) > 1


# ----------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"{not json", "We could not parse the JSON body of your request."),
        (b"", "We could not parse the JSON body of your request."),
        ([1, 2], "The request body must be a JSON object."),
        ({"messages": [{"role": "user", "content": "x"}]}, "'model' is required"),
        ({"model": "mock-1"}, "'messages' is required"),
        ({"model": "mock-1", "messages": []}, "'messages' is required"),
        ({"model": "mock-1", "messages": ["hi"]}, "'messages.0' must be an object"),
        ({"model": "mock-1", "messages": [{"role": "user", "content": 5}]}, "'messages.0.content'"),
        (chat("x", max_tokens=0), "'max_tokens' must be an integer >= 1."),
        (chat("x", response_format={"type": "yaml"}), "'response_format.type' must be one of"),
        (chat("[[mock:nosuchfault]]"), "unknown mock fault 'nosuchfault'"),
    ],
)
def test_bad_requests_get_400(body: Any, message: str) -> None:
    replies, log = run(exchange([body]))
    status, _, raw = replies[0]
    error = orjson.loads(raw)["error"]
    assert status == 400
    assert error["type"] == "invalid_request_error" and error["code"] is None
    assert error["message"].startswith(message)
    assert [(e.status, e.fault) for e in log] == [(400, None)]
    if isinstance(body, bytes):
        assert log[0].body is None and log[0].request_key == hashlib.sha256(body).hexdigest()


@pytest.mark.parametrize("model", ["unknown-model", "missing/whatever"])
def test_unknown_models_get_404(model: str) -> None:
    status, _, raw = one(chat("hi", model))
    assert status == 404
    assert orjson.loads(raw) == {
        "error": {
            "message": f"The model `{model}` does not exist",
            "type": "invalid_request_error",
            "code": "model_not_found",
        }
    }


ERROR_CASES = {
    "400": (400, "invalid_request_error", "bad_request"),
    "401": (401, "invalid_request_error", "invalid_api_key"),
    "403": (403, "permission_error", "permission_denied"),
    "404": (404, "invalid_request_error", "model_not_found"),
    "408": (408, "timeout_error", "request_timeout"),
    "409": (409, "conflict_error", "conflict"),
    "413": (413, "invalid_request_error", "request_too_large"),
    "422": (422, "invalid_request_error", "unprocessable_entity"),
    "429": (429, "requests", "rate_limit_exceeded"),
    "quota": (429, "insufficient_quota", "insufficient_quota"),
    "500": (500, "server_error", "internal_error"),
    "502": (502, "server_error", "bad_gateway"),
    "503": (503, "server_error", "service_unavailable"),
    "504": (504, "server_error", "gateway_timeout"),
}


@pytest.mark.parametrize("kind", sorted(ERROR_CASES))
def test_error_faults_openai_style(kind: str) -> None:
    status, headers, raw = one(chat(f"[[mock:{kind}]] hi"))
    expected_status, etype, code = ERROR_CASES[kind]
    error = orjson.loads(raw)["error"]
    assert status == expected_status
    assert headers["Content-Type"] == "application/json"
    assert (error["type"], error["code"]) == (etype, code)
    assert "retry-after" not in headers and "retry-after-ms" not in headers
    if kind == "quota":
        assert error["message"] == (
            "You exceeded your current quota, please check your plan and billing details."
        )
    if kind == "404":
        assert error["message"] == "The model `mock-1` does not exist"


@pytest.mark.parametrize("kind", sorted(ERROR_CASES))
def test_error_faults_octen_style(kind: str) -> None:
    status, _, raw = one(chat(f"[[mock:{kind}]] hi"), MockConfig(error_style="octen"))
    body = orjson.loads(raw)
    assert status == ERROR_CASES[kind][0]
    assert list(body) == ["code", "msg", "data", "meta"]
    assert body["code"] == status and body["data"] == {} and body["meta"] == {}
    assert isinstance(body["msg"], str) and body["msg"]


def test_529_balance_and_html_faults() -> None:
    bodies = [chat("[[mock:529]]"), chat("[[mock:balance]]"), chat("[[mock:html]]")]
    replies, log = run(exchange(bodies))
    (s529, _, r529), (sbal, _, rbal), (shtml, hhtml, rhtml) = replies
    assert s529 == 529
    assert orjson.loads(r529) == {
        "type": "error",
        "error": {"type": "overloaded_error", "message": "Overloaded"},
    }
    assert sbal == 403
    assert orjson.loads(rbal) == {
        "code": 403,
        "msg": "insufficient balance",
        "data": {},
        "meta": {},
    }
    assert shtml == 502 and hhtml["Content-Type"] == "text/html"
    assert b"<title>502 Bad Gateway</title>" in rhtml
    assert [(e.status, e.fault) for e in log] == [(529, "529"), (403, "balance"), (502, "html")]
    octen, _, raw = one(chat("[[mock:529]]"), MockConfig(error_style="octen"))
    assert (octen, orjson.loads(raw)) == (
        529,
        {"code": 529, "msg": "Overloaded", "data": {}, "meta": {}},
    )


def test_reply_level_faults() -> None:
    kinds = ["truncated", "empty", "nochoices", "nousage", "badjson", "length", "invalid_utf8"]
    kinds += ["refusal", "toolcall", "reasoning"]
    bodies = [chat(f"[[mock:{kind}x1]] what is up") for kind in kinds]
    replies, log = run(exchange([*bodies, bodies[kinds.index("length")]]))
    got = dict(zip(kinds, replies))
    assert all(status == 200 for status, _, _ in replies)
    assert [e.fault for e in log[: len(kinds)]] == kinds

    truncated = got["truncated"]
    assert int(truncated[1]["Content-Length"]) == len(truncated[2])
    assert truncated[2].startswith(b'{"id":"chatcmpl-mock-')
    with pytest.raises(orjson.JSONDecodeError):
        orjson.loads(truncated[2])
    assert got["empty"][2] == b"" and got["empty"][1]["Content-Length"] == "0"
    assert orjson.loads(got["nochoices"][2])["choices"] == []
    nousage = orjson.loads(got["nousage"][2])
    assert "usage" not in nousage and nousage["choices"][0]["message"]["content"]
    assert got["badjson"][2].startswith(b'{"id": "x", "object": "chat.completion", "choices": [')
    with pytest.raises(orjson.JSONDecodeError):
        orjson.loads(got["badjson"][2])

    length = orjson.loads(got["length"][2])["choices"][0]
    full = content_of(replies[-1][2])  # the same body once the directive is used up
    assert length["finish_reason"] == "length"
    assert length["message"]["content"] == full[: len(full) // 2]

    bad = got["invalid_utf8"][2]
    assert b"\xff\xfe\xfd" in bad
    with pytest.raises(UnicodeDecodeError):
        bad.decode("utf-8")

    refusal = orjson.loads(got["refusal"][2])["choices"][0]
    assert refusal["message"]["content"] is None
    assert refusal["message"]["refusal"] == "I can't help with that."

    tool = orjson.loads(got["toolcall"][2])["choices"][0]
    assert tool["finish_reason"] == "tool_calls" and tool["message"]["content"] is None
    [call] = tool["message"]["tool_calls"]
    assert call["type"] == "function" and call["function"]["name"] == "lookup"
    assert call["id"].startswith("call_mock_")
    assert orjson.loads(call["function"]["arguments"]) == {"q": "[[mock:toolcallx1]] what is up"}

    reasoning = orjson.loads(got["reasoning"][2])
    message = reasoning["choices"][0]["message"]
    assert message["reasoning_content"].startswith("Mock reasoning: ")
    details = reasoning["usage"]["completion_tokens_details"]
    assert details["reasoning_tokens"] == len(message["reasoning_content"]) // 4
    assert reasoning["usage"]["completion_tokens"] == (
        len(message["content"]) // 4 + details["reasoning_tokens"]
    )


def test_drop_closes_the_connection_without_a_reply() -> None:
    async def scenario() -> list[LoggedRequest]:
        async with MockServer() as server, aiohttp.ClientSession() as session:
            with pytest.raises(aiohttp.ServerDisconnectedError):
                await post(session, server, chat("[[mock:dropx1]] bye"))
            status, _, _ = await post(session, server, chat("[[mock:dropx1]] bye"))
            assert status == 200
            return list(server.log)

    log = run(scenario())
    assert [(e.status, e.fault) for e in log] == [(0, "drop"), (200, None)]


def test_hang_replies_after_hang_seconds() -> None:
    async def scenario() -> tuple[float, Reply, list[LoggedRequest]]:
        config = MockConfig(hang_seconds=0.3)
        async with MockServer(config) as server, aiohttp.ClientSession() as session:
            start = time.perf_counter()
            reply = await post(session, server, chat("[[mock:hang]] wait"))
            return time.perf_counter() - start, reply, list(server.log)

    elapsed, (status, _, raw), log = run(scenario())
    assert 0.3 <= elapsed < 2
    assert status == 200 and content_of(raw).startswith("Mock reply to: [[mock:hang]] wait")
    assert [(e.status, e.fault) for e in log] == [(200, "hang")]


def test_hang_is_cancelled_by_client_disconnect_and_server_stop(tmp_path: Any) -> None:
    log_path = tmp_path / "requests.jsonl"

    async def scenario() -> tuple[float, list[LoggedRequest]]:
        config = MockConfig(log_path=str(log_path))
        server = MockServer(config)
        await server.start()
        async with aiohttp.ClientSession() as session:
            # 1: the client gives up; the server notices and logs status 0
            with pytest.raises(asyncio.TimeoutError):
                async with session.post(
                    server.url + "/chat/completions",
                    json=chat("[[mock:hang]] one"),
                    timeout=aiohttp.ClientTimeout(total=0.2),
                ):
                    pass
            for _ in range(100):
                if log_path.exists() and log_path.read_text():
                    break
                await asyncio.sleep(0.02)
            assert orjson.loads(log_path.read_text())["status"] == 0
            # 2: the server stops while a client waits
            pending = asyncio.ensure_future(post(session, server, chat("[[mock:hang]] two")))
            while len(server.log) < 2:
                await asyncio.sleep(0.01)
            start = time.perf_counter()
            await server.close()
            elapsed = time.perf_counter() - start
            with pytest.raises(aiohttp.ServerDisconnectedError):
                await pending
        return elapsed, list(server.log)

    elapsed, log = run(scenario())
    assert elapsed < 1.5
    assert [(e.status, e.fault) for e in log] == [(0, "hang"), (0, "hang")]
    lines = [orjson.loads(line) for line in log_path.read_text().splitlines()]
    assert [(line["status"], line["fault"]) for line in lines] == [(0, "hang"), (0, "hang")]


def test_huge_streams_about_100_mb_and_stops_when_the_client_leaves() -> None:
    async def scenario() -> tuple[int, int, float, list[LoggedRequest]]:
        server = MockServer()
        await server.start()
        async with (
            aiohttp.ClientSession() as session,
            session.post(server.url + "/chat/completions", json=chat("[[mock:huge]]")) as resp,
        ):
            read = b""
            while len(read) < 1024 * 1024:
                read += await resp.content.readany()
            length = resp.content_length
            assert read.startswith(b'{"id":"chatcmpl-mock-huge"')
            resp.close()
        start = time.perf_counter()
        await server.close()
        return resp.status, length, time.perf_counter() - start, list(server.log)

    status, length, close_time, log = run(scenario())
    assert status == 200
    assert 100_000_000 <= length <= 105_000_000
    assert close_time < 1.5
    assert [(e.status, e.fault) for e in log] == [(200, "huge")]


def test_drip_writes_so_slowly_that_the_client_times_out() -> None:
    async def scenario() -> tuple[int, bytes, float]:
        async with MockServer() as server, aiohttp.ClientSession() as session:
            timeout = aiohttp.ClientTimeout(sock_read=0.4)
            async with session.post(
                server.url + "/chat/completions", json=chat("[[mock:drip]]"), timeout=timeout
            ) as resp:
                first = await resp.content.read(1)
                start = time.perf_counter()
                with pytest.raises(asyncio.TimeoutError):
                    await resp.read()
                return resp.status, first, time.perf_counter() - start

    status, first, waited = run(scenario())
    assert (status, first) == (200, b"{")
    assert 0.3 < waited < 1.5


# ------------------------------------------------------------------------- directives


def test_directive_count_then_success_and_no_retry_headers_without_retry() -> None:
    body = chat("[[mock:429x2]] hello")
    replies, log = run(exchange([body] * 4))
    assert [status for status, _, _ in replies] == [429, 429, 200, 200]
    for _, headers, _ in replies[:2]:
        assert "retry-after" not in headers and "retry-after-ms" not in headers
    assert [e.fault for e in log] == ["429", "429", None, None]
    assert {e.request_key for e in log} == {request_key(body)}


def test_directive_retry_parameter_sets_both_retry_headers() -> None:
    replies, _ = run(
        exchange([chat("[[mock:429x1:retry=0.2]] a"), chat("[[mock:503x1:retry=2.5]] b")])
    )
    (s1, h1, _), (s2, h2, _) = replies
    assert (s1, h1["retry-after-ms"], h1["retry-after"]) == (429, "200", "1")
    assert (s2, h2["retry-after-ms"], h2["retry-after"]) == (503, "2500", "3")


def test_several_directives_apply_in_order_and_counts_are_per_body() -> None:
    body = chat("[[mock:500x1]] then [[mock:429x2]] then ok")
    other = chat("[[mock:500x1]] then [[mock:429x2]] then ok!")
    replies, _ = run(exchange([body, other, body, body, body, other]))
    assert [status for status, _, _ in replies] == [500, 500, 429, 429, 200, 429]


def test_directive_without_count_fails_every_attempt_and_reset_restarts_counts() -> None:
    async def scenario() -> list[int]:
        async with MockServer() as server, aiohttp.ClientSession() as session:
            statuses = [(await post(session, server, chat("[[mock:503]]")))[0] for _ in range(3)]
            statuses += [(await post(session, server, chat("[[mock:408x1]]")))[0] for _ in range(2)]
            server.reset()
            assert server.log == []
            statuses.append((await post(session, server, chat("[[mock:408x1]]")))[0])
            assert len(server.log) == 1
            return statuses

    assert run(scenario()) == [503, 503, 503, 408, 200, 408]


# ------------------------------------------------------------------------------- auth


def test_api_key_is_required_and_never_echoed() -> None:
    key = "sk-secret-123"
    config = MockConfig(api_key=key)

    async def scenario() -> tuple[list[Reply], list[LoggedRequest], Reply, Reply]:
        async with MockServer(config) as server, aiohttp.ClientSession() as session:
            replies = [
                await post(session, server, chat("a")),
                await post(session, server, chat("a"), {"Authorization": "Bearer wrong-key"}),
                await post(session, server, chat("a"), {"Authorization": f"Bearer {key}"}),
                await post(session, server, chat("a"), {"x-api-key": key}),
            ]
            async with session.get(server.url + "/models") as resp:
                models = resp.status, resp.headers, await resp.read()
            root = server.url.removesuffix("/v1")
            async with session.get(root + "/health") as resp:
                health = resp.status, resp.headers, await resp.read()
            return replies, list(server.log), models, health

    replies, log, models, health = run(scenario())
    assert [status for status, _, _ in replies] == [401, 401, 200, 200]
    for _, _, raw in replies[:2]:
        assert orjson.loads(raw) == {
            "error": {
                "message": "Incorrect API key provided",
                "type": "invalid_request_error",
                "code": "invalid_api_key",
            }
        }
        assert b"secret" not in raw and b"wrong" not in raw
    assert [(e.status, e.auth) for e in log] == [
        (401, None),
        (401, "bearer"),
        (200, "bearer"),
        (200, "x-api-key"),
    ]
    assert models[0] == 401 and health[0] == 200


def test_octen_error_style_for_auth() -> None:
    status, _, raw = one(chat("a"), MockConfig(api_key="k", error_style="octen"))
    assert status == 401
    assert orjson.loads(raw) == {
        "code": 401,
        "msg": "Incorrect API key provided",
        "data": {},
        "meta": {},
    }


# ------------------------------------------------------------------------ octen usage


def test_octen_usage_style_and_search_results() -> None:
    config = MockConfig(usage_style="octen")
    plain, search = run(exchange([chat("find it"), chat("find it", octen_search=True)], config))[0]
    reply = orjson.loads(plain[2])
    assert "usage" not in reply and "id" not in reply
    assert reply["request_id"] == "chatcmpl-mock-" + request_key(chat("find it"))[:12]
    content = reply["choices"][0]["message"]["content"]
    assert reply["meta"] == {
        "usage": {
            "prompt_tokens": 1,
            "completion_tokens": len(content) // 4,
            "total_tokens": 1 + len(content) // 4,
            "reasoning_tokens": 0,
            "num_search_queries": 0,
        }
    }
    assert "search_results" not in reply and "warning" not in reply
    found = orjson.loads(search[2])
    assert found["meta"]["usage"]["num_search_queries"] == 1
    assert len(found["search_results"]) == 2
    assert found["search_results"][0]["url"].startswith("https://example.com/mock/")
    assert found["search_results"][0]["title"] == "Mock result 1: find it"
    assert found["warning"] == "search results are synthetic (batcher mock server)"


def test_octen_search_tool_adds_results_in_openai_style_too() -> None:
    tools = [{"type": "function", "function": {"name": "octen_search", "parameters": {}}}]
    body = chat("look up", tools=tools)
    replies, _ = run(exchange([body, body]))
    first, second = (orjson.loads(raw) for _, _, raw in replies)
    assert "usage" in first and len(first["search_results"]) == 2 and first["warning"]
    assert first["search_results"] == second["search_results"]


# ----------------------------------------------------------------------------- limits


def test_rpm_limit_rejects_the_sixth_request_with_retry_after() -> None:
    replies, log = run(exchange([chat(f"q{i}") for i in range(7)], MockConfig(rpm=5)))
    assert [status for status, _, _ in replies] == [200] * 5 + [429, 429]
    _, headers, raw = replies[5]
    assert 1 <= int(headers["retry-after"]) <= 60
    error = orjson.loads(raw)["error"]
    assert error["type"] == "requests" and error["code"] == "rate_limit_exceeded"
    assert error["message"].startswith("Rate limit reached")
    assert "retry-after-ms" not in headers
    assert [e.fault for e in log] == [None] * 5 + ["rpm", "rpm"]


def test_rpm_window_slides_with_the_clock_and_sends_ratelimit_headers() -> None:
    now = [1000.0]

    async def scenario() -> list[Reply]:
        config = MockConfig(rpm=3, ratelimit_style="headers")
        async with MockServer(config) as server, aiohttp.ClientSession() as session:
            server._state.clock = lambda: now[0]
            replies = []
            for t in (1000.0, 1010.0, 1020.0, 1030.5, 1060.0, 1061.0):
                now[0] = t
                replies.append(await post(session, server, chat(f"at {t}")))
            return replies

    replies = run(scenario())
    assert [status for status, _, _ in replies] == [200, 200, 200, 429, 200, 429]
    limits = [
        (
            h["x-ratelimit-limit-requests"],
            h["x-ratelimit-remaining-requests"],
            h["x-ratelimit-reset-requests"],
        )
        for _, h, _ in replies
    ]
    assert limits == [
        ("3", "2", "1m0s"),
        ("3", "1", "50s"),
        ("3", "0", "40s"),
        ("3", "0", "29.5s"),
        ("3", "0", "10s"),  # 1000 left the window at 1060; 1010 leaves at 1070
        ("3", "0", "9s"),
    ]
    assert replies[3][1]["retry-after"] == "30"  # ceil(1060 - 1030.5)
    assert replies[5][1]["retry-after"] == "9"


def test_max_concurrency_rejects_requests_beyond_the_limit() -> None:
    async def scenario() -> tuple[list[Reply], list[LoggedRequest]]:
        config = MockConfig(latency=0.3, max_concurrency=2)
        async with MockServer(config) as server, aiohttp.ClientSession() as session:
            replies = await asyncio.gather(
                *(post(session, server, chat(f"c{i}")) for i in range(3))
            )
            later = await post(session, server, chat("after"))
            return [*replies, later], list(server.log)

    replies, log = run(scenario())
    assert sorted(status for status, _, _ in replies[:3]) == [200, 200, 429]
    assert replies[3][0] == 200
    [rejected] = [r for r in replies if r[0] == 429]
    assert orjson.loads(rejected[2]) == {
        "error": {
            "message": "concurrency limit exceeded",
            "type": "rate_limit_error",
            "code": "concurrency_limit_exceeded",
        }
    }
    assert "retry-after" not in rejected[1]
    assert sorted(str(e.fault) for e in log) == ["None", "None", "None", "concurrency"]


def test_latency_and_jitter_delay_every_reply() -> None:
    async def scenario() -> float:
        config = MockConfig(latency=0.15, jitter=0.05)
        async with MockServer(config) as server, aiohttp.ClientSession() as session:
            start = time.perf_counter()
            assert (await post(session, server, chat("slow")))[0] == 200
            return time.perf_counter() - start

    assert 0.15 <= run(scenario()) < 1.0


# ------------------------------------------------------------------------ fail rate


def statuses_for(config: MockConfig, n: int = 30) -> list[int]:
    """Status codes of `n` sequential distinct requests to a fresh server."""
    replies, _ = run(exchange([chat(f"r{i}") for i in range(n)], config))
    return [status for status, _, _ in replies]


def test_fail_rate_is_deterministic_for_a_seed() -> None:
    config = MockConfig(fail_rate=0.5, faults=("500", "503"), seed=7)
    first = statuses_for(config)
    assert first == statuses_for(config)
    assert set(first) == {200, 500, 503}
    assert first != statuses_for(MockConfig(fail_rate=0.5, faults=("500", "503"), seed=8))
    assert set(statuses_for(MockConfig(fail_rate=0.0), 10)) == {200}


def test_fail_rate_429_carries_short_retry_headers_and_drop_works() -> None:
    status, headers, _ = one(chat("x"), MockConfig(fail_rate=1.0, faults=("429",)))
    assert (status, headers["retry-after-ms"], headers["retry-after"]) == (429, "50", "1")

    async def scenario() -> list[LoggedRequest]:
        config = MockConfig(fail_rate=1.0, faults=("drop",))
        async with MockServer(config) as server, aiohttp.ClientSession() as session:
            with pytest.raises(aiohttp.ServerDisconnectedError):
                await post(session, server, chat("x"))
            return list(server.log)

    assert [(e.status, e.fault) for e in run(scenario())] == [(0, "drop")]


def test_directive_failures_do_not_draw_random_faults() -> None:
    config = MockConfig(fail_rate=1.0, faults=("500",))
    replies, log = run(exchange([chat("[[mock:409x1]]"), chat("plain")], config))
    assert [status for status, _, _ in replies] == [409, 500]
    assert [e.fault for e in log] == ["409", "500"]


# -------------------------------------------------------------------------------- log


def test_log_path_gets_one_json_line_per_request_without_secrets(tmp_path: Any) -> None:
    path = tmp_path / "log.jsonl"
    config = MockConfig(api_key="sk-top-secret", log_path=str(path))
    bodies = [chat("one"), chat("[[mock:500x1]] two"), chat("three")]
    start = time.time()
    _, log = run(exchange(bodies, config, headers={"x-api-key": "sk-top-secret"}))
    text = path.read_text()
    lines = [orjson.loads(line) for line in text.splitlines()]
    assert len(lines) == 3
    assert all(
        list(line) == ["t", "model", "request_key", "status", "fault", "auth"] for line in lines
    )
    assert [(line["status"], line["fault"], line["auth"]) for line in lines] == [
        (200, None, "x-api-key"),
        (500, "500", "x-api-key"),
        (200, None, "x-api-key"),
    ]
    assert [line["request_key"] for line in lines] == [request_key(b) for b in bodies]
    assert all(start - 1 <= line["t"] <= time.time() for line in lines)
    assert "sk-top-secret" not in text and "one" not in text
    assert [e.t for e in log] == [line["t"] for line in lines]
    assert log[0].body == bodies[0] and log[0].model == "mock-1"


# ---------------------------------------------------------------------- other routes


def test_models_health_and_unknown_routes() -> None:
    async def scenario() -> tuple[Any, Any, Reply]:
        async with MockServer() as server, aiohttp.ClientSession() as session:
            async with session.get(server.url + "/models") as resp:
                models = await resp.json()
            async with session.get(server.url.removesuffix("/v1") + "/health") as resp:
                health = resp.status, await resp.json()
            async with session.post(server.url + "/nothing", json={}) as resp:
                missing = resp.status, resp.headers, await resp.read()
            assert server.log == []
            return models, health, missing

    models, health, missing = run(scenario())
    assert models["object"] == "list"
    ids = [m["id"] for m in models["data"]]
    assert ids == list(MODELS)
    assert {
        "mock-1",
        "openai/gpt-5.5",
        "anthropic/claude-opus-4.8",
        "google/gemini-3.5-flash",
    } <= set(ids)
    assert all(m["object"] == "model" for m in models["data"])
    assert health == (200, {"ok": True})
    assert missing[0] == 404
    assert orjson.loads(missing[2])["error"]["message"] == "Invalid URL (POST /v1/nothing)"


# -------------------------------------------------------------------- sync and serve


def sync_post(url: str, body: dict[str, Any]) -> tuple[int, bytes]:
    """POST with the standard library (no event loop in this thread)."""
    request = urllib.request.Request(
        url + "/chat/completions",
        data=orjson.dumps(body),
        headers={"Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=5) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, exc.read()


def test_mock_server_thread_serves_sync_callers() -> None:
    before = threading.active_count()
    with MockServerThread(MockConfig(seed=3)) as server:
        assert server.url == f"http://127.0.0.1:{server.port}/v1"
        status, raw = sync_post(server.url, chat("from a thread"))
        assert status == 200 and content_of(raw).startswith("Mock reply to: from a thread")
        assert sync_post(server.url, chat("[[mock:502x1]]"))[0] == 502
        assert [(e.status, e.fault) for e in server.log] == [(200, None), (502, "502")]
        server.reset()
        assert server.log == []
    assert threading.active_count() == before
    manual = MockServerThread()
    manual.start()
    assert sync_post(manual.url, chat("again"))[0] == 200
    manual.stop()
    manual.stop()  # idempotent


def test_mock_server_thread_reports_a_busy_port() -> None:
    with MockServerThread() as first, pytest.raises(OSError):
        MockServerThread(port=first.port).start()


def test_serve_runs_until_sigterm() -> None:
    code = (
        "from batcher.mock import MockConfig, serve\n"
        "serve(MockConfig(), '127.0.0.1', 0, ready=lambda url: print(url, flush=True))\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONWARNINGS": "error"},
    )
    try:
        url = proc.stdout.readline().strip()
        assert url.startswith("http://127.0.0.1:") and url.endswith("/v1")
        status, raw = sync_post(url, chat("served"))
        assert status == 200 and content_of(raw).startswith("Mock reply to: served")
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0
    assert err == ""


# ------------------------------------------------------------------------- config etc.


@pytest.mark.parametrize(
    "kwargs",
    [
        {"fail_rate": 1.5},
        {"faults": ("nope",)},
        {"rpm": 0},
        {"max_concurrency": 0},
        {"error_style": "xml"},
        {"usage_style": "other"},
        {"latency": -1},
    ],
)
def test_config_rejects_impossible_settings(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        MockConfig(**kwargs)


def test_config_faults_become_a_tuple_and_every_kind_is_known() -> None:
    assert MockConfig(faults=["500", "drop"]).faults == ("500", "drop")  # type: ignore[arg-type]
    assert set(MockConfig().faults) <= FAULT_KINDS
    assert len(FAULT_KINDS) == 36


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0, "0s"),
        (0.25, "250ms"),
        (1, "1s"),
        (1.5, "1.5s"),
        (59.9994, "59.999s"),
        (360, "6m0s"),
        (3725, "1h2m5s"),
    ],
)
def test_go_duration(seconds: float, text: str) -> None:
    assert go_duration(seconds) == text


def _at_times(config: MockConfig, times: list[float]) -> list[Reply]:
    now = [0.0]

    async def scenario() -> list[Reply]:
        async with MockServer(config) as server, aiohttp.ClientSession() as session:
            server._state.clock = lambda: now[0]
            replies = []
            for i, t in enumerate(times):
                now[0] = t
                replies.append(await post(session, server, chat(f"at {i}")))
            return replies

    return run(scenario())


def test_rpm_over_a_short_window_as_real_servers_enforce_it() -> None:
    """600 rpm over 1 s: 10 in any second; the 11th waits for the first to leave. With
    retry-after-ms style, the 429 says how long to the millisecond and the limit a minute."""
    config = MockConfig(rpm=600, rpm_window=1.0, ratelimit_style="retry-after-ms")
    times = [100.0 + 0.01 * i for i in range(11)] + [100.95, 101.0]
    replies = _at_times(config, times)
    assert [status for status, _, _ in replies] == [200] * 10 + [429, 429, 200]
    _, headers, _ = replies[10]
    picked = {k.lower(): v for k, v in headers.items() if k.lower().startswith(("retry", "x-rate"))}
    assert picked == {
        "retry-after-ms": "900",
        "retry-after": "1",
        "x-ratelimit-limit-requests": "600",
        "x-ratelimit-remaining-requests": "0",
        "x-ratelimit-reset-requests": "900ms",
    }
    assert "x-ratelimit-limit-requests" not in replies[0][1]  # only 429s carry them


def test_bare_429s_carry_no_header_and_every_reply_carries_them_in_headers_style() -> None:
    bare = _at_times(MockConfig(rpm=60, rpm_window=1.0, ratelimit_style="bare"), [5.0, 5.1])
    assert [s for s, _, _ in bare] == [200, 429]
    assert not [k for k in bare[1][1] if k.lower().startswith(("retry", "x-rate"))]
    every = _at_times(MockConfig(rpm=600, rpm_window=1.0, ratelimit_style="headers"), [7.0])
    assert every[0][1]["x-ratelimit-limit-requests"] == "600"
    assert every[0][1]["x-ratelimit-remaining-requests"] == "540"  # 9 of 10 left, a minute


def test_a_schedule_changes_the_limit_mid_run() -> None:
    """600 rpm over 1 s, 120 rpm (2 a second) from 20 s after the first request, 600 again
    from 40 s."""
    config = MockConfig(rpm=600, rpm_window=1.0, rpm_schedule=((20, 120), (40, 600)))
    times = [10.0 + 0.01 * i for i in range(5)]  # the schedule starts at 10.0
    times += [31.0, 31.01, 31.02]  # 21 s in: 2 a second
    times += [51.0 + 0.01 * i for i in range(5)]  # 41 s in: 10 a second again
    statuses = [s for s, _, _ in _at_times(config, times)]
    assert statuses == [200] * 5 + [200, 200, 429] + [200] * 5


def test_rpm_window_and_schedule_are_checked() -> None:
    with pytest.raises(ValueError, match="rpm_window must be > 0"):
        MockConfig(rpm=5, rpm_window=0)
    with pytest.raises(ValueError, match="rpm_schedule needs rpm"):
        MockConfig(rpm_schedule=((1, 5),))
    with pytest.raises(ValueError, match="ratelimit_style must be one of"):
        MockConfig(ratelimit_style="loud")

"""Classifying replies and errors: the one place raw provider JSON is read."""

from __future__ import annotations

import asyncio

import aiohttp
import orjson
import pytest

from batcher.engine.http import PERMANENT_ERRORS, map_exception
from batcher.engine.replies import parse_reply, retry_after, status_error
from batcher.errors import AttemptError, FatalError, RetryableError
from batcher.types import UNKNOWN_USAGE


def body(obj) -> bytes:
    return orjson.dumps(obj)


COMPLETION = {
    "id": "chatcmpl-1",
    "model": "m-2024",
    "created": 1700000000,
    "choices": [
        {"index": 0, "message": {"role": "assistant", "content": "hi"}, "finish_reason": "stop"}
    ],
    "usage": {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7, "cost": 0.0001},
}


def test_openai_completion_fields():
    reply = parse_reply(200, {}, body(COMPLETION))
    assert reply.content == "hi"
    assert reply.finish_reason == "stop"
    assert reply.response_id == "chatcmpl-1"
    assert reply.response_model == "m-2024"
    assert reply.created == 1700000000
    assert (reply.usage.prompt_tokens, reply.usage.completion_tokens) == (5, 2)
    assert reply.usage.total_tokens == 7
    assert reply.usage.cost_usd == 0.0001


def test_octen_meta_usage_request_id_search_results_and_warning():
    data = {
        "request_id": "req-9",
        "choices": [
            {"message": {"content": "x", "reasoning_content": "think"}, "finish_reason": "stop"}
        ],
        "meta": {
            "usage": {
                "prompt_tokens": 3,
                "completion_tokens": 4,
                "total_tokens": 7,
                "reasoning_tokens": 1,
            }
        },
        "search_results": [{"url": "https://example.org", "title": "t"}],
        "warning": "model substituted",
    }
    reply = parse_reply(200, {}, body(data))
    assert reply.response_id == "req-9"
    assert reply.usage.total_tokens == 7
    assert reply.reasoning == "think"
    assert orjson.loads(reply.search_results) == [{"url": "https://example.org", "title": "t"}]
    assert reply.warning == "model substituted"


def test_tool_calls_and_refusal():
    data = {
        "choices": [
            {
                "message": {
                    "content": None,
                    "refusal": "no",
                    "tool_calls": [{"id": "1", "type": "function"}],
                },
                "finish_reason": "tool_calls",
            }
        ]
    }
    reply = parse_reply(200, {}, body(data))
    assert reply.content is None
    assert reply.refusal == "no"
    assert orjson.loads(reply.tool_calls) == [{"id": "1", "type": "function"}]
    assert reply.usage == UNKNOWN_USAGE  # billed, but the reply did not say: never a 0


@pytest.mark.parametrize(
    "raw, message",
    [
        (b"", "empty reply body"),
        (b'{"id": "x", "choices": [', "reply is not valid JSON"),
        (body({"choices": []}), "reply has no choices"),
        (body({"id": "x"}), "reply has no 'choices'"),
        (b'{"choices": [{"message": {"content": "\xff"}}]}', "reply is not valid JSON"),
    ],
)
def test_unusable_200_is_retryable(raw, message):
    with pytest.raises(RetryableError) as info:
        parse_reply(200, {}, raw)
    assert info.value.error_type == "bad_response"
    assert info.value.message.startswith(message)


@pytest.mark.parametrize(
    "status, payload, kind, retryable, job_fatal",
    [
        (
            429,
            {"error": {"message": "Rate limit reached", "code": "rate_limit_exceeded"}},
            "rate_limited",
            True,
            False,
        ),
        (
            429,
            {"error": {"message": "You exceeded your current quota", "type": "insufficient_quota"}},
            "quota_exhausted",
            False,
            True,
        ),
        (
            403,
            {"code": 403, "msg": "insufficient balance", "data": {}, "meta": {}},
            "quota_exhausted",
            False,
            True,
        ),
        (403, {"error": {"message": "Forbidden"}}, "permission_denied", False, True),
        (401, {"error": {"message": "Incorrect API key provided"}}, "auth_error", False, True),
        (404, {"error": {"message": "The model `x` does not exist"}}, "not_found", False, True),
        (400, {"error": {"message": "bad"}}, "bad_request", False, False),
        (413, {"error": {"message": "too big"}}, "bad_request", False, False),
        (422, {"error": {"message": "bad"}}, "bad_request", False, False),
        (408, {"error": {"message": "timeout"}}, "timeout", True, False),
        (409, {"error": {"message": "conflict"}}, "server_error", True, False),
        (500, {"error": {"message": "oops"}}, "server_error", True, False),
        (502, {"error": {"message": "oops"}}, "server_error", True, False),
        (503, {"error": {"message": "oops"}}, "server_error", True, False),
        (504, {"error": {"message": "oops"}}, "server_error", True, False),
        (
            529,
            {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}},
            "server_error",
            True,
            False,
        ),
        (418, {"error": {"message": "teapot"}}, "http_error", False, False),
    ],
)
def test_status_classification(status, payload, kind, retryable, job_fatal):
    error = status_error(status, {}, body(payload))
    assert isinstance(error, RetryableError if retryable else FatalError)
    assert error.error_type == kind
    assert error.job_fatal is job_fatal
    assert error.http_status == status


def test_error_messages_are_the_servers():
    error = status_error(401, {}, body({"error": {"message": "Incorrect API key provided"}}))
    assert error.message == "Incorrect API key provided"
    octen = status_error(429, {}, body({"code": 429, "msg": "too many requests"}))
    assert octen.message == "too many requests"
    gemini = status_error(
        429,
        {},
        body(
            [
                {
                    "error": {
                        "code": 429,
                        "message": "Resource exhausted",
                        "status": "RESOURCE_EXHAUSTED",
                    }
                }
            ]
        ),
    )
    assert gemini.message == "Resource exhausted"
    html = status_error(502, {}, b"<!DOCTYPE html><html><body>Bad gateway</body></html>")
    assert html.message == "HTTP 502"
    assert html.retryable


def test_concurrency_429_is_marked():
    error = status_error(429, {}, body({"error": {"message": "concurrency limit exceeded"}}))
    assert error.retryable and error.concurrency


def test_error_body_on_200_is_an_error():
    error = status_error(
        200, {}, body({"error": {"message": "upstream quota exhausted", "type": "upstream_error"}})
    )
    assert error.error_type == "quota_exhausted"
    with pytest.raises(AttemptError):
        parse_reply(200, {}, body({"error": {"message": "internal", "code": 500}}))


def test_redirects_are_not_followed():
    error = status_error(307, {"Location": "https://elsewhere.example/v1"}, b"")
    assert not error.retryable
    assert "redirect to https://elsewhere.example/v1 not followed" in error.message


def test_retry_after_headers():
    assert retry_after({"retry-after-ms": "250", "retry-after": "9"}) == 0.25
    assert retry_after({"retry-after": "3"}) == 3.0
    assert retry_after({"retry-after": "soon"}) is None
    assert retry_after({}) is None
    assert retry_after({"retry-after": "Wed, 21 Oct 2015 07:28:00 GMT"}) == 0.0
    error = status_error(429, {"retry-after": "2"}, body({"error": {"message": "slow down"}}))
    assert error.retry_after == 2.0


def all_subclasses(cls):
    for sub in cls.__subclasses__():
        yield sub
        yield from all_subclasses(sub)


def test_every_aiohttp_client_error_is_mapped():
    """Every aiohttp error maps to one of ours, even half-built; TLS errors are permanent."""
    kinds = {"timeout", "connection_error", "bad_response"}
    for cls in {aiohttp.ClientError, *all_subclasses(aiohttp.ClientError)}:
        error = map_exception(cls.__new__(cls))
        assert isinstance(error, AttemptError), cls
        assert error.error_type in kinds, cls
        assert error.retryable is not issubclass(cls, PERMANENT_ERRORS), cls
    assert map_exception(asyncio.TimeoutError()).error_type == "timeout"
    dropped = map_exception(aiohttp.ServerDisconnectedError())
    assert (dropped.error_type, dropped.retryable) == ("connection_error", True)
    assert map_exception(aiohttp.ClientPayloadError("cut")).retryable
    assert map_exception(ConnectionResetError(104, "reset")).error_type == "connection_error"


def test_attempt_error_repr_has_no_headers():
    error = status_error(401, {"Authorization": "Bearer sk-secret"}, b"")
    assert "sk-secret" not in repr(error) and "sk-secret" not in str(error)

"""The mock's replies: the parsed request, its deterministic completion (shaped by
`response_format` and by message-level faults) and the same reply as Server-Sent Events."""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable
from typing import Any

import orjson
from aiohttp import web

from batcher.mock.faults import JSON
from batcher.mock.values import WORDS, instance_for_schema

JSON_HEADERS = {"Content-Type": JSON}
SSE_DONE = b"data: [DONE]\n\n"
_WORDS_PER_DELTA = 3
_BAD_JSON = b'{"id": "x", "object": "chat.completion", "choices": [{"index": 0, "message": {'
_UTF8_MARK = "@@INVALID_UTF8@@"
_INVALID_UTF8 = b"bad bytes \xff\xfe\xfd here: "  # replaces the mark in the sent bytes
_REFUSAL = "I can't help with that."
_SEARCH_WARNING = "search results are synthetic (batcher mock server)"


def json_response(status: int, body: bytes, headers: dict[str, str] | None = None) -> web.Response:
    """A response with a JSON content type and optional extra headers."""
    if headers:
        return web.Response(status=status, body=body, headers={**JSON_HEADERS, **headers})
    return web.Response(status=status, body=body, headers=JSON_HEADERS)


def text_of(content: Any) -> str:
    """The text of a message content: a string, or the text parts of a list joined."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(
            p["text"] for p in content if isinstance(p, dict) and isinstance(p.get("text"), str)
        )
    return ""


_NOT_IN_REPLY_KEY = ("stream", "stream_options", "prompt_cache_key")


class Req:
    """One parsed POST: body, key, texts and how it authenticated.

    `reply_key` (and `digest`) pick the reply: the key of the body without `stream`,
    `stream_options` and `prompt_cache_key`, so a streamed request (or one with a cache
    hint) gets the same reply as the plain one. `cache` is (cached, written) prompt tokens.
    """

    __slots__ = ("auth", "body", "cache", "digest", "key", "model", "reply_key", "t", "texts")

    def __init__(self, t: float, body: Any, key: str, auth: str | None) -> None:
        self.t = t
        self.body = body
        self.key = key
        self.auth = auth
        ok = isinstance(body, dict)
        self.reply_key = key
        if ok and any(k in body for k in _NOT_IN_REPLY_KEY):
            plain = {k: v for k, v in body.items() if k not in _NOT_IN_REPLY_KEY}
            self.reply_key = hashlib.sha256(
                orjson.dumps(plain, option=orjson.OPT_SORT_KEYS)
            ).hexdigest()
        self.digest = bytes.fromhex(self.reply_key)
        self.model = body.get("model") if ok and isinstance(body.get("model"), str) else None
        self.texts: list[str] = []  # the text of each message, once the body is valid
        self.cache = (0, 0)

    def last_user_text(self) -> str:
        """The text of the last user message (else of the last message)."""
        messages = self.body["messages"]
        for message, text in zip(reversed(messages), reversed(self.texts)):
            if message.get("role") == "user":
                return text
        return self.texts[-1]


# ------------------------------------------------------------------------ completions


def _reply_text(req: Req) -> str:
    """The deterministic reply text: the prompt's start plus words picked by the hash."""
    snippet = req.last_user_text()[:60].replace("\n", " ")
    digest = req.digest
    words = " ".join(WORDS[digest[i] % len(WORDS)] for i in range(4))
    return f"Mock reply to: {snippet} ({words})"


def _reply_content(req: Req) -> str:
    """The message content, shaped by `response_format`."""
    fmt = req.body.get("response_format")
    if isinstance(fmt, dict):
        kind = fmt.get("type")
        if kind == "json_object":
            return orjson.dumps({"answer": _reply_text(req)}).decode()
        if kind == "json_schema":
            schema = fmt["json_schema"].get("schema")
            if isinstance(schema, dict):
                return orjson.dumps(instance_for_schema(schema, req.digest)).decode()
            return orjson.dumps({"answer": _reply_text(req)}).decode()
    return _reply_text(req)


def _wants_search(body: dict) -> bool:
    """True when the body asks for Octen web search (`octen_search` flag or tool)."""
    if body.get("octen_search") is True:
        return True
    tools = body.get("tools")
    if not isinstance(tools, list):
        return False
    for tool in tools:
        if isinstance(tool, dict):
            function = tool.get("function")
            name = function.get("name") if isinstance(function, dict) else tool.get("name")
            if "octen_search" in (tool.get("type"), name):
                return True
    return False


def _search_results(req: Req) -> list[dict[str, str]]:
    """Two deterministic, synthetic search results for the prompt."""
    topic = req.last_user_text()[:40].replace("\n", " ")
    return [
        {
            "title": f"Mock result {i + 1}: {topic}",
            "url": f"https://example.com/mock/{req.reply_key[i * 8 : i * 8 + 8]}",
            "snippet": f"{WORDS[req.digest[8 + i] % len(WORDS)]} facts about {topic}",
        }
        for i in range(2)
    ]


def completion(req: Req, fault: str | None, usage_style: str) -> dict[str, Any]:
    """The completion object for `req`, altered by a 200-status fault kind."""
    body = req.body
    content: str | None = _reply_content(req)
    finish = "stop"
    limit = body.get("max_completion_tokens") or body.get("max_tokens")
    if limit is not None and len(content) > limit * 4:
        content, finish = content[: limit * 4], "length"
    message: dict[str, Any] = {"role": "assistant", "content": content, "refusal": None}
    completion_text = content
    reasoning_tokens = 0
    if fault is not None:
        completion_text, finish, reasoning_tokens = _alter_message(req, fault, message, finish)
    prompt_tokens = max(1, sum(len(t) for t in req.texts) // 4)
    completion_tokens = max(1, len(completion_text) // 4) + reasoning_tokens
    usage = _usage(req, prompt_tokens, completion_tokens, reasoning_tokens, usage_style)
    search = _wants_search(body)
    rid = "chatcmpl-mock-" + req.reply_key[:12]
    out: dict[str, Any] = {
        "request_id" if usage_style == "octen" else "id": rid,
        "object": "chat.completion",
        "created": int(req.t),
        "model": req.model,
        "choices": [{"index": 0, "message": message, "finish_reason": finish}],
    }
    if usage_style == "octen":
        usage["num_search_queries"] = 1 if search else 0
        out["meta"] = {} if fault == "nousage" else {"usage": usage}
    elif fault != "nousage":
        if usage_style == "anthropic" and search:
            usage["server_tool_use"] = {"web_search_requests": 1}
        out["usage"] = usage
    if search:
        out["search_results"] = _search_results(req)
        out["warning"] = _SEARCH_WARNING
    if fault == "nochoices":
        out["choices"] = []
    return out


def _usage(req: Req, prompt: int, completion: int, reasoning: int, style: str) -> dict[str, Any]:
    """The usage object in `style`: OpenAI's (cached tokens in `prompt_tokens_details`,
    reasoning tokens in `completion_tokens_details`), Octen's (`reasoning_tokens` at the
    top) or Anthropic's as a gateway passes it on (`input_tokens` without the cache,
    `cache_read_input_tokens`, `cache_creation_input_tokens`)."""
    cached, written = min(req.cache[0], prompt), min(req.cache[1], prompt - req.cache[0])
    if style == "anthropic":
        return {
            "input_tokens": prompt - cached - written,
            "output_tokens": completion,
            "cache_read_input_tokens": cached,
            "cache_creation_input_tokens": written,
        }
    usage: dict[str, Any] = {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }
    if style == "octen":
        usage["reasoning_tokens"] = reasoning
    else:
        usage["prompt_tokens_details"] = {"cached_tokens": cached}
        usage["completion_tokens_details"] = {"reasoning_tokens": reasoning}
    return usage


def _alter_message(req: Req, fault: str, message: dict, finish: str) -> tuple[str, str, int]:
    """Apply a message-level fault in place; (billed text, finish_reason, reasoning tokens)."""
    content = message["content"] or ""
    if fault == "length":
        message["content"] = content = content[: max(1, len(content) // 2)]
        return content, "length", 0
    if fault == "refusal":
        message["content"], message["refusal"] = None, _REFUSAL
        return _REFUSAL, "stop", 0
    if fault == "toolcall":
        arguments = json.dumps({"q": req.last_user_text()[:40]})
        message["content"] = None
        message["tool_calls"] = [
            {
                "id": "call_mock_" + req.reply_key[:12],
                "type": "function",
                "function": {"name": "lookup", "arguments": arguments},
            }
        ]
        return arguments, "tool_calls", 0
    if fault == "reasoning":
        reasoning = "Mock reasoning: the user asked about " + req.last_user_text()[:60]
        message["reasoning_content"] = reasoning
        return content, finish, max(1, len(reasoning) // 4)
    if fault == "invalid_utf8":
        message["content"] = content = _UTF8_MARK + content
    if fault in _STRUCTURED_FAULTS:
        message["content"] = content = _STRUCTURED_FAULTS[fault](content)
    return content, finish, 0


def _drop_first_property(content: str) -> str:
    """The JSON object in `content` without its first property (`badschema`)."""
    try:
        value = json.loads(content)
    except ValueError:
        return "{" + content
    if isinstance(value, dict) and value:
        value.pop(next(iter(value)))
    return json.dumps(value)


_STRUCTURED_FAULTS: dict[str, Callable[[str], str]] = {
    "fenced": lambda c: f"```json\n{c}\n```",
    "prose": lambda c: f"Sure! Here is the JSON you asked for:\n{c}\nLet me know if you need more.",
    "notjson": lambda c: "I think this one is positive, mostly about quality.",
    "badschema": _drop_first_property,
}


def reply_fault_response(req: Req, fault: str, style: str) -> web.Response:
    """The 200-status response of a reply-level fault kind."""
    if fault == "empty":
        return web.Response(status=200, body=b"", headers=JSON_HEADERS)
    if fault == "badjson":
        return web.Response(status=200, body=_BAD_JSON, headers=JSON_HEADERS)
    data = orjson.dumps(completion(req, fault, style))
    if fault == "truncated":
        data = data[: len(data) // 2]
    elif fault == "invalid_utf8":
        data = data.replace(_UTF8_MARK.encode(), _INVALID_UTF8, 1)
    return web.Response(status=200, body=data, headers=JSON_HEADERS)


# ------------------------------------------------------------------------ streamed replies


def sse(chunk: dict[str, Any]) -> bytes:
    """One `data: <json>` event."""
    return b"data: " + orjson.dumps(chunk) + b"\n\n"


def stream_events(req: Req, fault: str | None, style: str) -> list[bytes]:
    """The SSE events of the reply to `req` (the non-streamed reply, cut into deltas)."""
    if fault == "empty":
        return [SSE_DONE]
    data = completion(req, fault, style)
    if style == "octen":
        chunks = _octen_chunks(data)
    else:
        options = req.body.get("stream_options")
        include_usage = isinstance(options, dict) and options.get("include_usage") is True
        chunks = _openai_chunks(data, include_usage)
    return _with_fault([sse(c) for c in chunks], fault)


def _openai_chunks(data: dict[str, Any], include_usage: bool) -> list[dict[str, Any]]:
    """`chat.completion.chunk`s: role, message deltas, finish, then usage when asked for."""
    base = _chunk_base("id", data)
    search = _search_fields(data)
    chunks: list[dict[str, Any]] = []
    if data["choices"]:
        choice = data["choices"][0]
        message = choice["message"]
        role = {"role": "assistant", "content": "" if message.get("content") is not None else None}
        chunks.append({**_delta(base, role), **search})
        chunks += _message_chunks(message, base, lambda piece: _delta(base, {"content": piece}))
        chunks.append(_delta(base, {}, choice["finish_reason"]))
    elif search:
        chunks.append({**base, "choices": [], **search})
    usage = data.get("usage")
    if usage is not None and include_usage:
        chunks.append({**base, "choices": [], "usage": usage})
    return chunks


def _octen_chunks(data: dict[str, Any]) -> list[dict[str, Any]]:
    """Octen's typed chunks: `search_done`, `content`, `finish`, then `usage`."""
    base = _chunk_base("request_id", data)
    head = {**base, "type": "content"}
    search = _search_fields(data)
    chunks: list[dict[str, Any]] = []
    if search:
        chunks.append({**base, "type": "search_done", **search})
    if data["choices"]:
        choice = data["choices"][0]
        chunks += _message_chunks(choice["message"], head, lambda piece: {**head, "content": piece})
        chunks.append({**base, "type": "finish", "finish_reason": choice["finish_reason"]})
    usage = data["meta"].get("usage")
    if usage is not None:
        chunks.append({**base, "type": "usage", "usage": usage})
    return chunks


def _chunk_base(id_key: str, data: dict[str, Any]) -> dict[str, Any]:
    """The fields every chunk starts with."""
    return {
        id_key: data[id_key],
        "object": "chat.completion.chunk",
        "created": data["created"],
        "model": data["model"],
    }


def _search_fields(data: dict[str, Any]) -> dict[str, Any]:
    """The completion's `search_results` and `warning`, if any."""
    return {k: data[k] for k in ("search_results", "warning") if k in data}


def _delta(head: dict[str, Any], delta: dict[str, Any], finish: str | None = None) -> dict:
    """`head` with one choice carrying `delta`."""
    return {**head, "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}


def _message_chunks(
    message: dict[str, Any], head: dict[str, Any], content: Callable[[str], dict]
) -> list[dict[str, Any]]:
    """The deltas of a message: reasoning, content (shaped by `content`), refusal, tool calls."""
    n = _WORDS_PER_DELTA
    reasoning = _pieces(message.get("reasoning_content"), n)
    chunks = [_delta(head, {"reasoning_content": p}) for p in reasoning]
    chunks += [content(p) for p in _pieces(message.get("content"), n)]
    chunks += [_delta(head, {"refusal": p}) for p in _pieces(message.get("refusal"), n)]
    for i, call in enumerate(message.get("tool_calls") or ()):
        function = call["function"]
        start = {"index": i, "id": call["id"], "type": call["type"]}
        start["function"] = {"name": function["name"], "arguments": ""}
        chunks.append(_delta(head, {"tool_calls": [start]}))
        for piece in _pieces(function["arguments"], 1):
            more = {"index": i, "function": {"arguments": piece}}
            chunks.append(_delta(head, {"tool_calls": [more]}))
    return chunks


def _pieces(text: str | None, words: int) -> list[str]:
    """`text` in pieces of `words` words (whitespace kept: the pieces join back to `text`)."""
    if not text:
        return []
    tokens = re.split(r"(?<=\s)(?=\S)", text)
    return ["".join(tokens[i : i + words]) for i in range(0, len(tokens), words)]


def _with_fault(events: list[bytes], fault: str | None) -> list[bytes]:
    """The events as a stream-level fault breaks them, ending with `[DONE]` (not `truncated`)."""
    if fault == "badjson":
        events.insert(len(events) // 2, b"data: " + _BAD_JSON + b"\n\n")
    elif fault == "invalid_utf8":
        events = [e.replace(_UTF8_MARK.encode(), _INVALID_UTF8, 1) for e in events]
    if fault == "truncated":  # the body ends cleanly, half-way and without [DONE]
        return events[: max(1, len(events) // 2)]
    return [*events, SSE_DONE]

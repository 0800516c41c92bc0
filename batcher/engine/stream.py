"""A streamed reply (Server-Sent Events) into the `Reply` a plain request gives.

Handles OpenAI `chat.completion.chunk` deltas (content, reasoning, refusal, tool calls, a
usage chunk from `stream_options.include_usage`) and Octen's typed chunks (`search_done`,
`content`, `finish`, `usage`). The stream must end with `data: [DONE]`. Pure: the HTTP
boundary feeds it the bytes as they arrive.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from batcher.engine.replies import (
    json_or_none,
    status_error,
    str_or_none,
    text_of,
    unix_seconds,
    usage_of,
    warning_of,
)
from batcher.errors import FatalError, RetryableError
from batcher.types import UNKNOWN_USAGE, ErrorType, Reply


@dataclass(frozen=True, slots=True)
class Streamed:
    """A streamed reply and its time to first token."""

    reply: Reply
    # seconds from `started` to the first content/reasoning/refusal/tool-call delta
    ttft_s: float | None


class StreamReply:
    """A streamed reply put together from the bytes of its Server-Sent Events, in arrival
    order (`started`: perf_counter at the request's start). `feed` each piece read; it
    returns True once `[DONE]` came, then `result()` gives the reply.

    Raises `RetryableError` for an unparseable chunk, one without choices or a stream cut
    before `[DONE]` (`result()` before it), `FatalError` beyond `max_bytes`, and the error an
    in-stream `error` chunk stands for."""

    def __init__(self, started: float, headers: Mapping[str, str], *, max_bytes: int) -> None:
        self.started = started
        self.headers = headers
        self.max_bytes = max_bytes
        self.size = 0
        self._pending: list[bytes] = []  # the start of a line split across reads
        self._data: list[bytes] = []  # the `data:` lines of the current event
        self.ttft: float | None = None
        self.content: list[str] = []
        self.saw_content = False  # a string content delta, even ""
        self.reasoning: list[str] = []
        self.refusal: list[str] = []
        self.calls: dict[int, dict[str, Any]] = {}
        self.finish: Any = None
        self.usage = UNKNOWN_USAGE  # until a usage chunk says
        self.id: Any = None
        self.model: Any = None
        self.created: Any = None
        self.search: Any = None
        self.warning: Any = None
        self.saw_choices = False
        self.done = False

    def feed(self, piece: bytes) -> bool:
        """Take the next bytes of the stream; True once the stream has ended."""
        self.size += len(piece)
        if self.size > self.max_bytes:
            raise FatalError(
                ErrorType.RESPONSE_TOO_LARGE,
                f"stream larger than {self.max_bytes} bytes",
                http_status=200,
            )
        pending = self._pending
        start = 0
        while not self.done:
            end = piece.find(b"\n", start)
            if end < 0:
                if start < len(piece):
                    pending.append(piece[start:])
                break
            if pending:
                pending.append(piece[start:end])
                self._line(b"".join(pending))
                pending.clear()
            else:
                self._line(piece[start:end])
            start = end + 1
        return self.done

    def result(self) -> Streamed:
        """The reply; a stream cut before `[DONE]` is a RetryableError."""
        if not self.done:
            raise RetryableError(
                ErrorType.CONNECTION_ERROR, "stream cut before [DONE]", http_status=200
            )
        return Streamed(self.reply(), self.ttft)

    def _line(self, raw: bytes) -> None:
        if raw.endswith(b"\r"):
            raw = raw[:-1]
        if not raw:  # a blank line ends the event
            if self._data:
                self.event(b"\n".join(self._data))
                self._data.clear()
            return
        if raw.startswith(b":"):  # a comment (keep-alive)
            return
        name, _, value = raw.partition(b":")
        if name == b"data":
            self._data.append(value[1:] if value.startswith(b" ") else value)

    def event(self, data: bytes) -> None:
        """One event's data: `[DONE]` or a JSON chunk."""
        if data.strip() == b"[DONE]":
            self.done = True
            return
        if not data.strip():
            return
        try:
            chunk = orjson.loads(data)
        except orjson.JSONDecodeError as exc:
            raise RetryableError(
                ErrorType.BAD_RESPONSE, f"unparseable stream chunk: {exc.msg}", http_status=200
            ) from None
        if not isinstance(chunk, dict):
            if isinstance(chunk, list):  # Gemini-style error list
                raise status_error(200, self.headers, data, chunk)
            raise RetryableError(
                ErrorType.BAD_RESPONSE, "unparseable stream chunk: not an object", http_status=200
            )
        if chunk.get("error") or ("msg" in chunk and "code" in chunk and "choices" not in chunk):
            raise status_error(200, self.headers, data, chunk)
        self.chunk(chunk)

    def chunk(self, chunk: dict[str, Any]) -> None:
        """Fold one parsed chunk into the assembly."""
        if self.id is None:
            self.id = chunk.get("id") or chunk.get("request_id")
        if self.model is None:
            self.model = chunk.get("model")
        if self.created is None:
            self.created = chunk.get("created")
        if chunk.get("search_results") is not None:
            self.search = chunk["search_results"]
        if chunk.get("warning") is not None:
            self.warning = chunk["warning"]
        meta = chunk.get("meta")
        if isinstance(chunk.get("usage"), dict) or (
            isinstance(meta, dict) and isinstance(meta.get("usage"), dict)
        ):
            self.usage = usage_of(chunk)
        choices = chunk.get("choices")
        if isinstance(choices, list):
            if choices:
                self.saw_choices = True
            for choice in choices:
                if isinstance(choice, dict) and choice.get("index", 0) == 0:
                    self.choice(choice)
        elif chunk.get("type") == "content":  # Octen: {"type": "content", "content": "..."}
            self.add_content(chunk.get("content"))
        if chunk.get("type") == "finish" and chunk.get("finish_reason") is not None:
            self.finish = chunk["finish_reason"]

    def choice(self, choice: dict[str, Any]) -> None:
        delta = choice.get("delta")
        if not isinstance(delta, dict):
            delta = choice.get("message")  # some servers end with a whole message
        if isinstance(delta, dict):
            self.add_content(delta.get("content"))
            reasoning = delta.get("reasoning_content") or delta.get("reasoning")
            if isinstance(reasoning, str) and reasoning:
                self.reasoning.append(reasoning)
                self.token()
            refusal = delta.get("refusal")
            if isinstance(refusal, str) and refusal:
                self.refusal.append(refusal)
                self.token()
            calls = delta.get("tool_calls")
            if isinstance(calls, list):
                for position, call in enumerate(calls):
                    if isinstance(call, dict):
                        self.tool_call(position, call)
        if choice.get("finish_reason") is not None:
            self.finish = choice["finish_reason"]

    def add_content(self, content: Any) -> None:
        text = text_of(content) if content is not None else None
        if text is None:
            return
        self.saw_content = True
        if text:
            self.content.append(text)
            self.token()

    def tool_call(self, position: int, fragment: dict[str, Any]) -> None:
        """Merge a tool-call fragment by `index`: id/type/name once, arguments appended."""
        index = fragment.get("index", position)
        call = self.calls.setdefault(
            index if isinstance(index, int) else position,
            {"id": None, "type": None, "function": {"name": None, "arguments": ""}},
        )
        for key in ("id", "type"):
            if call[key] is None and fragment.get(key) is not None:
                call[key] = fragment[key]
        function = fragment.get("function")
        if isinstance(function, dict):
            if call["function"]["name"] is None and function.get("name") is not None:
                call["function"]["name"] = function["name"]
            arguments = function.get("arguments")
            if isinstance(arguments, str):
                call["function"]["arguments"] += arguments
        self.token()

    def token(self) -> None:
        if self.ttft is None:
            self.ttft = time.perf_counter() - self.started

    def reply(self) -> Reply:
        if not self.saw_choices and not (self.content or self.reasoning or self.calls):
            raise RetryableError(ErrorType.BAD_RESPONSE, "stream had no choices", http_status=200)
        calls = [self.calls[i] for i in sorted(self.calls)]
        content: str | None = "".join(self.content)
        if not content and (not self.saw_content or calls or self.refusal):
            content = None
        return Reply(
            content=content,
            finish_reason=str_or_none(self.finish),
            refusal="".join(self.refusal) or None,
            reasoning="".join(self.reasoning) or None,
            tool_calls=json_or_none(calls) if calls else None,
            usage=self.usage,
            response_id=str_or_none(self.id),
            response_model=str_or_none(self.model),
            created=unix_seconds(self.created),
            search_results=json_or_none(self.search),
            warning=warning_of(self.warning),
        )

"""Batch API lines both ways: requests into input files (one model each, within the size
limits), and output or error lines back into attempts, as the engine's replies are read.

A request's `custom_id` is its key in the job (row, model, combination, sample), so a rerun
knows which requests a recorded batch holds without keeping their bodies."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import orjson

from batcher.engine.http import Attempt
from batcher.engine.replies import parse_reply
from batcher.errors import AttemptError
from batcher.types import Request

__all__ = ["BatchFile", "LineOutcome", "batch_files", "custom_id", "read_lines"]

ENDPOINT = "/v1/chat/completions"
MAX_REQUESTS = 50_000  # OpenAI's limits of one batch file
MAX_BYTES = 200 * 1024 * 1024


def custom_id(request: Request) -> str:
    """The request's key as a custom_id: "row-model-combination-sample" (model by index)."""
    return f"{request.row_index}-{request.model_index}-{request.variant}-{request.sample}"


def line_of(request: Request) -> bytes:
    """The input line of `request`: its body exactly as it is sent online."""
    head = orjson.dumps({"custom_id": custom_id(request), "method": "POST", "url": ENDPOINT})
    return head[:-1] + b',"body":' + request.payload + b"}\n"


@dataclass
class BatchFile:
    """One input file: a model's requests, in input order."""

    model: str
    ids: list[str]
    data: bytearray


def batch_files(
    requests: Iterable[Request], most_requests: int = MAX_REQUESTS, most_bytes: int = MAX_BYTES
) -> Iterator[BatchFile]:
    """Input files of `requests`: one model each, at most `most_requests` lines and
    `most_bytes` bytes (a request larger than that alone gets a file of its own)."""
    open_files: dict[str, BatchFile] = {}
    for request in requests:
        line = line_of(request)
        f = open_files.get(request.model)
        if f is not None and (len(f.ids) >= most_requests or len(f.data) + len(line) > most_bytes):
            yield open_files.pop(request.model)
            f = None
        if f is None:
            f = open_files[request.model] = BatchFile(request.model, [], bytearray())
        f.ids.append(custom_id(request))
        f.data += line
    yield from open_files.values()


@dataclass(frozen=True)
class LineOutcome:
    """What an output or error line says of one request: an attempt (a reply or an error
    status), or no attempt at all (`missing`: expired, cancelled) with the reason."""

    custom_id: str
    attempt: Attempt | None
    missing: str | None = None


def read_lines(data: bytes) -> Iterator[LineOutcome]:
    """The outcomes of an output or error file's lines (unreadable lines skipped: their
    requests stay without an outcome, so they are sent again)."""
    for raw in data.splitlines():
        try:
            line = orjson.loads(raw)
        except orjson.JSONDecodeError:
            continue
        if not isinstance(line, dict) or not isinstance(line.get("custom_id"), str):
            continue
        outcome = _outcome(line)
        if outcome is not None:
            yield outcome


def _outcome(line: dict) -> LineOutcome | None:
    cid = line["custom_id"]
    response = line.get("response")
    if isinstance(response, dict) and isinstance(response.get("status_code"), int):
        status, body = response["status_code"], response.get("body")
        raw = body.encode() if isinstance(body, str) else orjson.dumps(body)
        try:
            attempt = Attempt(0.0, http_status=status, reply=parse_reply(status, {}, raw))
        except AttemptError as error:
            attempt = Attempt(0.0, http_status=status, error=error)
        return LineOutcome(cid, attempt)
    error = line.get("error")
    if isinstance(error, dict):
        code, message = error.get("code"), error.get("message")
        return LineOutcome(cid, None, f"{code or 'error'}: {message or 'no message'}")
    return None

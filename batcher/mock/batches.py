"""The mock's Batch API, as OpenAI's: `/v1/files` and `/v1/batches`.

A batch moves validating -> in_progress -> finalizing -> completed, each phase lasting
`MockConfig.batch_step` seconds (tests make it short), its lines answered one by one over
the in_progress phase by the chat planner: the same replies, `[[mock:...]]` faults and
random faults as online (never the online rpm or concurrency limits), each answered line in
the request log. State advances when a batch is looked at, so nothing runs in the
background. Answered lines go to the output file (2xx) or the error file (the rest), in an
order that is not the input's: clients must join by `custom_id`.

Batch-level faults (`MockConfig.batch_faults`, the i-th for the i-th batch created):
`expire:K` (expires after K lines, the rest `batch_expired` in the error file), `invalid`
(fails validation), `no_output` (completed, no output or error file), `finalizing` or
`finalizing:S` (stuck in finalizing for good, or S more seconds), `gone` (the files'
content is 404 once completed), `none`.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import orjson
from aiohttp import web

from batcher.mock.config import MockConfig
from batcher.mock.faults import error_body, parse_batch_fault
from batcher.mock.log import RequestLog
from batcher.mock.planning import Planner, authenticate
from batcher.mock.replies import json_response

__all__ = ["Batches", "add_batch_routes"]

ENDPOINTS = ("/v1/chat/completions", "/chat/completions")
_AUTH_HEADERS = ("Authorization", "x-api-key")
_STAMPS = ("in_progress", "finalizing", "completed", "failed", "expired", "cancelling", "cancelled")


@dataclass
class _File:
    id: str
    filename: str
    purpose: str
    data: bytes
    created_at: int
    gone: bool = False  # content answers 404

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "file",
            "bytes": len(self.data),
            "created_at": self.created_at,
            "filename": self.filename,
            "purpose": self.purpose,
            "status": "processed",
        }


@dataclass
class _Batch:
    id: str
    input_file_id: str
    endpoint: str
    metadata: dict[str, Any] | None
    created: float
    lines: list[tuple[str, bytes]]  # (custom_id, body) in input order
    problems: list[dict[str, Any]]  # validation errors
    fault: tuple[str, float | None]
    headers: dict[str, str]  # the creator's key, for the lines
    status: str = "validating"
    answered: list[tuple[str, int, bytes]] = field(default_factory=list)  # id, status, body
    times: dict[str, float] = field(default_factory=dict)  # in_progress_at, ...
    output_file_id: str | None = None
    error_file_id: str | None = None

    def to_dict(self, window_s: float) -> dict[str, Any]:
        ok = sum(1 for _, status, _ in self.answered if 200 <= status < 300)
        failed = len(self.answered) - ok
        if self.status == "expired":
            failed += len(self.lines) - len(self.answered)
        stamps = {f"{name}_at": None for name in _STAMPS}
        stamps.update({f"{name}_at": int(t) for name, t in self.times.items()})
        return {
            "id": self.id,
            "object": "batch",
            "endpoint": self.endpoint,
            "errors": {"object": "list", "data": self.problems} if self.problems else None,
            "input_file_id": self.input_file_id,
            "completion_window": "24h",
            "status": self.status,
            "output_file_id": self.output_file_id,
            "error_file_id": self.error_file_id,
            "created_at": int(self.created),
            "expires_at": int(self.created + window_s),
            **stamps,
            "request_counts": {
                "total": 0 if self.status == "failed" else len(self.lines),
                "completed": ok,
                "failed": failed,
            },
            "metadata": self.metadata,
        }


def _problem(code: str, message: str, line: int | None = None) -> dict[str, Any]:
    return {"code": code, "message": message, "param": None, "line": line}


def _parse_lines(data: bytes, endpoint: str, most: int) -> tuple[list, list]:
    """(custom_id, body) per request line of an input file, and the validation errors."""
    lines: list[tuple[str, bytes]] = []
    problems: list[dict[str, Any]] = []
    seen: set[str] = set()
    model = None
    for i, raw in enumerate(data.splitlines(), 1):
        if not raw.strip():
            continue
        try:
            line = orjson.loads(raw)
        except orjson.JSONDecodeError:
            problems.append(_problem("invalid_json_line", f"Line {i} is not valid JSON.", i))
            continue
        body = line.get("body") if isinstance(line, dict) else None
        cid = line.get("custom_id") if isinstance(line, dict) else None
        if not isinstance(cid, str) or not cid:
            problems.append(_problem("missing_custom_id", "custom_id must be a string.", i))
        elif line.get("method") != "POST" or line.get("url") != endpoint:
            message = f"Each request must be POST {endpoint}, as the batch's endpoint."
            problems.append(_problem("invalid_url", message, i))
        elif not isinstance(body, dict) or body.get("stream") is True:
            message = "body must be an object, and streaming is not supported."
            problems.append(_problem("invalid_body", message, i))
        elif cid in seen:
            problems.append(_problem("duplicate_custom_id", f"custom_id {cid!r} repeats.", i))
        elif model is not None and body.get("model") != model:
            message = "All requests of a batch must use the same model."
            problems.append(_problem("mismatched_model", message, i))
        else:
            seen.add(cid)
            model = body.get("model")
            lines.append((cid, orjson.dumps(body)))
    if not lines and not problems:
        problems.append(_problem("empty_file", "The input file has no requests."))
    if len(lines) > most:
        message = f"A batch holds at most {most:,} requests; this file has {len(lines):,}."
        problems.append(_problem("too_many_requests", message))
    return lines, problems[:100]


class Batches:
    """The files and batches of one server, and how each batch moves on (`advance`)."""

    def __init__(
        self, config: MockConfig, planner: Planner, log: RequestLog, clock: Callable[[], float]
    ) -> None:
        self.config = config
        self.planner = planner
        self.log = log
        self.clock = clock
        self.files: dict[str, _File] = {}
        self.batches: dict[str, _Batch] = {}
        self._faults = [parse_batch_fault(spec) for spec in config.batch_faults]
        self._made = 0

    def _new_id(self, prefix: str) -> str:
        self._made += 1
        digest = hashlib.sha256(f"{prefix}:{self._made}:{self.config.seed}".encode())
        return prefix + digest.hexdigest()[:24]

    def add_file(self, filename: str, purpose: str, data: bytes) -> _File:
        """Store an uploaded (or produced) file."""
        f = _File(self._new_id("file-"), filename, purpose, data, int(self.clock()))
        self.files[f.id] = f
        return f

    def create(self, body: Any, headers: Mapping[str, str]) -> _Batch | tuple[int, str]:
        """A new batch from a create body, or (status, message) when it cannot be made."""
        if not isinstance(body, dict):
            return 400, "The request body must be a JSON object."
        source = self.files.get(body.get("input_file_id"))  # type: ignore[arg-type]
        if source is None:
            return 404, f"No such File object: {body.get('input_file_id')}"
        if source.purpose != "batch":
            return 400, "The input file must be uploaded with purpose 'batch'."
        endpoint = body.get("endpoint")
        if endpoint not in ENDPOINTS:
            return 400, f"endpoint must be one of {', '.join(ENDPOINTS)}."
        if body.get("completion_window") != "24h":
            return 400, "completion_window must be '24h'."
        metadata = body.get("metadata")
        if metadata is not None and not isinstance(metadata, dict):
            return 400, "metadata must be an object."
        lines, problems = _parse_lines(source.data, endpoint, self.config.batch_max_requests)
        n = len(self.batches)
        batch = _Batch(
            id=self._new_id("batch_"),
            input_file_id=source.id,
            endpoint=endpoint,
            metadata=metadata,
            created=self.clock(),
            lines=lines,
            problems=problems,
            fault=self._faults[n] if n < len(self._faults) else ("none", None),
            headers={k: headers[k] for k in _AUTH_HEADERS if k in headers},
        )
        self.batches[batch.id] = batch
        return batch

    def cancel(self, batch: _Batch) -> str | None:
        """Start cancelling `batch`; why it cannot be, or None."""
        now = self.clock()
        self.advance(batch, now)
        if batch.status not in ("validating", "in_progress", "finalizing"):
            return f"Cannot cancel a batch with status {batch.status}."
        batch.status = "cancelling"
        batch.times["cancelling"] = now
        return None

    def advance(self, batch: _Batch, now: float) -> None:
        """Move `batch` to where it would be at `now`, answering the lines due by then."""
        step, (fault, arg) = self.config.batch_step, batch.fault
        if batch.status == "validating":
            if now < batch.created + step:
                return
            t = batch.created + step
            if fault == "invalid" and not batch.problems:
                batch.problems = [_problem("invalid_request", "mock batch fault: invalid")]
            if batch.problems:
                batch.status, batch.times["failed"] = "failed", t
                return
            batch.status, batch.times["in_progress"] = "in_progress", t
        if batch.status == "in_progress":
            self._answer_due(batch, now)
        if batch.status == "finalizing":
            stuck = (math.inf if arg is None else arg) if fault == "finalizing" else 0.0
            done_at = batch.times["finalizing"] + step + stuck
            if now >= done_at:
                self._finish(batch, "completed", done_at)
        if batch.status == "cancelling" and now >= batch.times["cancelling"] + step:
            self._finish(batch, "cancelled", batch.times["cancelling"] + step)

    def _answer_due(self, batch: _Batch, now: float) -> None:
        """Answer the lines due by `now` (spread over the phase); expire or finalize."""
        start, step, n = batch.times["in_progress"], self.config.batch_step, len(batch.lines)
        due = n if step <= 0 else min(n, math.floor(n * (now - start) / step))
        fault, arg = batch.fault
        stop = int(arg) if fault == "expire" and arg is not None and arg < n else None
        for i in range(len(batch.answered), due if stop is None else min(due, stop)):
            self._answer(batch, *batch.lines[i], start + step * (i + 1) / n)
        if stop is not None and due > stop:
            self._finish(batch, "expired", start + step * (stop + 1) / n)
        elif len(batch.answered) == n and now >= start + step:
            batch.status, batch.times["finalizing"] = "finalizing", start + step

    def _answer(self, batch: _Batch, custom_id: str, body: bytes, t: float) -> None:
        """One line through the chat planner (no online limits), logged."""
        plan = self.planner.decide(batch.headers, body, t, limited=False)
        if plan.action in (None, "hang") and plan.response is not None:
            status, data = plan.response.status, plan.response.body
        elif plan.action in ("huge", "drip"):
            status, data = 200, plan.data
        else:  # the connection would have dropped: the line failed on the server
            status = 500
            data = error_body("openai", 500, "The server had an error.", "server_error", None)
        self.log.record(
            plan.entry if plan.entry.status == status else replace(plan.entry, status=status)
        )
        batch.answered.append((custom_id, status, bytes(data)))  # type: ignore[arg-type]

    def _finish(self, batch: _Batch, status: str, t: float) -> None:
        """End `batch` with `status` at `t`, writing its output and error files."""
        batch.status, batch.times[status] = status, t
        if batch.fault[0] == "no_output":
            return
        out, err = [], []
        for custom_id, code, data in batch.answered:
            (out if 200 <= code < 300 else err).append(_output_line(batch, custom_id, code, data))
        if status == "expired":
            message = "This request could not be executed before the completion window expired."
            for custom_id, _ in batch.lines[len(batch.answered) :]:
                err.append(_expired_line(batch, custom_id, message))
        gone = batch.fault[0] == "gone"
        for lines, kind in ((out, "output"), (err, "error")):
            if lines:
                lines.sort(key=lambda line: hashlib.sha256(line).digest())  # not input order
                f = self.add_file(f"{batch.id}_{kind}.jsonl", "batch_output", b"".join(lines))
                f.gone = gone
                setattr(batch, f"{kind}_file_id", f.id)


def _line_id(batch: _Batch, custom_id: str) -> str:
    return hashlib.sha256(f"{batch.id}:{custom_id}".encode()).hexdigest()[:24]


def _output_line(batch: _Batch, custom_id: str, status: int, data: bytes) -> bytes:
    try:
        body: Any = orjson.loads(data)
    except orjson.JSONDecodeError:
        body = data.decode("utf-8", "replace")
    h = _line_id(batch, custom_id)
    response = {"status_code": status, "request_id": f"req_{h}", "body": body}
    line = {"id": f"batch_req_{h}", "custom_id": custom_id, "response": response, "error": None}
    return orjson.dumps(line) + b"\n"


def _expired_line(batch: _Batch, custom_id: str, message: str) -> bytes:
    error = {"code": "batch_expired", "message": message}
    line = {"id": f"batch_req_{_line_id(batch, custom_id)}", "custom_id": custom_id}
    return orjson.dumps({**line, "response": None, "error": error}) + b"\n"


# ------------------------------------------------------------------------------ routes

_WINDOW_S = 24 * 3600.0


def _error(status: int, message: str) -> web.Response:
    return json_response(
        status, error_body("openai", status, message, "invalid_request_error", None)
    )


def _ok(doc: Any) -> web.Response:
    return json_response(200, orjson.dumps(doc))


def add_batch_routes(app: web.Application, batches: Batches, prefixes: tuple[str, ...]) -> None:
    """Route `/files` and `/batches` (under each of `prefixes`) to `batches`."""
    api_key = batches.config.api_key

    def guarded(handler: Callable[[web.Request], Any]) -> Callable[[web.Request], Any]:
        async def handle(request: web.Request) -> web.StreamResponse:
            if not authenticate(request.headers, api_key)[1]:
                return json_response(401, batches.planner.unauthorized)
            return await handler(request)

        return handle

    def found_file(request: web.Request) -> _File | web.Response:
        f = batches.files.get(request.match_info["id"])
        return (
            f if f is not None else _error(404, f"No such File object: {request.match_info['id']}")
        )

    def found_batch(request: web.Request) -> _Batch | web.Response:
        batch = batches.batches.get(request.match_info["id"])
        if batch is None:
            return _error(404, f"No such Batch object: {request.match_info['id']}")
        batches.advance(batch, batches.clock())
        return batch

    async def upload(request: web.Request) -> web.Response:
        purpose, filename, data = None, "upload.jsonl", None
        try:
            reader = await request.multipart()
            while (part := await reader.next()) is not None:
                if part.name == "purpose":
                    purpose = (await part.text()).strip()  # type: ignore[union-attr]
                elif part.name == "file":
                    filename = part.filename or filename  # type: ignore[union-attr]
                    data = bytes(await part.read())  # type: ignore[union-attr]
        except (AssertionError, ValueError, KeyError):
            return _error(400, "The body must be multipart/form-data with 'file' and 'purpose'.")
        if data is None or not purpose:
            return _error(400, "Both 'file' and 'purpose' are required.")
        if len(data) > batches.config.batch_max_bytes:
            most = batches.config.batch_max_bytes
            return _error(400, f"A batch input file holds at most {most:,} bytes.")
        return _ok(batches.add_file(filename, purpose, data).to_dict())

    async def get_file(request: web.Request) -> web.Response:
        f = found_file(request)
        return f if isinstance(f, web.Response) else _ok(f.to_dict())

    async def delete_file(request: web.Request) -> web.Response:
        f = found_file(request)
        if isinstance(f, web.Response):
            return f
        del batches.files[f.id]
        return _ok({"id": f.id, "object": "file", "deleted": True})

    async def content(request: web.Request) -> web.Response:
        f = found_file(request)
        if isinstance(f, web.Response):
            return f
        if f.gone:
            return _error(404, f"The content of {f.id} has expired.")
        return web.Response(body=f.data, content_type="application/octet-stream")

    async def create(request: web.Request) -> web.Response:
        try:
            body = orjson.loads(await request.read())
        except orjson.JSONDecodeError:
            return _error(400, "We could not parse the JSON body of your request.")
        made = batches.create(body, request.headers)
        if isinstance(made, tuple):
            return _error(*made)
        return _ok(made.to_dict(_WINDOW_S))

    async def retrieve(request: web.Request) -> web.Response:
        batch = found_batch(request)
        return batch if isinstance(batch, web.Response) else _ok(batch.to_dict(_WINDOW_S))

    async def cancel(request: web.Request) -> web.Response:
        batch = found_batch(request)
        if isinstance(batch, web.Response):
            return batch
        problem = batches.cancel(batch)
        return _error(400, problem) if problem else _ok(batch.to_dict(_WINDOW_S))

    async def listing(request: web.Request) -> web.Response:
        """Newest first, `limit` (default 20, 1..100) after the id `after`."""
        try:
            limit = int(request.query.get("limit", "20"))
        except ValueError:
            limit = 0
        if not 1 <= limit <= 100:
            return _error(400, "limit must be an integer between 1 and 100.")
        every = list(reversed(batches.batches.values()))
        after = request.query.get("after")
        if after is not None:
            ids = [b.id for b in every]
            every = every[ids.index(after) + 1 :] if after in ids else []
        now = batches.clock()
        page = every[:limit]
        for batch in page:
            batches.advance(batch, now)
        data = [b.to_dict(_WINDOW_S) for b in page]
        return _ok(
            {
                "object": "list",
                "data": data,
                "first_id": data[0]["id"] if data else None,
                "last_id": data[-1]["id"] if data else None,
                "has_more": len(every) > limit,
            }
        )

    for prefix in prefixes:
        app.router.add_post(f"{prefix}/files", guarded(upload))
        app.router.add_get(f"{prefix}/files/{{id}}", guarded(get_file))
        app.router.add_delete(f"{prefix}/files/{{id}}", guarded(delete_file))
        app.router.add_get(f"{prefix}/files/{{id}}/content", guarded(content))
        app.router.add_post(f"{prefix}/batches", guarded(create))
        app.router.add_get(f"{prefix}/batches", guarded(listing))
        app.router.add_get(f"{prefix}/batches/{{id}}", guarded(retrieve))
        app.router.add_post(f"{prefix}/batches/{{id}}/cancel", guarded(cancel))

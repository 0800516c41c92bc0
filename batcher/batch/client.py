"""The HTTP side of a provider's Batch API (OpenAI's `/files` and `/batches`, which LiteLLM,
OpenRouter and self-hosted gateways speak too): upload, create, retrieve, find, cancel and
download, each retried while the failure is transient. Never logs or shows the key."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from typing import Any

import aiohttp
import orjson
from tenacity import AsyncRetrying, retry_if_exception, stop_after_attempt, wait_exponential

from batcher.errors import BatcherError
from batcher.providers import Endpoint

log = logging.getLogger("batcher.batch")

__all__ = ["BatchApiError", "BatchClient", "ContentGone"]

TRANSIENT = frozenset({408, 409, 425, 429, 500, 502, 503, 504, 529})
TERMINAL = frozenset({"completed", "failed", "expired", "cancelled"})


class BatchApiError(BatcherError):
    """The Batch API refused a call (after retries for a transient failure)."""

    def __init__(self, what: str, status: int | None, message: str) -> None:
        shown = f"HTTP {status}: " if status else ""
        super().__init__(f"Batch API {what}: {shown}{message}")
        self.status = status


class ContentGone(BatchApiError):
    """A file's content is no longer there (404): deleted, or expired with its batch."""


def _transient(exc: BaseException) -> bool:
    if isinstance(exc, BatchApiError):
        return exc.status is None or exc.status in TRANSIENT
    return isinstance(exc, (aiohttp.ClientError, asyncio.TimeoutError))


def _message(data: bytes) -> str:
    """The error message of a reply body, or its start."""
    try:
        doc = orjson.loads(data)
    except orjson.JSONDecodeError:
        return data[:200].decode("utf-8", "replace").strip() or "no body"
    error = doc.get("error") if isinstance(doc, dict) else None
    if isinstance(error, dict) and isinstance(error.get("message"), str):
        return error["message"]
    if isinstance(error, str):
        return error
    return str(doc)[:200]


class BatchClient:
    """Calls to one endpoint's Batch API over one session (`async with` it)."""

    def __init__(self, endpoint: Endpoint, *, timeout: float = 300.0, attempts: int = 6) -> None:
        self.base = endpoint.base_url.rstrip("/")
        self.attempts = attempts
        # No session-wide Content-Type: uploads are multipart.
        headers = {k: v for k, v in endpoint.headers().items() if k != "Content-Type"}
        self._session = aiohttp.ClientSession(
            headers=headers, timeout=aiohttp.ClientTimeout(total=timeout)
        )

    async def __aenter__(self) -> BatchClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._session.close()

    async def _call(
        self,
        what: str,
        method: str,
        path: str,
        form: Callable[[], aiohttp.FormData] | None = None,
        **kw: Any,
    ) -> bytes:
        """The body of a 2xx reply; BatchApiError otherwise (transient ones retried).
        `form` builds a multipart body afresh for each attempt."""
        try:
            return await self._retried(what, method, path, form, **kw)
        except (aiohttp.ClientError, asyncio.TimeoutError) as exc:  # after every retry
            raise BatchApiError(what, None, f"cannot reach {self.base}: {_problem(exc)}") from None

    async def _retried(
        self, what: str, method: str, path: str, form: Callable[[], Any] | None, **kw: Any
    ) -> bytes:
        retrying = AsyncRetrying(
            stop=stop_after_attempt(self.attempts),
            wait=wait_exponential(multiplier=0.5, max=30),
            retry=retry_if_exception(_transient),
            reraise=True,
        )
        async for attempt in retrying:
            with attempt:
                args = kw if form is None else {**kw, "data": form()}
                try:
                    async with self._session.request(method, self.base + path, **args) as r:
                        data, status = await r.read(), r.status
                except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
                    log.info("Batch API %s: %s; retrying", what, type(exc).__name__)
                    raise
                if status == 404 and what.startswith("download"):
                    raise ContentGone(what, status, _message(data))
                if not 200 <= status < 300:
                    raise BatchApiError(what, status, _message(data))
                return data
        raise AssertionError("unreachable")  # pragma: no cover

    async def _json(self, what: str, method: str, path: str, **kw: Any) -> dict[str, Any]:
        data = await self._call(what, method, path, **kw)
        try:
            doc = orjson.loads(data)
        except orjson.JSONDecodeError:
            raise BatchApiError(what, None, "the reply is not JSON") from None
        if not isinstance(doc, dict):
            raise BatchApiError(what, None, "the reply is not a JSON object")
        return doc

    async def upload(self, data: bytes, filename: str) -> str:
        """Upload a batch input file (`purpose=batch`); its file id."""

        def form() -> aiohttp.FormData:  # a fresh body per attempt
            f = aiohttp.FormData()
            f.add_field("purpose", "batch")
            f.add_field("file", data, filename=filename, content_type="application/jsonl")
            return f

        doc = await self._json("upload", "POST", "/files", form=form)
        return _id(doc, "upload")

    async def create(self, file_id: str, metadata: Mapping[str, str]) -> dict[str, Any]:
        """Create a batch over an uploaded file (24-hour window)."""
        body = {
            "input_file_id": file_id,
            "endpoint": "/v1/chat/completions",
            "completion_window": "24h",
            "metadata": dict(metadata),
        }
        return await self._json("create", "POST", "/batches", json=body)

    async def retrieve(self, batch_id: str) -> dict[str, Any]:
        return await self._json(f"retrieve {batch_id}", "GET", f"/batches/{batch_id}")

    async def cancel(self, batch_id: str) -> dict[str, Any]:
        return await self._json(f"cancel {batch_id}", "POST", f"/batches/{batch_id}/cancel")

    async def find(self, file_id: str, pages: int = 50) -> dict[str, Any] | None:
        """The batch created over `file_id`, if any (newest first, up to `pages` pages)."""
        after = None
        for _ in range(pages):
            params = {"limit": "100", **({"after": after} if after else {})}
            page = await self._json("list", "GET", "/batches", params=params)
            data = page.get("data") or []
            for batch in data:
                if isinstance(batch, dict) and batch.get("input_file_id") == file_id:
                    return batch
            if not page.get("has_more") or not data:
                return None
            after = data[-1].get("id")
        return None

    async def download(self, file_id: str) -> bytes:
        """A file's content; ContentGone when it is no longer there."""
        return await self._call(f"download {file_id}", "GET", f"/files/{file_id}/content")


def _problem(exc: BaseException) -> str:
    """A connection failure in a few words (aiohttp's own texts can run long)."""
    if isinstance(exc, asyncio.TimeoutError):
        return "timed out"
    return str(exc).splitlines()[0][:200] or type(exc).__name__


def _id(doc: Mapping[str, Any], what: str) -> str:
    value = doc.get("id")
    if not isinstance(value, str) or not value:
        raise BatchApiError(what, None, "the reply has no id")
    return value

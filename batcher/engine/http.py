"""The one aiohttp boundary: the session, one HTTP attempt, and aiohttp's errors mapped.

`Client.post` sends a body and reads the reply (capped), streamed or not, and returns an
`Attempt` (it never raises for a failed request): a `Reply` when the attempt worked, else an
`AttemptError` saying whether another attempt may help. The bytes go to
`batcher.engine.replies` to be parsed; aiohttp's and asyncio's exceptions are translated here
and nowhere else (`map_exception`).
"""

from __future__ import annotations

import asyncio
import io
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass

import aiohttp
import orjson

from batcher.engine.replies import parse_reply, too_large
from batcher.engine.stream import StreamReply
from batcher.errors import AttemptError, BatcherError, FatalError, RetryableError
from batcher.providers import Endpoint
from batcher.types import UNKNOWN_USAGE, ErrorType, Reply, Usage

LARGE_BODY = 1024 * 1024  # bodies above this go to aiohttp as a stream
MODELS_MAX_BYTES = 16 * 1024 * 1024  # a model list longer than this is cut (and fails)
_ENCODING = "Content-Encoding"


@dataclass(slots=True)
class Attempt:
    """What one POST gave: a reply or an error, with the status, timing and headers."""

    latency_s: float
    http_status: int | None = None
    reply: Reply | None = None
    error: AttemptError | None = None
    headers: Mapping[str, str] | None = None
    ttft_s: float | None = None  # streamed replies: time to the first token

    @property
    def billed(self) -> Usage | None:
        """What this attempt was billed: a reply's usage; for a failure the server may have
        billed (a rejected answer, a reply cut short or timed out), what its body stated or
        unknown usage; nothing (None) for any other failure: an error status, no
        connection."""
        if self.reply is not None:
            return self.reply.usage
        if self.error is not None and self.error.usage is not None:
            return self.error.usage
        return UNKNOWN_USAGE if self.http_status == 200 else None


class Client:
    """Posts chat-completions bodies to one endpoint over a shared aiohttp session."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        endpoint: Endpoint,
        *,
        timeout: float = 120.0,
        max_body_bytes: int = 64 * 1024 * 1024,
        session_has_headers: bool = False,
    ) -> None:
        self._session = session
        self._url = endpoint.url
        # None when the session sends the endpoint's headers already (see new_session)
        self._headers = None if session_has_headers else endpoint.headers()
        self._key = endpoint.key
        self._key_bytes = endpoint.key.encode() if endpoint.key else None
        # No sock_read: it could never fire before `total`, and it re-arms a timer on every
        # chunk read (measurable at thousands of requests a second).
        self._timeout = aiohttp.ClientTimeout(total=timeout, sock_connect=min(timeout, 30.0))
        self._max_body = max_body_bytes

    async def post(self, data: bytes) -> Attempt:
        start = time.perf_counter()
        try:
            async with self._session.post(
                self._url,
                # aiohttp wants a stream, not raw bytes, for a large body
                data=data if len(data) <= LARGE_BODY else io.BytesIO(data),
                headers=self._headers,
                timeout=self._timeout,
                allow_redirects=False,
            ) as resp:
                status, headers = resp.status, resp.headers
                if status == 200 and resp.content_type == "text/event-stream":
                    return await self._stream(resp, start)
                length = resp.content_length
                if length is not None and length <= self._max_body and _ENCODING not in headers:
                    body = await resp.read()  # the usual reply: its size known and allowed
                else:
                    body = await self._read(resp)
        except asyncio.CancelledError:
            raise
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError, ValueError) as exc:
            return Attempt(time.perf_counter() - start, error=self._scrub(map_exception(exc)))
        latency = time.perf_counter() - start
        if isinstance(body, AttemptError):
            return Attempt(latency, status, error=body, headers=headers)
        if self._key_bytes is not None and self._key_bytes in body:  # a server echoing it
            body = body.replace(self._key_bytes, b"***")
        try:
            reply = parse_reply(status, headers, body)
        except AttemptError as exc:
            return Attempt(latency, status, error=self._scrub(exc), headers=headers)
        return Attempt(latency, status, reply=reply, headers=headers)

    async def _stream(self, resp: aiohttp.ClientResponse, start: float) -> Attempt:
        """A streamed reply (--stream), assembled into the same Reply, with its ttft."""
        stream = StreamReply(start, resp.headers, max_bytes=self._max_body)
        try:
            try:
                async for piece in resp.content.iter_any():
                    if stream.feed(piece):
                        break
            except (aiohttp.ClientPayloadError, aiohttp.ClientConnectionError) as exc:
                if isinstance(exc, asyncio.TimeoutError):  # ServerTimeoutError: post's timeout
                    raise
                raise RetryableError(
                    ErrorType.CONNECTION_ERROR, "stream cut before [DONE]", http_status=200
                ) from None
            streamed = stream.result()
        except AttemptError as exc:
            latency = time.perf_counter() - start
            return Attempt(latency, resp.status, error=self._scrub(exc), headers=resp.headers)
        latency = time.perf_counter() - start
        return Attempt(
            latency, resp.status, reply=streamed.reply, headers=resp.headers, ttft_s=streamed.ttft_s
        )

    def _scrub(self, error: AttemptError) -> AttemptError:
        """A server that echoes the key in its error text must not put it in the output."""
        if self._key and self._key in error.message:
            error.message = error.message.replace(self._key, "***")
            error.args = (error.message,)
        return error

    async def _read(self, resp: aiohttp.ClientResponse) -> bytes | AttemptError:
        """A body `post` could not read at once: declared too large, compressed (the length
        is not the body's size) or of unknown length. Read no further than the cap."""
        if resp.content_length is not None and _ENCODING not in resp.headers:
            return too_large(self._max_body)
        chunks: list[bytes] = []
        size = 0
        async for chunk in resp.content.iter_any():
            size += len(chunk)
            if size > self._max_body:
                return too_large(self._max_body)
            chunks.append(chunk)
        return b"".join(chunks)


PERMANENT_ERRORS = (
    aiohttp.ClientSSLError,
    aiohttp.ServerFingerprintMismatch,
    aiohttp.InvalidURL,
    aiohttp.NonHttpUrlClientError,
)


def map_exception(exc: BaseException) -> AttemptError:
    """aiohttp's and asyncio's errors, translated once into ours."""
    name = type(exc).__name__
    try:
        detail = str(exc) or name
    except Exception:  # a half-built exception: its name is all we can say
        detail = name
    if isinstance(exc, PERMANENT_ERRORS):  # TLS, certificate, a URL that cannot work
        return FatalError(ErrorType.CONNECTION_ERROR, f"{name}: {detail}", job_fatal=True)
    if isinstance(exc, aiohttp.ServerTimeoutError):  # sock_connect (there is no sock_read)
        return RetryableError(ErrorType.TIMEOUT, "could not connect before the timeout")
    if isinstance(exc, asyncio.TimeoutError):  # the request went out: it may be billed
        return _maybe_billed(
            RetryableError(ErrorType.TIMEOUT, "no complete reply before the timeout")
        )
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return RetryableError(ErrorType.CONNECTION_ERROR, "server closed the connection")
    if isinstance(exc, aiohttp.ClientPayloadError):  # a reply was on its way
        return _maybe_billed(
            RetryableError(ErrorType.CONNECTION_ERROR, f"reply body cut short: {detail}")
        )
    if isinstance(exc, aiohttp.ClientResponseError):
        return RetryableError(ErrorType.BAD_RESPONSE, f"malformed HTTP reply: {detail}")
    if isinstance(exc, aiohttp.ClientConnectorError):
        try:
            where, error = f" to {exc.host}:{exc.port}", exc.os_error
            reason = os.strerror(error.errno) if error.errno else str(error) or name
        except AttributeError:  # half-built
            where, reason = "", detail
        return RetryableError(ErrorType.CONNECTION_ERROR, f"cannot connect{where}: {reason}")
    if isinstance(exc, (aiohttp.ClientError, OSError)):
        return RetryableError(ErrorType.CONNECTION_ERROR, f"{name}: {detail}")
    return RetryableError(ErrorType.BAD_RESPONSE, f"{name}: {detail}")


def _maybe_billed(error: AttemptError) -> AttemptError:
    """An attempt the server may have made a reply for, and billed: its usage is unknown
    (the row's tokens and cost are then null, and --max-cost counts its worst case)."""
    error.usage = UNKNOWN_USAGE
    return error


def new_session(
    concurrency: int, headers: Mapping[str, str] | None = None
) -> aiohttp.ClientSession:
    """One session for a run, its pool sized to the concurrency; `headers` go with every
    request (cheaper as the session's defaults than merged into each request)."""
    connector = aiohttp.TCPConnector(limit=concurrency, limit_per_host=0, ttl_dns_cache=300)
    return aiohttp.ClientSession(connector=connector, headers=headers, raise_for_status=False)


def fit_open_files(concurrency: int, *, per_request: int = 1, reserve: int = 64) -> int:
    """Raise this process's soft limit of open files towards its hard limit, as far as
    `concurrency` connections (`per_request` descriptors each) and `reserve` others need;
    the concurrency that fits what the limit then is."""
    try:
        import resource
    except ImportError:  # pragma: no cover - not on POSIX
        return concurrency
    infinity = resource.RLIM_INFINITY
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = concurrency * per_request + reserve
    if soft != infinity and soft < need:
        target = need if hard == infinity else min(need, hard)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            pass
    if soft == infinity or soft >= need:
        return concurrency
    return max(1, (soft - reserve) // per_request)


class ModelsError(BatcherError):
    """The endpoint did not list its models."""

    exit_code = 1


async def list_models(endpoint: Endpoint, timeout: float = 30.0) -> list[dict]:
    """`GET {base}/models`: the model objects the endpoint lists (`data`), in its order."""
    url = endpoint.base_url.rstrip("/") + "/models"
    headers = {k: v for k, v in endpoint.headers().items() if k != "Content-Type"}
    try:
        async with new_session(1) as session, session.get(
            url, headers=headers, timeout=aiohttp.ClientTimeout(total=timeout),
            allow_redirects=False,
        ) as resp:  # fmt: skip
            status, body = resp.status, await resp.content.read(MODELS_MAX_BYTES)
    except (aiohttp.ClientError, asyncio.TimeoutError, OSError, ValueError) as exc:
        raise ModelsError(f"GET {url}: {map_exception(exc).message}") from None
    if endpoint.key:
        body = body.replace(endpoint.key.encode(), b"***")
    if status != 200:
        try:
            parse_reply(status, {}, body)
        except AttemptError as exc:
            raise ModelsError(
                f"GET {url}: HTTP {status} {exc.error_type} ({exc.message})"
            ) from None
    try:
        found = orjson.loads(body)["data"]
        if not all(isinstance(m, dict) and isinstance(m.get("id"), str) for m in found):
            raise TypeError
    except (orjson.JSONDecodeError, KeyError, TypeError):
        raise ModelsError(f"GET {url}: not a list of models ({body[:80]!r})") from None
    return found

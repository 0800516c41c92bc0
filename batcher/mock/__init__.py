"""A deterministic, OpenAI-compatible mock server for tests, demos and benchmarks.

Replies are derived from the request body alone (same body, same reply), so runs against
the mock are reproducible. Faults come from two places:

* directives in a message, ``[[mock:KIND]]`` or ``[[mock:KINDxN]]`` (the first N requests
  carrying that message to that model fail with KIND: retries of the body, and re-asks that
  extend the conversation, share the count), with optional ``:retry=SECONDS`` for retry
  headers;
* ``MockConfig.fail_rate``: a seeded random share of attempts fails with a kind drawn
  from ``MockConfig.faults``.

A body with ``"stream": true`` is answered as Server-Sent Events (``text/event-stream``):
the same reply as the non-streamed request, as ``chat.completion.chunk`` deltas of a few words,
a finish chunk, a usage chunk (only with ``stream_options.include_usage``) and ``data: [DONE]``;
with ``usage_style="octen"`` as Octen's typed chunks (``search_done``, ``content``, ``finish``,
``usage``). Error kinds answer a plain JSON error before any stream; ``cutstream`` sends half
the chunks and closes the connection (half the body, for a non-streamed request).

Order of checks for ``POST /v1/chat/completions``: API key (401), body (400, unknown
model 404), concurrency (429), requests per minute (429), directives, random faults.
The rpm window holds every request the rpm check admitted (its arrival time), whatever
fault is injected afterwards; requests rejected before or by the limits never count and
never use up a directive.

Token counts: ``prompt_tokens = max(1, chars // 4)`` where chars is the length of every
message's text content (string contents and the ``text`` of content parts), with no
per-message overhead; ``completion_tokens = max(1, len(reply text) // 4)`` (plus the
reasoning tokens for the ``reasoning`` fault).

Modules: ``config`` (MockConfig), ``faults`` (kinds, directives, error bodies),
``values`` (JSON Schema instances), ``replies`` (completions and SSE events), ``limits``
(the rpm window), ``log`` (the request log), ``planning`` (the checks and answer of an
attempt), ``writers`` (slow-path bodies), ``batches`` (the Batch API: files, batches, their
clock and batch-level faults) and ``server`` (the app and the ways to run it).
"""

from batcher.mock.config import MockConfig
from batcher.mock.faults import FAULT_KINDS
from batcher.mock.limits import go_duration
from batcher.mock.log import LoggedRequest
from batcher.mock.server import MODELS, MockServer, MockServerThread, create_app, serve
from batcher.mock.values import instance_for_schema

__all__ = [
    "FAULT_KINDS",
    "MODELS",
    "LoggedRequest",
    "MockConfig",
    "MockServer",
    "MockServerThread",
    "create_app",
    "go_duration",
    "instance_for_schema",
    "serve",
]

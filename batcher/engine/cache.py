"""The response cache: ok replies by request hash, shared by every job naming the directory.

The key is the request hash (SHA-256 of the full body and the base URL: system prompt,
parameters, model and endpoint all change it; the API key never enters it). SQLite in WAL
mode makes the cache safe for several jobs at once; a reused reply is marked `cached` and
costs nothing new.
"""

from __future__ import annotations

import dataclasses
import sqlite3
import time
from collections.abc import Iterable
from pathlib import Path

import orjson

from batcher.errors import UsageError
from batcher.types import Reply, Request, Result, Status, Usage

SCHEMA = """
create table if not exists replies (
    request_hash text primary key,
    reply blob not null,
    stored_at real not null
)
"""


class ResponseCache:
    """Look up and store ok replies; one instance per job, used from the event loop thread."""

    def __init__(self, directory: Path) -> None:
        self.path = Path(directory) / "cache.sqlite3"
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(self.path, timeout=60, isolation_level=None)
            self._db.execute("pragma journal_mode=wal")
            self._db.execute("pragma synchronous=normal")
            self._db.execute(SCHEMA)
        except (OSError, sqlite3.Error) as exc:
            raise UsageError(f"--cache {directory}: cannot open the cache: {exc}") from None
        self.hits = 0

    def get(self, request: Request) -> Result | None:
        """The cached result for this request, or None."""
        if request.bad_input is not None or not request.request_hash:
            return None
        row = self._db.execute(
            "select reply from replies where request_hash = ?", (request.request_hash,)
        ).fetchone()
        if row is None:
            return None
        self.hits += 1
        data = orjson.loads(row[0])
        usage = data.pop("usage")
        reply = Reply(**data, usage=Usage(**usage))
        return Result.of(
            request,
            Status.OK,
            attempts=0,
            reply=reply,
            usage=dataclasses.replace(reply.usage, cost_usd=0.0),
            cached=True,
            finished_at=time.time(),
        )

    def put(self, results: Iterable[Result]) -> None:
        """Store the ok replies that were really sent (not ones reused from here)."""
        rows = [
            (r.request_hash, orjson.dumps(dataclasses.asdict(r.reply)), time.time())
            for r in results
            if r.ok and not r.cached and r.reply is not None and r.request_hash
        ]
        if not rows:
            return
        with self._db:
            self._db.execute("begin immediate")
            self._db.executemany("insert or replace into replies values (?, ?, ?)", rows)

    def close(self) -> None:
        self._db.close()

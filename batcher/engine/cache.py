"""The response cache: ok replies by request hash, shared by every job naming the directory.

The key is the request hash (SHA-256 of the full body and the base URL: system prompt,
parameters, model and endpoint all change it; the API key never enters it). SQLite in WAL
mode makes the cache safe for several jobs at once; a reused reply is marked `cached` and
costs nothing new.

A damaged cache never stops a job: an entry that cannot be read (a broken file, an entry
from another version of batcher) is a miss, a store that fails is skipped, and each is
warned of once.
"""

from __future__ import annotations

import dataclasses
import logging
import sqlite3
import time
from collections.abc import Iterable
from pathlib import Path

import orjson

from batcher.errors import UsageError
from batcher.types import Reply, Request, Result, Status, Usage

log = logging.getLogger(__name__)

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
        self._warned: set[str] = set()

    def get(self, request: Request) -> Result | None:
        """The cached result for this request, or None."""
        if request.bad_input is not None or not request.request_hash:
            return None
        try:
            row = self._db.execute(
                "select reply from replies where request_hash = ?", (request.request_hash,)
            ).fetchone()
            reply = None if row is None else _reply(orjson.loads(row[0]))
        except (sqlite3.Error, orjson.JSONDecodeError, TypeError, ValueError, KeyError) as exc:
            self._warn("cannot read an entry", exc)
            return None
        if reply is None:
            return None
        self.hits += 1
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
        try:
            with self._db:
                self._db.execute("begin immediate")
                self._db.executemany("insert or replace into replies values (?, ?, ?)", rows)
        except sqlite3.Error as exc:
            self._warn("cannot store replies", exc)

    def close(self) -> None:
        self._db.close()

    def _warn(self, what: str, exc: BaseException) -> None:
        if what not in self._warned:
            self._warned.add(what)
            log.warning("the response cache %s %s (%s): going on without", self.path, what, exc)


REPLY_FIELDS = frozenset(f.name for f in dataclasses.fields(Reply))
USAGE_FIELDS = frozenset(f.name for f in dataclasses.fields(Usage))


def _reply(data: dict) -> Reply:
    """A stored reply; fields another version added are left out, missing ones default.
    ValueError or TypeError when the entry is not a stored reply at all."""
    if not isinstance(data, dict) or not isinstance(data.get("usage") or {}, dict):
        raise ValueError(f"not a stored reply: {type(data).__name__}")
    usage = data.get("usage") or {}
    fields = {k: v for k, v in data.items() if k in REPLY_FIELDS and k != "usage"}
    return Reply(**fields, usage=Usage(**{k: v for k, v in usage.items() if k in USAGE_FIELDS}))

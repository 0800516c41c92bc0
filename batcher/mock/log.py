"""The mock's request log: one `LoggedRequest` per POST, kept in memory and/or appended to a
JSON-lines file."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import IO

import orjson


@dataclass(frozen=True, slots=True)
class LoggedRequest:
    """One POST the server received (`t`: arrival) and the status it answered.

    `status` is 0 when no status line was sent: `drop`, a `hang` still waiting or cut
    short, or any reply cancelled by a client disconnect or server stop.
    """

    t: float
    model: str | None
    request_key: str
    status: int
    fault: str | None
    auth: str | None
    body: dict | None


class RequestLog:
    """The entries so far (`entries`, unless `keep` is False) and the file at `path`, if any.

    The file gets a line per final entry (no body, no headers), flushed at once.
    """

    def __init__(self, keep: bool, path: str | None) -> None:
        self.keep = keep
        self.path = path
        self.entries: list[LoggedRequest] = []
        self._file: IO[bytes] | None = None

    def clear(self) -> None:
        """Forget the in-memory entries (the file keeps its lines)."""
        self.entries.clear()

    def record(self, entry: LoggedRequest, final: bool = True) -> int:
        """Append `entry` (and write its line when final); its index or -1 when not kept."""
        index = -1
        if self.keep:
            self.entries.append(entry)
            index = len(self.entries) - 1
        if final and self.path:
            self._write(entry)
        return index

    def settle(self, index: int, entry: LoggedRequest, status: int) -> None:
        """Replace a pending entry with its final status and write its line."""
        final = entry if entry.status == status else replace(entry, status=status)
        entries = self.entries
        if final is not entry and 0 <= index < len(entries) and entries[index] is entry:
            entries[index] = final
        if self.path:
            self._write(final)

    def _write(self, entry: LoggedRequest) -> None:
        """Append one JSON line to the file (opened on first use) and flush it."""
        if self._file is None:
            self._file = open(self.path, "ab")  # noqa: SIM115
        line = {
            "t": entry.t,
            "model": entry.model,
            "request_key": entry.request_key,
            "status": entry.status,
            "fault": entry.fault,
            "auth": entry.auth,
        }
        self._file.write(orjson.dumps(line) + b"\n")
        self._file.flush()

    def close(self) -> None:
        """Close the file if it was opened."""
        if self._file is not None:
            self._file.close()
            self._file = None

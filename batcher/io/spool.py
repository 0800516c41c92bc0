"""The request spool: every request of a run, built once by the checking pass, kept in the
job folder (`requests.arrow`, an Arrow IPC file, lz4) for the two stages after it.

- the send phase reads back the requests still to send (`todo`), payloads as built;
- `batcher.ray` reads the requests to send a slice of a batch at a time, wherever it likes
  (the file format's footer finds any batch);
- assembly reads every request's key, id and hash, window by window in input order, to
  join them with their results (no request is built again, the input is not re-parsed for
  them).

Payloads are kept only for the requests to send; a request done by an earlier run keeps
its key and fingerprint alone.
"""

from __future__ import annotations

import contextlib
from collections import deque
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from batcher.io.inputs import RowBatch
from batcher.types import Request

SCHEMA = pa.schema(
    [
        ("_row", pa.int64()),
        ("id", pa.string()),
        ("model", pa.string()),
        ("_model_index", pa.int32()),
        ("_variant", pa.int32()),
        ("sample", pa.int32()),
        ("request_hash", pa.string()),
        ("est_prompt_tokens", pa.int64()),
        ("max_tokens", pa.int64()),
        ("bad_input", pa.string()),
        ("todo", pa.bool_()),
        ("payload", pa.binary()),
        ("prefix", pa.string()),
    ]
)
_OPTIONS = pa.ipc.IpcWriteOptions(compression="lz4")


class SpoolWriter:
    """The checking pass's sink: one record batch per input batch. Use as a context manager;
    the file is whole once it is closed."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.todo = 0  # requests written to send
        self._sink = pa.OSFile(str(path), "wb")
        self._writer = pa.ipc.new_file(self._sink, SCHEMA, options=_OPTIONS)

    def __enter__(self) -> SpoolWriter:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._writer.close()
        self._sink.close()

    def __call__(self, batch: RowBatch, requests: list[Request], todo: list[bool]) -> None:
        if not requests:
            return
        self.todo += sum(todo)
        columns = [
            [r.row_index for r in requests],
            [r.row_id for r in requests],
            [r.model for r in requests],
            [r.model_index for r in requests],
            [r.variant for r in requests],
            [r.sample for r in requests],
            [r.request_hash or None for r in requests],
            [r.est_prompt_tokens for r in requests],
            [r.max_tokens for r in requests],
            [r.bad_input for r in requests],
            todo,
            [r.payload if send else None for r, send in zip(requests, todo)],
            [r.cache_prefix for r in requests],
        ]
        arrays = [pa.array(values, type=f.type) for values, f in zip(columns, SCHEMA)]
        self._writer.write_batch(pa.RecordBatch.from_arrays(arrays, schema=SCHEMA))


@contextlib.contextmanager
def writer(path: Path) -> Iterator[pa.ipc.RecordBatchFileWriter]:
    """A spool of spool batches chosen elsewhere (`batcher.ray`: those a cache misses)."""
    with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_file(sink, SCHEMA, options=_OPTIONS) as w:
        yield w


def batches(path: Path) -> Iterator[pa.RecordBatch]:
    """The spool's record batches, in input order."""
    with pa.OSFile(str(path), "rb") as source:
        reader = pa.ipc.open_file(source)
        for i in range(reader.num_record_batches):
            yield reader.get_batch(i)


def todo_requests(path: Path) -> Iterator[Request]:
    """The requests still to send, in input order, as the checking pass built them."""
    for batch in todo_batches(path):
        yield from requests_in(batch)


GROUP_ROWS = 100_000  # requests grouped at a time by `grouped_requests`...
GROUP_BYTES = 256 << 20  # ...or fewer, up to this many bytes of bodies


def grouped_requests(path: Path, lead: int) -> Iterator[Request]:
    """The requests still to send, ordered for the provider's prompt cache (`--cache-aware`).

    Requests of one model sharing a cacheable prefix form a group: its first request (the
    one that writes the cache) goes out `lead` places ahead of the rest, and the rest
    together. With `lead` the requests in flight, the first has been answered, its prefix
    cached, when the rest go out; requests without a shared prefix fill the gaps. Window by
    window of `GROUP_ROWS` requests or `GROUP_BYTES` of bodies in input order (memory: one
    window); a group still going at the end of a window goes on first in the next."""
    pending: list[pa.RecordBatch] = []
    rows = size = 0
    last = None
    for batch in todo_batches(path):
        pending.append(batch)
        rows += batch.num_rows
        size += batch.column("payload").nbytes
        if rows >= GROUP_ROWS or size >= GROUP_BYTES:
            table, last = _grouped(pa.Table.from_batches(pending), last, lead)
            pending, rows, size = [], 0, 0
            yield from requests_in(table)
    if pending:
        table, _ = _grouped(pa.Table.from_batches(pending), last, lead)
        yield from requests_in(table)


def _grouped(table: pa.Table, last: str | None, lead: int) -> tuple[pa.Table, str | None]:
    """The window's rows in `grouped_requests`' order, and the key of the request sent last."""
    keys = pc.binary_join_element_wise(table["model"], table["prefix"], "\x00").to_pylist()
    groups: dict[str, list[int]] = {}
    for i, key in enumerate(keys):
        groups.setdefault(i if key is None else key, []).append(i)  # type: ignore[arg-type]
    out = groups.pop(last, []) if last is not None else []  # its cache is warm
    fillers: deque[int] = deque()  # requests sharing no prefix in this window
    heads: list[Any] = []  # the groups of several requests, in order of their first
    rest: list[tuple[Any, int]] = []  # the others of each group, group after group
    starts: list[int] = []  # where each head's group begins in `rest`
    for key, members in groups.items():
        if len(members) == 1:
            fillers.append(members[0])
            continue
        heads.append(key)
        starts.append(len(rest))
        rest.extend((key, m) for m in members[1:])
    sent: dict[Any, int] = {}  # where each head went in `out`
    h = i = 0
    while i < len(rest):
        if h < len(heads) and starts[h] - i <= lead:  # its group is close: the head now
            sent[heads[h]] = len(out)
            out.append(groups[heads[h]][0])
            h += 1
            continue
        key, row = rest[i]
        if len(out) - sent[key] >= lead or not (fillers or h < len(heads)):
            out.append(row)
            i += 1
        elif fillers:
            out.append(fillers.popleft())
        else:  # nothing else to send meanwhile: the next group's head, early
            sent[heads[h]] = len(out)
            out.append(groups[heads[h]][0])
            h += 1
    out.extend(fillers)
    return table.take(np.array(out, dtype=np.int64)), keys[out[-1]] if out else last


def todo_batches(path: Path) -> Iterator[pa.RecordBatch]:
    """The spool's batches of requests still to send (their rows only), in input order."""
    for batch in batches(path):
        todo = batch.column("todo")
        if not pc.any(todo).as_py():
            continue
        yield batch if pc.all(todo).as_py() else batch.filter(todo)


def requests_in(batch: pa.RecordBatch | pa.Table) -> Iterator[Request]:
    """The requests of spool rows."""
    columns = [batch.column(name).to_pylist() for name in _REQUEST_FIELDS]
    for row, rid, model, mi, payload, rhash, est, most, sample, bad, variant, pre in zip(*columns):
        yield Request(
            row, rid, model, mi, payload or b"", rhash or "", est, most, sample, bad, variant, pre
        )


# The spool's columns in the order of Request's fields.
_REQUEST_FIELDS = (
    "_row",
    "id",
    "model",
    "_model_index",
    "payload",
    "request_hash",
    "est_prompt_tokens",
    "max_tokens",
    "sample",
    "bad_input",
    "_variant",
    "prefix",
)
_KEYS = pa.schema([f for f in SCHEMA if f.name != "payload"])


def row_windows(path: Path) -> Iterator[tuple[int, int]]:
    """The rows [start, stop) of each batch the checking pass wrote, in order."""
    start = 0
    for batch in batches(path):
        if batch.num_rows:
            stop = batch.column("_row")[batch.num_rows - 1].as_py() + 1
            yield start, stop
            start = stop


class Windows:
    """Assembly's view of the spool: the requests of rows [start, stop), window after window
    in input order (payloads left out)."""

    def __init__(self, path: Path) -> None:
        self._batches = batches(path)
        self._pending = _KEYS.empty_table()

    def take(self, start: int, stop: int) -> pa.Table:
        tables = [self._pending]
        last = self._pending.column("_row")[-1].as_py() if self._pending.num_rows else None
        while last is None or last < stop:
            batch = next(self._batches, None)
            if batch is None:
                break
            table = pa.Table.from_batches([batch]).drop_columns(["payload"])
            if table.num_rows:
                tables.append(table)
                last = table.column("_row")[-1].as_py()
        table = pa.concat_tables(tables)
        rows = table.column("_row").to_numpy()
        low, high = (int(i) for i in np.searchsorted(rows, [start, stop]))
        self._pending = table.slice(high)
        return table.slice(low, high - low)

    def close(self) -> None:
        self._batches.close()

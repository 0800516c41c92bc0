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
from collections.abc import Iterator
from pathlib import Path

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
    for row, rid, model, mi, payload, rhash, est, most, sample, bad, variant in zip(*columns):
        yield Request(
            row, rid, model, mi, payload or b"", rhash or "", est, most, sample, bad, variant
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

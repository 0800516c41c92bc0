"""Stream the rows of an input file (.jsonl/.ndjson, .csv, .parquet) in bounded batches.

Memory stays flat whatever the file size: rows come in `RowBatch`es of at most `batch_rows`
rows (and, for JSONL/CSV, about `BATCH_BYTES` of text). Every problem is an `InputError` with a
one-line message: `"{path}: line {n}: {problem}"` (JSONL/CSV, the 1-based physical line where
the record starts; a CSV header is line 1), `"{path}: row {n}: {problem}"` (Parquet, 1-based
data row) or `"{path}: {problem}"` for the whole file.

Types: JSONL values are what JSON says; CSV has no types, so every CSV value is a string (a
record shorter than the header gives None for the missing fields); Parquet values are what
`to_pylist()` gives.

`SchemaBuilder` infers the Arrow schema of the input's own columns and `rows_table` turns a
batch into a table of exactly that schema, so they can be kept next to the results.
"""

from __future__ import annotations

import csv
import json
import os
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import orjson
import pyarrow as pa
import pyarrow.parquet as pq

from batcher.errors import InputError, json_kind, one_line, os_problem, quote, show_path

FORMATS = {".jsonl": "jsonl", ".ndjson": "jsonl", ".csv": "csv", ".parquet": "parquet"}
BATCH_BYTES = 32 << 20  # a JSONL/CSV batch ends after about this much text
READ_BUFFER = 1 << 20
MAX_LINE = 64 << 20  # the longest JSONL/CSV line read (a 10 MB prompt is fine)
BOM = b"\xef\xbb\xbf"
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1

# One record of a JSONL/CSV stream: (line, row or None, one-line message or None, size).
Record = tuple[int, "dict[str, Any] | None", "str | None", int]


@dataclass(frozen=True, slots=True)
class RowBatch:
    """Consecutive data rows of an input file."""

    start: int  # 0-based index of rows[0] among the file's data rows
    rows: list[dict[str, Any]]  # column -> value; {} for an unreadable row (see `bad`)
    lines: list[int]  # per row: 1-based line (JSONL/CSV) or 1-based row number (Parquet)
    kind: str = "jsonl"  # "jsonl" | "csv" | "parquet"
    bad: dict[int, str] = field(default_factory=dict)  # position -> message of an unreadable row
    arrow: pa.RecordBatch | None = None  # Parquet: the same rows as read

    def where(self, i: int) -> str:
        """Where row i is, for messages: "line 7" or "row 7"."""
        unit = "row" if self.kind == "parquet" else "line"
        return f"{unit} {self.lines[i]}"


def file_kind(path: str | os.PathLike[str]) -> str:
    """ "jsonl", "csv" or "parquet" from the extension (case-insensitive)."""
    suffix = Path(path).suffix.lower()
    if suffix not in FORMATS:
        raise InputError(
            f"{show_path(path)}: unknown file type {quote(suffix)} "
            "(expected .jsonl, .parquet or .csv)"
        )
    return FORMATS[suffix]


def read_batches(
    path: str | os.PathLike[str],
    *,
    limit: int | None = None,
    batch_rows: int = 4096,
    errors: str = "row",
    digest: Any = None,
) -> Iterator[RowBatch]:
    """Yield the data rows of `path` in batches, the first `limit` rows only if given.

    A row that cannot be read (malformed JSON, not an object, invalid UTF-8, too many CSV
    fields) raises `InputError` under errors="raise"; under errors="row" (the default) it
    comes through as an empty row with its message in `RowBatch.bad`, for the caller to
    decide. File-level problems always raise; so does a file with no data rows, and a line
    longer than `MAX_LINE`. `digest` (a hashlib object) is fed every byte the rows came from
    (the whole file for Parquet): two reads of an unchanged file give the same digest.
    """
    if errors not in ("raise", "row"):
        raise ValueError(f"errors must be 'raise' or 'row', got {errors!r}")
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be at least 1, got {limit}")
    if batch_rows < 1:
        raise ValueError(f"batch_rows must be at least 1, got {batch_rows}")
    kind = file_kind(path)
    source = show_path(path)
    with _open(path, source) as f:
        try:
            if kind == "parquet":
                if digest is not None:
                    _digest_all(f, digest)
                batches = _parquet_batches(f, source, batch_rows, limit)
            else:
                lines = _lines(f, source, digest)
                read = _jsonl_records if kind == "jsonl" else _csv_records
                records = read(lines, source)
                batches = _batched(records, kind, batch_rows, limit, errors == "raise")
            empty = True
            for batch in batches:
                empty = False
                yield batch
        except OSError as exc:
            raise InputError(f"{source}: {os_problem(exc)}") from None
    if empty:
        raise InputError(f"{source}: no rows")


def _open(path: str | os.PathLike[str], source: str) -> IO[bytes]:
    try:
        return open(path, "rb", buffering=READ_BUFFER)
    except (OSError, ValueError) as exc:
        raise InputError(f"{source}: {os_problem(exc)}") from None


def _lines(f: IO[bytes], source: str, digest: Any) -> Iterator[bytes]:
    """The lines of a text file as read, each at most MAX_LINE bytes, fed to `digest`."""
    n = 0
    while raw := f.readline(MAX_LINE + 1):
        n += 1
        if len(raw) > MAX_LINE and not raw.endswith(b"\n"):
            raise InputError(
                f"{source}: line {n}: longer than {MAX_LINE >> 20} MiB, the most one line may hold"
            )
        if digest is not None:
            digest.update(raw)
        yield raw


def _digest_all(f: IO[bytes], digest: Any) -> None:
    while chunk := f.read(READ_BUFFER):
        digest.update(chunk)
    f.seek(0)


def _batched(
    records: Iterable[Record], kind: str, batch_rows: int, limit: int | None, strict: bool
) -> Iterator[RowBatch]:
    """Records into RowBatches of at most `batch_rows` rows or about BATCH_BYTES."""
    start = 0
    rows: list[dict[str, Any]] = []
    lines: list[int] = []
    bad: dict[int, str] = {}
    size = 0
    for line, row, problem, nbytes in records:
        if problem is not None:
            if strict:
                raise InputError(problem)
            bad[len(rows)] = problem
        rows.append(row if row is not None else {})
        lines.append(line)
        size += nbytes
        done = limit is not None and start + len(rows) >= limit
        if done or len(rows) >= batch_rows or size >= BATCH_BYTES:
            yield RowBatch(start, rows, lines, kind, bad)
            start += len(rows)
            rows, lines, bad, size = [], [], {}, 0
        if done:
            return
    if rows:
        yield RowBatch(start, rows, lines, kind, bad)


# --- JSONL ------------------------------------------------------------------------------


def _jsonl_records(lines: Iterable[bytes], source: str) -> Iterator[Record]:
    for n, raw in enumerate(lines, 1):
        if n == 1 and raw.startswith(BOM):
            raw = raw[len(BOM) :]
        if not raw or raw.isspace():
            continue
        raw = raw.rstrip(b"\r\n")  # so orjson's column is on this line
        try:
            value = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            yield n, None, f"{source}: line {n}: {_json_problem(exc)}", len(raw)
            continue
        if not isinstance(value, dict):
            problem = f"expected a JSON object, got {json_kind(value)}"
            yield n, None, f"{source}: line {n}: {problem}", len(raw)
            continue
        yield n, value, None, len(raw)


def _json_problem(exc: json.JSONDecodeError) -> str:
    """orjson's reason, short and on one line."""
    msg = exc.msg
    if msg.startswith("str is not valid UTF-8"):
        return "invalid UTF-8"
    if "depth" in msg or "recursion" in msg.lower():
        return "invalid JSON: nested too deeply (more than 1024 levels)"
    return f"invalid JSON: {one_line(msg)} at column {exc.colno}"


# --- CSV --------------------------------------------------------------------------------


def _csv_records(lines: Iterable[bytes], source: str) -> Iterator[Record]:
    """Records of a CSV file with a header; values are strings, missing fields None."""
    _raise_field_limit()
    flagged: dict[int, str] = {}  # line -> problem, for the lines of the current record
    reader = csv.reader(_csv_lines(lines, flagged))
    header: list[str] | None = None
    end = 0
    while True:
        try:
            fields = next(reader, None)
        except csv.Error as exc:
            raise InputError(f"{source}: line {reader.line_num}: {one_line(str(exc))}") from None
        if fields is None:
            return
        first, end = end + 1, reader.line_num
        problem = _flagged_problem(flagged, source)
        if not fields and problem is None:  # a blank line
            continue
        if header is None:
            if problem is not None:
                raise InputError(problem)
            header = _check_header(fields, source, first)
            continue
        size = sum(map(len, fields))
        if problem is None and len(fields) > len(header):
            problem = (
                f"{source}: line {first}: {len(fields)} fields, "
                f"but the header has {len(header)} columns"
            )
        if problem is not None:
            yield first, None, problem, size
            continue
        row = dict(zip(header, fields))
        for name in header[len(fields) :]:
            row[name] = None
        yield first, row, None, size


def _csv_lines(lines: Iterable[bytes], flagged: dict[int, str]) -> Iterator[str]:
    """Decoded lines (CRLF, LF or CR), each checked on its own so a problem has its line."""
    n = 0
    for raw in lines:
        if n == 0 and raw.startswith(BOM):
            raw = raw[len(BOM) :]
        body = raw[:-2] if raw.endswith(b"\r\n") else raw
        parts = raw.splitlines(keepends=True) if b"\r" in body else (raw,)
        for part in parts:
            n += 1
            try:
                text = part.decode("utf-8")
            except UnicodeDecodeError:
                flagged.setdefault(n, "invalid UTF-8")
                text = part.decode("utf-8", "replace")
            if "\x00" in text:
                flagged.setdefault(n, "contains a NUL byte")
                text = text.replace("\x00", "")
            yield text


def _flagged_problem(flagged: dict[int, str], source: str) -> str | None:
    if not flagged:
        return None
    line = min(flagged)
    problem = f"{source}: line {line}: {flagged[line]}"
    flagged.clear()
    return problem


def _check_header(fields: list[str], source: str, line: int) -> list[str]:
    seen: set[str] = set()
    for i, name in enumerate(fields, 1):
        if name == "":
            raise InputError(f"{source}: line {line}: column {i} of the header has no name")
        if name in seen:
            raise InputError(f"{source}: line {line}: duplicate column name {quote(name)}")
        seen.add(name)
    return fields


def _raise_field_limit() -> None:
    """Let a CSV field be as large as a C long allows (10 MB prompts are fine)."""
    limit = min(sys.maxsize, 2**31 - 1)
    if csv.field_size_limit() < limit:
        csv.field_size_limit(limit)


# --- Parquet ----------------------------------------------------------------------------


def _parquet_batches(
    f: IO[bytes], source: str, batch_rows: int, limit: int | None
) -> Iterator[RowBatch]:
    try:
        pf = pq.ParquetFile(f)
        names = pf.schema_arrow.names
        batches = pf.iter_batches(batch_size=batch_rows)
    except Exception as exc:
        raise _not_parquet(source, exc) from None
    if len(set(names)) < len(names):
        dup = next(n for n in names if names.count(n) > 1)
        raise InputError(f"{source}: duplicate column name {quote(dup)}")
    start = 0
    while limit is None or start < limit:
        try:
            rb = next(batches, None)
            if rb is None:
                return
            if limit is not None and start + rb.num_rows > limit:
                rb = rb.slice(0, limit - start)
            rows = rb.to_pylist()
        except Exception as exc:
            raise _not_parquet(source, exc) from None
        if rows:
            lines = list(range(start + 1, start + len(rows) + 1))
            yield RowBatch(start, rows, lines, "parquet", {}, rb)
            start += len(rows)


def _not_parquet(source: str, exc: Exception) -> InputError:
    reason = one_line(str(exc)) or type(exc).__name__
    return InputError(f"{source}: not a readable Parquet file: {reason}")


# --- Schema of the input's own columns --------------------------------------------------

_NULL, _BOOL, _INT, _FLOAT, _STR, _OTHER = 1, 2, 4, 8, 16, 32
_BITS = {type(None): _NULL, bool: _BOOL, int: _INT, float: _FLOAT, str: _STR}


class SchemaBuilder:
    """Infers the Arrow schema of the input's columns, in first-seen order, batch by batch.

    Parquet: the file's own schema. JSONL/CSV, per column from the value types seen (nulls
    aside): only bool -> bool; only int -> int64; int and float, or float -> float64; only
    str, or only nulls -> string; anything else (lists, objects, mixes) -> string, holding
    compact JSON for the values that are not strings. CSV values are strings, so CSV columns
    are strings. Unreadable rows have no columns.
    """

    def __init__(self) -> None:
        self._masks: dict[str, int] = {}
        self._fixed: pa.Schema | None = None

    def add(self, batch: RowBatch) -> None:
        if batch.arrow is not None:
            if self._fixed is None:
                self._fixed = batch.arrow.schema
            return
        masks = self._masks
        for row in batch.rows:
            for name, value in row.items():
                bit = _BITS.get(type(value), _OTHER)
                if bit == _INT and not INT64_MIN <= value <= INT64_MAX:
                    bit = _OTHER
                masks[name] = masks.get(name, 0) | bit

    def schema(self) -> pa.Schema:
        if self._fixed is not None:
            return self._fixed
        return pa.schema([(name, _arrow_type(mask)) for name, mask in self._masks.items()])


def _arrow_type(mask: int) -> pa.DataType:
    mask &= ~_NULL
    if mask == _BOOL:
        return pa.bool_()
    if mask == _INT:
        return pa.int64()
    if mask in (_FLOAT, _INT | _FLOAT):
        return pa.float64()
    return pa.string()


def input_schema(path: str | os.PathLike[str], *, limit: int | None = None) -> pa.Schema:
    """The inferred schema of the input's own columns (one pass over the file)."""
    builder = SchemaBuilder()
    for batch in read_batches(path, limit=limit):
        builder.add(batch)
    return builder.schema()


def rows_table(batch: RowBatch, schema: pa.Schema) -> pa.Table:
    """The batch's rows as a table of exactly `schema` (from `SchemaBuilder`), values
    converted as its rules say; unreadable rows and values that do not fit become null."""
    if batch.arrow is not None and batch.arrow.schema.equals(schema):
        return pa.Table.from_batches([batch.arrow])
    arrays = []
    for f in schema:
        values = [None if i in batch.bad else row.get(f.name) for i, row in enumerate(batch.rows)]
        arrays.append(pa.array(_convert(values, f.type), type=f.type))
    return pa.Table.from_arrays(arrays, schema=schema)


def _convert(values: list[Any], kind: pa.DataType) -> list[Any]:
    if kind == pa.string():
        return [v if v is None or type(v) is str else compact_json(v) for v in values]
    if kind == pa.int64():
        return [v if type(v) is int and INT64_MIN <= v <= INT64_MAX else None for v in values]
    if kind == pa.float64():
        return [float(v) if type(v) in (int, float) else None for v in values]
    if kind == pa.bool_():
        return [v if type(v) is bool else None for v in values]
    return values


def compact_json(value: Any) -> str:
    """Compact JSON text of a value; odd types (bytes, Decimal) as their str()."""
    try:
        return orjson.dumps(value, default=str).decode()
    except (TypeError, orjson.JSONEncodeError):  # nested over 254 levels, ints over 64 bits
        pass
    try:
        return json.dumps(value, separators=(",", ":"), ensure_ascii=False, default=str)
    except (RecursionError, TypeError, ValueError):
        return _deep_json(value)


def _deep_json(value: Any) -> str:
    """Compact JSON without recursion, for values nested deeper than the stack allows."""
    out: list[str] = []
    stack: list[Any] = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, _Text):
            out.append(item)
        elif isinstance(item, dict):
            stack.append(_Text("}"))
            for j, (key, sub) in enumerate(reversed(list(item.items()))):
                stack.append(sub)
                stack.append(_Text(json.dumps(str(key), ensure_ascii=False) + ":"))
                if j < len(item) - 1:
                    stack.append(_Text(","))
            stack.append(_Text("{"))
        elif isinstance(item, (list, tuple)):
            stack.append(_Text("]"))
            for j, sub in enumerate(reversed(item)):
                stack.append(sub)
                if j < len(item) - 1:
                    stack.append(_Text(","))
            stack.append(_Text("["))
        else:
            out.append(json.dumps(item, ensure_ascii=False, default=str))
    return "".join(out)


class _Text(str):
    """Already-encoded JSON text on the `_deep_json` stack."""


__all__ = [
    "RowBatch",
    "SchemaBuilder",
    "compact_json",
    "file_kind",
    "input_schema",
    "quote",
    "read_batches",
    "rows_table",
    "show_path",
]

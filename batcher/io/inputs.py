"""Stream the rows of an input file (.jsonl/.ndjson, .csv, .parquet) in bounded batches.

Memory stays flat whatever the file size: rows come in `RowBatch`es of at most `batch_rows`
rows (and, for JSONL/CSV, about `BATCH_BYTES` of text). Every problem is an `InputError` with a
one-line message: `"{path}: line {n}: {problem}"` (JSONL/CSV, the 1-based physical line where
the record starts; a CSV header is line 1), `"{path}: row {n}: {problem}"` (Parquet, 1-based
data row) or `"{path}: {problem}"` for the whole file.

Types: JSONL values are what JSON says; CSV has no types, so every CSV value is a string (a
record shorter than the header gives None for the missing fields); Parquet values are what
`to_pylist()` gives.

The schema of the input's own columns is `batcher.io.input_schema`'s; an input that can be
read only once (standard input) is copied to a file first (`batcher.io.streams`).
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import os
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import orjson
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from batcher.errors import InputError, json_kind, one_line, os_problem, quote, show_path

FORMATS = {".jsonl": "jsonl", ".ndjson": "jsonl", ".csv": "csv", ".parquet": "parquet"}
KINDS = ("jsonl", "csv", "parquet")
# A whole file compressed: read as a stream through pyarrow's codecs.
COMPRESSIONS = {".gz": "gzip", ".gzip": "gzip", ".zst": "zstd", ".zstd": "zstd", ".bz2": "bz2"}
MAGIC = {b"\x1f\x8b": "gzip", b"\x28\xb5\x2f\xfd": "zstd", b"BZh": "bz2"}
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
    source: str = ""  # the file the rows are in, as messages name it

    def where(self, i: int) -> str:
        """Where row i is, for messages: "line 7" or "row 7"."""
        unit = "row" if self.kind == "parquet" else "line"
        return f"{unit} {self.lines[i]}"

    def place(self, i: int) -> str:
        """The file and where row i is in it: "data/b.jsonl: line 7"."""
        return f"{self.source}: {self.where(i)}"


@dataclass(frozen=True, slots=True)
class InputFile:
    """An input file: where it is, how it is read, and how messages name it."""

    path: Path
    kind: str  # "jsonl" | "csv" | "parquet"
    compression: str | None = None  # the whole file: "gzip", "zstd", "bz2"
    name: str = ""  # as messages show it: the path as given, "-" for standard input
    fs: Any = None  # the pyarrow FileSystem holding `path`; None: a local file

    @classmethod
    def of(
        cls,
        path: str | os.PathLike[str],
        fmt: str | None = None,
        *,
        name: str | None = None,
        fs: Any = None,
    ) -> InputFile:
        """The file at `path` (on `fs`, a pyarrow FileSystem, if given): its kind from `fmt`
        (--input-format), else its name (`x.jsonl`, `x.csv.gz`, `x.parquet`); a whole-file
        compression from its name or its first bytes."""
        path = Path(path)
        shown = show_path(name if name is not None else path)
        suffixes = [s.lower() for s in path.suffixes[-2:]]
        compression = COMPRESSIONS.get(suffixes[-1]) if suffixes else None
        if compression is not None:
            suffixes = suffixes[:-1]
        elif fs is not None or path.is_file():
            compression = _sniff_compression(path, fs)
        kind = fmt or (FORMATS.get(suffixes[-1]) if suffixes else None)
        if kind is None:
            try:  # a file that cannot be read says so before its name is questioned
                file_stat(path, fs)
            except OSError as exc:
                raise InputError(f"{shown}: {os_problem(exc)}") from None
            suffix = "".join(path.suffixes[-2:])
            raise InputError(
                f"{shown}: unknown file type {quote(suffix)} (expected .jsonl, .parquet or "
                ".csv, also compressed: .jsonl.gz, .csv.zst; or say --input-format)"
            )
        if kind == "parquet" and compression is not None:
            raise InputError(f"{shown}: a compressed Parquet file: Parquet compresses itself")
        return cls(path, kind, compression, shown, fs)


@dataclass(frozen=True, slots=True)
class InputSet:
    """Several input files of one kind (a folder, a glob), read one after the other as one
    input: row numbers run on across them, messages name each file."""

    files: tuple[InputFile, ...]
    name: str  # as given: "data/", "data/*.jsonl", "s3://bucket/prompts/"

    @property
    def kind(self) -> str:
        return self.files[0].kind


def file_stat(path: Path, fs: Any = None) -> tuple[int, int]:
    """(size, mtime in ns) of a local file or of one on a pyarrow FileSystem."""
    if fs is None:
        info = os.stat(path)
        return info.st_size, info.st_mtime_ns
    try:
        found = fs.get_file_info(str(path))
    except (pa.ArrowException, ValueError) as exc:
        raise OSError(one_line(str(exc))) from None
    if found.type == pafs.FileType.NotFound:
        raise FileNotFoundError(str(path))
    if found.type == pafs.FileType.Directory:
        raise IsADirectoryError(str(path))
    return found.size or 0, found.mtime_ns or 0


def _sniff_compression(path: Path, fs: Any = None) -> str | None:
    try:
        if fs is None:
            with open(path, "rb") as f:
                head = f.read(4)
        else:
            with fs.open_input_stream(str(path), compression=None) as f:
                head = f.read(4)
    except (OSError, pa.ArrowException):
        return None  # the reader says what is wrong
    return next((c for magic, c in MAGIC.items() if head.startswith(magic)), None)


def file_kind(path: str | os.PathLike[str]) -> str:
    """ "jsonl", "csv" or "parquet" from the name (case-insensitive)."""
    return InputFile.of(path).kind


def read_batches(
    path: str | os.PathLike[str] | InputFile | InputSet,
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
    if isinstance(path, InputSet):
        yield from _set_batches(path, limit, batch_rows, errors, digest)
    else:
        file = path if isinstance(path, InputFile) else InputFile.of(path)
        yield from _read_file(file, limit, batch_rows, errors, digest)


def _read_file(
    file: InputFile,
    limit: int | None,
    batch_rows: int,
    errors: str,
    digest: Any,
    *,
    allow_empty: bool = False,
) -> Iterator[RowBatch]:
    kind, source = file.kind, file.name
    with _open(file, source) as f:
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
                yield dataclasses.replace(batch, source=source)
        except OSError as exc:
            raise InputError(f"{source}: {os_problem(exc)}") from None
    if empty and not allow_empty:
        raise InputError(f"{source}: no rows")


def _set_batches(
    inputs: InputSet, limit: int | None, batch_rows: int, errors: str, digest: Any
) -> Iterator[RowBatch]:
    """The batches of each file in turn, numbered on from the rows of the files before."""
    start = 0
    for file in inputs.files:
        left = None if limit is None else limit - start
        if left is not None and left < 1:
            return
        rows = 0
        for batch in _read_file(file, left, batch_rows, errors, digest, allow_empty=True):
            yield dataclasses.replace(batch, start=start + batch.start)
            rows = batch.start + len(batch.rows)
        start += rows
    if start == 0:
        raise InputError(f"{inputs.name}: no rows in any of its {len(inputs.files)} files")


def _open(file: InputFile, source: str) -> IO[bytes]:
    try:
        if file.fs is not None:
            if file.kind == "parquet":
                return file.fs.open_input_file(str(file.path))
            stream = file.fs.open_input_stream(str(file.path), compression=file.compression)
            return io.BufferedReader(_Raw(stream), buffer_size=READ_BUFFER)
        if file.compression is None:
            return open(file.path, "rb", buffering=READ_BUFFER)
        stream = pa.input_stream(str(file.path), compression=file.compression)
        return io.BufferedReader(_Raw(stream), buffer_size=READ_BUFFER)
    except (OSError, ValueError, pa.ArrowException) as exc:
        raise InputError(f"{source}: {os_problem(exc)}") from None


class _Raw(io.RawIOBase):
    """A pyarrow stream (a decompressing one) as a raw file, for a BufferedReader."""

    def __init__(self, stream: Any) -> None:
        self._stream = stream

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        try:
            data = self._stream.read(len(buffer))
        except pa.ArrowException as exc:  # a corrupt compressed stream
            raise OSError(f"cannot decompress: {one_line(str(exc))}") from None
        buffer[: len(data)] = data
        return len(data)

    def close(self) -> None:
        self._stream.close()
        super().close()


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


__all__ = [
    "InputFile",
    "InputSet",
    "RowBatch",
    "file_kind",
    "quote",
    "read_batches",
    "show_path",
]

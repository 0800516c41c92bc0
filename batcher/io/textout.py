"""OUT as JSON Lines or CSV (`-o NAME.jsonl`, `NAME.ndjson`, `NAME.csv`): the columns of the
Parquet OUT, row for row, for jq, spreadsheets and shell tools.

Text has no footer, so the job's metadata and OUT's Arrow schema go to a hidden file beside
it, `.NAME.batcher.json`, put in place just before OUT is: with it `cost`, `report`,
`status`, `show` and resume read the text back with the types it was written with (a kill
between the two renames leaves an older OUT than the job folder's parts, which resume
then assembles again).

- JSON Lines: one object a row, the columns in order; times in ISO 8601 with their offset.
- CSV: a header, then a row a line; a string is quoted, a null is an empty field (so "" is
  an empty string); a nested column (a schema's object or array, `tool_calls`,
  `search_results`) is its JSON.
"""

from __future__ import annotations

import base64
import datetime
import io
import json
import os
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import orjson
import pyarrow as pa
import pyarrow.csv as pacsv

from batcher.io.durable import fsync_file

FORMATS = {".jsonl": "jsonl", ".ndjson": "jsonl", ".csv": "csv"}
_NESTED = (pa.types.is_struct, pa.types.is_list, pa.types.is_large_list, pa.types.is_map)


def text_format(path: Path) -> str | None:
    """ "jsonl" or "csv" when OUT's name asks for text, else None."""
    return FORMATS.get(Path(path).suffix.lower())


def sidecar(path: Path) -> Path:
    """The hidden file beside a text OUT holding its schema and the job's metadata."""
    path = Path(path)
    return path.with_name(f".{path.name}.batcher.json")


def write_text(
    tmp: Path,
    fmt: str,
    schema: pa.Schema,
    tables: Iterable[pa.Table],
    metadata: Callable[[], dict[str, bytes]] | None,
) -> tuple[int, bytes]:
    """Write the tables to `tmp` as `fmt`; the rows, and the sidecar's content."""
    rows = 0
    with open(tmp, "wb") as sink:
        if fmt == "csv":
            sink.write(",".join(_quoted(n) for n in schema.names).encode() + b"\n")
        for table in tables:
            rows += table.num_rows
            if fmt == "jsonl":
                sink.writelines(orjson.dumps(r) + b"\n" for r in table.to_pylist())
            else:
                buffer = io.BytesIO()
                options = pacsv.WriteOptions(include_header=False)
                pacsv.write_csv(_flat(table), buffer, write_options=options)
                sink.write(buffer.getvalue())
    fsync_file(tmp)
    schema = schema.with_metadata(metadata() if metadata else {})
    info = {"schema": base64.b64encode(schema.serialize().to_pybytes()).decode()}
    return rows, json.dumps(info).encode()


def read_sidecar(path: Path) -> pa.Schema | None:
    """The schema (with the job's metadata) of a text OUT; None without a readable sidecar."""
    try:
        info = json.loads(sidecar(path).read_bytes())
        return pa.ipc.read_schema(pa.py_buffer(base64.b64decode(info["schema"])))
    except (OSError, ValueError, KeyError, TypeError, pa.ArrowException):
        return None


def iter_text(
    path: Path, fmt: str, schema: pa.Schema, batch_size: int = 65536
) -> Iterator[pa.RecordBatch]:
    """A text OUT's rows in order, a batch at a time, typed as `schema`."""
    plain = schema.remove_metadata()
    if fmt == "jsonl":
        with open(path, "rb") as source:
            lines: list[bytes] = []
            for line in source:
                if line.strip():
                    lines.append(line)
                if len(lines) == batch_size:
                    yield _from_json_lines(lines, plain)
                    lines = []
            if lines:
                yield _from_json_lines(lines, plain)
        return
    nested = [f for f in plain if any(kind(f.type) for kind in _NESTED)]
    flat_types = {f.name: (pa.string() if f in nested else f.type) for f in plain}
    reader = pacsv.open_csv(
        path,
        read_options=pacsv.ReadOptions(block_size=1 << 24),
        parse_options=pacsv.ParseOptions(newlines_in_values=True),
        convert_options=pacsv.ConvertOptions(
            column_types=flat_types,
            null_values=[""],
            strings_can_be_null=True,
            quoted_strings_can_be_null=False,
        ),
    )
    for batch in reader:
        for f in nested:
            i = batch.schema.get_field_index(f.name)
            values = [None if v is None else orjson.loads(v) for v in batch.column(i).to_pylist()]
            batch = batch.set_column(i, f, pa.array(values, f.type))
        yield batch.cast(plain)


def read_text(path: Path, fmt: str, schema: pa.Schema, columns: list[str] | None) -> pa.Table:
    batches = list(iter_text(path, fmt, schema))
    table = pa.Table.from_batches(batches, schema=schema.remove_metadata())
    return table.select(columns) if columns is not None else table


def _from_json_lines(lines: list[bytes], schema: pa.Schema) -> pa.RecordBatch:
    rows = [orjson.loads(line) for line in lines]
    for f in schema:
        if pa.types.is_timestamp(f.type):
            for row in rows:
                if isinstance(value := row.get(f.name), str):
                    row[f.name] = datetime.datetime.fromisoformat(value)
    return pa.RecordBatch.from_pylist(rows, schema=schema)


def _flat(table: pa.Table) -> pa.Table:
    """Nested columns as JSON strings, for CSV."""
    for i, f in enumerate(table.schema):
        if any(kind(f.type) for kind in _NESTED):
            values = [None if v is None else orjson.dumps(v).decode() for v in table[i].to_pylist()]
            table = table.set_column(
                i, pa.field(f.name, pa.string()), pa.array(values, pa.string())
            )
    return table


def _quoted(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def put_sidecar(path: Path, content: bytes) -> None:
    """Write OUT's sidecar whole, then rename it into place (just before OUT)."""
    tmp = Path(path).with_name(f".{Path(path).name}.batcher.json.{os.getpid()}.tmp")
    try:
        tmp.write_bytes(content)
        fsync_file(tmp)
        os.replace(tmp, sidecar(path))
    finally:
        tmp.unlink(missing_ok=True)

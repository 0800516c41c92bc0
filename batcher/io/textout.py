"""OUT as JSON Lines or CSV (`-o NAME.jsonl`, `NAME.ndjson`, `NAME.csv`): the columns of the
Parquet OUT, row for row, for jq, spreadsheets and shell tools.

Text has no footer, so the job's metadata and OUT's Arrow schema go to a hidden file beside
it, `.NAME.batcher.json`, put in place just before OUT is: with it `cost`, `report`,
`status`, `show` and resume read the text back with the types it was written with (a kill
between the two renames leaves an older OUT than the job folder's parts, which resume
then assembles again).

- JSON Lines: one object a row, the columns in order; times in ISO 8601 with their offset;
  a float that is not a number (NaN) is null, as JSON has no NaN.
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

from batcher.errors import UsageError
from batcher.io.durable import fsync_file

FORMATS = {".jsonl": "jsonl", ".ndjson": "jsonl", ".csv": "csv"}
_NESTED = (pa.types.is_struct, pa.types.is_list, pa.types.is_large_list, pa.types.is_map)
_PARSE = {  # JSON's strings back to the values they were written from
    pa.timestamp("ms").id: datetime.datetime.fromisoformat,
    pa.date32().id: datetime.date.fromisoformat,
}


def text_format(path: Path) -> str | None:
    """ "jsonl" or "csv" when OUT's name asks for text, else None."""
    return FORMATS.get(Path(path).suffix.lower())


def check_text_columns(path: Path, kept: pa.Schema | None) -> None:
    """Refuse, before anything is sent, input columns to keep that a text OUT could not give
    back as they were: text holds strings, numbers, booleans, lists and objects of those,
    dates and times to the microsecond."""
    if text_format(path) is None or kept is None:
        return
    lost = [f"{f.name} ({f.type})" for f in kept if not _top_level(f.type)]
    if lost:
        raise UsageError(
            f"{path}: {Path(path).suffix} cannot hold the input column"
            f"{'s' if len(lost) > 1 else ''} {', '.join(lost)}; name the output .parquet, "
            "or leave them out with --keep-columns"
        )


def _json_native(t: pa.DataType) -> bool:
    if pa.types.is_list(t) or pa.types.is_large_list(t):
        return _json_native(t.value_type)
    if pa.types.is_struct(t):
        return all(_json_native(f.type) for f in t)
    return any(
        kind(t)
        for kind in (
            pa.types.is_string, pa.types.is_large_string, pa.types.is_boolean,
            pa.types.is_integer, pa.types.is_floating, pa.types.is_null,
        )
    )  # fmt: skip


def _top_level(t: pa.DataType) -> bool:
    timestamp = pa.types.is_timestamp(t) and t.unit != "ns"
    return _json_native(t) or timestamp or pa.types.is_date32(t)


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
    described = base64.b64encode(schema.serialize().to_pybytes()).decode()
    info = {"schema": described, "bytes": tmp.stat().st_size}  # the OUT it describes
    return rows, json.dumps(info).encode()


def read_sidecar(path: Path) -> pa.Schema | None:
    """The schema (with the job's metadata) of a text OUT; None without a readable sidecar
    or when it describes another OUT (a kill between the sidecar's rename and OUT's)."""
    try:
        info = json.loads(sidecar(path).read_bytes())
        if Path(path).stat().st_size != info["bytes"]:
            return None
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
        parse = _PARSE.get(f.type.id)
        if parse is not None:
            for row in rows:
                if isinstance(value := row.get(f.name), str):
                    row[f.name] = parse(value)
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

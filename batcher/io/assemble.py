"""Results to durable Parquet parts, and parts to the final output file.

While a job runs, `PartWriter` turns results into Arrow columns and writes them as part
files in the job directory: each to a hidden temporary name, fsynced, renamed, and the
directory fsynced, so a part that exists is complete. At the end `assemble` streams the input
again, batch by batch, joins each batch's requests with their results (a request with no
result becomes a `not_sent` error row), adds the input's own columns, and writes OUT through
a temporary file and an atomic rename. Memory stays at a batch or two.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from batcher.structured.validate import typed_columns
from batcher.types import ErrorType, Request, Result, Status

OUTPUT_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("model", pa.string()),
        ("status", pa.string()),
        ("content", pa.string()),
        ("finish_reason", pa.string()),
        ("refusal", pa.string()),
        ("reasoning", pa.string()),
        ("tool_calls", pa.string()),
        ("prompt_tokens", pa.int64()),
        ("completion_tokens", pa.int64()),
        ("total_tokens", pa.int64()),
        ("cost_usd", pa.float64()),
        ("latency_s", pa.float64()),
        ("attempts", pa.int32()),
        ("http_status", pa.int32()),
        ("error_type", pa.string()),
        ("error_message", pa.string()),
        ("response_id", pa.string()),
        ("response_model", pa.string()),
        ("created", pa.timestamp("ms", tz="UTC")),
        ("request_hash", pa.string()),
        ("search_results", pa.string()),
        ("warning", pa.string()),
        ("cached", pa.bool_()),
    ]
)
# A result's key is (_row, model, _variant, sample): the model by name, so a model list
# edited between runs does not shuffle earlier results; _variant is the --sweep combination.
KEY_SCHEMA = pa.schema([("_row", pa.int64()), ("_variant", pa.int32()), ("sample", pa.int32())])
KEY_NAMES = ("_row", "model", "_variant", "sample")
# Parts also record when each result was known, for `batcher status`.
# Structured output (--schema / --json) adds these, then one typed column per property.
STRUCTURED_SCHEMA = pa.schema([("reasks", pa.int32()), ("parsed", pa.string())])
STREAM_FIELD = pa.field("ttft_s", pa.float64())  # --stream adds it after latency_s
PART_SCHEMA = pa.schema(
    [*KEY_SCHEMA, *OUTPUT_SCHEMA, STREAM_FIELD, *STRUCTURED_SCHEMA, ("_done_at", pa.float64())]
)
OUTPUT_NAMES = frozenset(OUTPUT_SCHEMA.names) | {"sample"} | frozenset(STRUCTURED_SCHEMA.names)


def result_columns(results: Iterable[Result]) -> dict[str, list[Any]]:
    """Results as lists of column values, in PART_SCHEMA order."""
    cols: dict[str, list[Any]] = {name: [] for name in PART_SCHEMA.names}
    for r in results:
        reply, usage = r.reply, r.usage
        cols["_row"].append(r.row_index)
        cols["sample"].append(r.sample)
        cols["_variant"].append(r.variant)
        cols["id"].append(r.id)
        cols["model"].append(r.model)
        cols["status"].append(r.status.value)
        cols["prompt_tokens"].append(usage.prompt_tokens)
        cols["completion_tokens"].append(usage.completion_tokens)
        cols["total_tokens"].append(usage.total_tokens)
        cols["cost_usd"].append(usage.cost_usd)
        cols["latency_s"].append(r.latency_s)
        cols["ttft_s"].append(r.ttft_s)
        cols["attempts"].append(r.attempts)
        cols["http_status"].append(r.http_status)
        cols["error_type"].append(r.error_type)
        cols["error_message"].append(r.error_message)
        cols["request_hash"].append(r.request_hash)
        cols["cached"].append(r.cached)
        cols["reasks"].append(r.reasks)
        cols["parsed"].append(None if r.parsed is None else orjson.dumps(r.parsed).decode())
        cols["_done_at"].append(r.finished_at)
        if reply is None:
            for name in REPLY_FIELDS:
                cols[name].append(None)
            continue
        cols["content"].append(reply.content)
        cols["finish_reason"].append(reply.finish_reason)
        cols["refusal"].append(reply.refusal)
        cols["reasoning"].append(reply.reasoning)
        cols["tool_calls"].append(reply.tool_calls)
        cols["response_id"].append(reply.response_id)
        cols["response_model"].append(reply.response_model)
        cols["created"].append(reply.created)
        cols["search_results"].append(reply.search_results)
        cols["warning"].append(reply.warning)
    return cols


REPLY_FIELDS = (
    "content",
    "finish_reason",
    "refusal",
    "reasoning",
    "tool_calls",
    "response_id",
    "response_model",
    "created",
    "search_results",
    "warning",
)


def results_table(results: Iterable[Result]) -> pa.Table:
    cols = result_columns(results)
    arrays = [pa.array(cols[f.name], type=_value_type(f.type)).cast(f.type) for f in PART_SCHEMA]
    return pa.Table.from_arrays(arrays, schema=PART_SCHEMA)


def _value_type(t: pa.DataType) -> pa.DataType:
    """The type of the Python values: `created` holds unix seconds."""
    return pa.timestamp("s", tz="UTC") if pa.types.is_timestamp(t) else t


class PartWriter:
    """Buffers results and writes them as atomic, durable Parquet parts."""

    def __init__(self, job_dir: Path, *, first_part: int = 0) -> None:
        self.job_dir = job_dir
        self._next = first_part
        self._buffer: list[Result] = []
        self.written = 0
        self.row_ranges: dict[str, tuple[int, int]] = {}  # part name -> lowest, highest _row

    @property
    def pending(self) -> int:
        return len(self._buffer)

    def add(self, result: Result) -> None:
        self._buffer.append(result)

    def extend(self, results: list[Result]) -> None:
        self._buffer.extend(results)

    def take(self) -> tuple[list[Result], Path] | None:
        """The buffered results and the part they go to; the buffer starts afresh."""
        if not self._buffer:
            return None
        batch, self._buffer = self._buffer, []
        path = self.job_dir / f"part-{self._next:06d}.parquet"
        self._next += 1
        return batch, path

    def write(self, batch: list[Result], path: Path) -> None:
        """Write taken results (safe in a worker thread while new results are added)."""
        write_atomic(results_table(batch), path)
        rows = [r.row_index for r in batch]
        self.row_ranges[path.name] = (min(rows), max(rows))
        self.written += len(batch)

    def flush(self) -> Path | None:
        taken = self.take()
        if taken is not None:
            self.write(*taken)
        return taken[1] if taken else None


def write_atomic(table: pa.Table, path: Path) -> None:
    """Write, fsync and rename, so `path` holds a whole file or nothing."""
    tmp = path.with_name(f".{path.name}.tmp")
    # Parts are the job's own scratch files, read once at the end: the cheapest encoding to
    # write (a third of zstd with dictionaries), with statistics for `_row` alone.
    pq.write_table(
        table, tmp, compression="snappy", use_dictionary=False, write_statistics=["_row"]
    )
    fsync_file(tmp)
    os.replace(tmp, path)
    fsync_dir(path.parent)


def fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # not possible on every platform
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def part_files(job_dir: Path) -> list[Path]:
    return sorted(job_dir.glob("part-*.parquet"))


# ---------------------------------------------------------------------------------------
# Assembly


@dataclass(frozen=True, slots=True)
class RequestGroup:
    """One input batch: its rows' own columns and the requests made from them."""

    start: int  # row index of the first row
    stop: int  # one past the last row
    columns: pa.Table | None  # the input's kept columns, one row per input row
    requests: Callable[[], list[Request]]  # built only when the results cannot stand in
    default_keys: bool = False  # every row: one request per (job model, combination, sample)


@dataclass(frozen=True, slots=True)
class KeySpace:
    """The keys of a row with the default requests: models x combinations x samples, in
    request order (model, then combination, then sample)."""

    models: tuple[str, ...]
    variants: int = 1
    samples: int = 1

    @property
    def per_row(self) -> int:
        return len(self.models) * self.variants * self.samples


@dataclass(frozen=True)
class Layout:
    """The columns of OUT: results, structured output, typed schema columns, input columns."""

    input_schema: pa.Schema | None = None
    with_sample: bool = False
    structured: bool = False
    streamed: bool = False
    typed: tuple[tuple[str, str, pa.DataType], ...] = ()  # (property, column, type)
    params: tuple[tuple[str, pa.DataType, tuple], ...] = ()  # param_<key>, type, grid values

    def input_name(self, name: str) -> str:
        return f"input_{name}" if name in OUTPUT_NAMES else name

    def schema(self) -> pa.Schema:
        fields = list(OUTPUT_SCHEMA)
        if self.streamed:
            fields.insert(fields.index(OUTPUT_SCHEMA.field("latency_s")) + 1, STREAM_FIELD)
        if self.with_sample:
            fields.insert(2, pa.field("sample", pa.int32()))
        at = 3 if self.with_sample else 2
        fields[at:at] = [pa.field(name, kind) for name, kind, _ in self.params]
        if self.structured:
            fields += list(STRUCTURED_SCHEMA)
            fields += [pa.field(column, kind) for _, column, kind in self.typed]
        for f in self.input_schema or []:
            fields.append(pa.field(self.input_name(f.name), f.type))
        return pa.schema(fields)


class Assembler:
    """Joins each input batch's requests with their results from the parts, in order."""

    def __init__(
        self,
        job_dir: Path,
        layout: Layout,
        *,
        not_sent_reason: str,
        keys: KeySpace | None = None,
        row_ranges: Mapping[str, tuple[int, int]] | None = None,
    ) -> None:
        self.layout = layout
        self.keys = keys
        self._models = pa.array(keys.models if keys else (), pa.string())
        self.schema = layout.schema()
        self.not_sent_reason = not_sent_reason
        # Each part's row range: a window of rows then opens only the parts that overlap it
        # (parts are written roughly in input order). Ranges the writer kept are used as
        # they are; other parts (earlier runs) have theirs read from the footer. Reading a
        # thousand footers leaves ~50 MiB of the heap behind, so none are read needlessly.
        known = row_ranges or {}
        self._parts = [
            (i, path, *(known.get(path.name) or _row_range(path)))
            for i, path in enumerate(part_files(job_dir))
        ]
        self._cache: dict[int, pa.Table] = {}

    def table(self, group: RequestGroup) -> pa.Table:
        found = self._results(group.start, group.stop)
        results = found.select(
            [*OUTPUT_SCHEMA.names, "ttft_s", "sample", "_variant", *STRUCTURED_SCHEMA.names]
        )
        order = self._default_order(found, group) if group.default_keys else None
        if order is not None:  # the results are exactly the window's requests: sort them
            out = results.take(order)
            per_row = self.keys.per_row  # type: ignore[union-attr]
            rows = pa.array(np.repeat(np.arange(group.stop - group.start), per_row))
        else:
            out, rows = self._joined(found, results, group)
        columns = {name: out.column(name) for name in out.column_names}
        for name, kind, values in self.layout.params:
            picks = pa.array(values, type=kind).take(out.column("_variant"))
            columns[name] = picks
        if self.layout.typed:
            parsed = [None if v is None else orjson.loads(v) for v in out["parsed"].to_pylist()]
            columns.update(typed_columns(parsed, list(self.layout.typed)))
        if group.columns is not None:
            inputs = group.columns.take(rows)
            for name, col in zip(inputs.column_names, inputs.columns):
                columns[self.layout.input_name(name)] = col
        return pa.Table.from_arrays([columns[f.name] for f in self.schema], schema=self.schema)

    def _default_order(self, found: pa.Table, group: RequestGroup) -> pa.Array | None:
        """The request order of `found` when it holds each default key of the window once
        and nothing else (the usual case: no Request needs building), else None.

        Each key maps to its position among the window's requests; the results are exactly
        the requests when those positions are a permutation of 0..n-1."""
        keys = self.keys
        n = (group.stop - group.start) * (keys.per_row if keys else 0)
        if keys is None or n == 0 or found.num_rows != n:
            return None
        if any(found.column(name).null_count for name in ("_row", "_variant", "sample")):
            return None  # parts of an older layout
        rank = pc.index_in(found.column("model"), value_set=self._models)
        if rank.null_count:  # a model this job does not ask
            return None
        variant = found.column("_variant").to_numpy().astype(np.int64)
        sample = found.column("sample").to_numpy().astype(np.int64)
        if variant.min() < 0 or variant.max() >= keys.variants:
            return None
        if sample.min() < 0 or sample.max() >= keys.samples:
            return None
        row = found.column("_row").to_numpy() - group.start
        position = (row * len(keys.models) + rank.to_numpy()) * keys.variants + variant
        position = position * keys.samples + sample
        if np.bincount(position, minlength=n).max() != 1:  # a key twice (and so one missing)
            return None
        order = np.empty(n, dtype=np.int64)
        order[position] = np.arange(n)
        return pa.array(order)

    def _joined(
        self, found: pa.Table, results: pa.Table, group: RequestGroup
    ) -> tuple[pa.Table, pa.Array]:
        """The window's requests, each with its newest result or a `not_sent` row."""
        requests = group.requests()
        keys = _latest_positions(found)
        missing: list[Request] = []
        take: list[int] = []
        n_found = found.num_rows
        for request in requests:
            pos = keys.get(request.key)
            if pos is None:
                pos = n_found + len(missing)
                missing.append(request)
            take.append(pos)
        if missing:
            filler = results_table(self._not_sent(r) for r in missing)
            results = pa.concat_tables([results, filler.select(results.column_names)])
        rows = pa.array([r.row_index - group.start for r in requests], type=pa.int64())
        return results.take(pa.array(take, type=pa.int64())), rows

    def _results(self, start: int, stop: int) -> pa.Table:
        """Every stored result of rows [start, stop), with the number of its part."""
        tables = []
        for number, path, low, high in self._parts:
            if high < start or low >= stop:
                continue
            table = self._part(number, path)
            rows = table.column("_row")
            inside = pc.and_(pc.greater_equal(rows, start), pc.less(rows, stop))
            table = table.filter(inside)
            tables.append(
                table.append_column("_part", pa.array([number] * table.num_rows, pa.int32()))
            )
            if high < stop:  # wholly used: later windows will not need it
                self._cache.pop(number, None)
        if not tables:
            return PART_SCHEMA.empty_table().append_column("_part", pa.array([], pa.int32()))
        return pa.concat_tables(tables)

    def _part(self, number: int, path: Path) -> pa.Table:
        if number not in self._cache:
            table = pq.ParquetFile(path).read()  # not read_table: it loads pyarrow.dataset
            missing = [f for f in PART_SCHEMA if f.name not in table.column_names]
            for f in missing:  # written by an older layout
                table = table.append_column(f, pa.nulls(table.num_rows, f.type))
            self._cache[number] = table.select(PART_SCHEMA.names).cast(PART_SCHEMA)
        return self._cache[number]

    def _not_sent(self, request: Request) -> Result:
        return Result(
            row_index=request.row_index,
            model_index=request.model_index,
            sample=request.sample,
            variant=request.variant,
            id=request.row_id,
            model=request.model,
            status=Status.ERROR,
            request_hash=request.request_hash or None,
            error_type=ErrorType.NOT_SENT.value,
            error_message=self.not_sent_reason,
        )


def _row_range(path: Path) -> tuple[int, int]:
    """The smallest and largest `_row` of a part, from its footer statistics."""
    meta = pq.read_metadata(path)
    column = meta.schema.names.index("_row")
    low, high = None, None
    for i in range(meta.num_row_groups):
        stats = meta.row_group(i).column(column).statistics
        if stats is None or not stats.has_min_max:
            return 0, 2**62  # no statistics: look at it for every window
        low = stats.min if low is None else min(low, stats.min)
        high = stats.max if high is None else max(high, stats.max)
    return (low, high) if low is not None else (1, 0)


def _latest_positions(found: pa.Table) -> dict[tuple[int, str, int, int], int]:
    """Key -> row position, the newest part winning when a key was written twice."""
    parts = found.column("_part").to_pylist()
    best: dict[tuple[int, str, int, int], int] = {}
    keys = zip(*(found.column(name).to_pylist() for name in KEY_NAMES))
    for i, key in enumerate(keys):
        j = best.get(key)
        if j is None or parts[i] >= parts[j]:
            best[key] = i
    return best


def write_output(
    path: Path,
    schema: pa.Schema,
    tables: Iterable[pa.Table],
    metadata: Callable[[], dict[str, bytes]] | None = None,
) -> int:
    """Write the tables to `path` atomically; `metadata()` is asked for last. Return rows."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    rows = 0
    try:
        with pq.ParquetWriter(tmp, schema, compression="zstd") as writer:
            for table in tables:
                writer.write_table(table)
                rows += table.num_rows
            if metadata is not None:
                writer.add_key_value_metadata(metadata())
        fsync_file(tmp)
        os.replace(tmp, path)
        fsync_dir(path.parent)
    finally:
        if tmp.exists():
            tmp.unlink()
    return rows

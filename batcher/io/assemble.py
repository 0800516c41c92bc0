"""OUT from the parts: every request of the job with its newest result, in input order.

Window by window (an input batch of rows), the spool's requests are joined with the
results the parts hold for those rows: one vectorised lookup on a dense key per request
(row, model, sweep combination, sample), the newest part winning a key written twice. A
request with no result becomes a `not_sent` error row. The input's kept columns, the
`param_<key>` columns and the typed schema columns are added, and OUT (a file or a dataset
folder, `batcher.io.output`) is written whole or not at all. Memory stays at a window or two.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from batcher.io import spool
from batcher.io.check import Fingerprint
from batcher.io.columns import OUTPUT_SCHEMA, PART_SCHEMA, STRUCTURED_SCHEMA, Layout
from batcher.io.input_schema import rows_table
from batcher.io.inputs import InputFile, InputSet, read_batches
from batcher.io.jobdir import JobDir
from batcher.io.output import write_output
from batcher.structured.columns import typed_columns
from batcher.types import ErrorType, Status

# The columns of a result that OUT takes (its key's `_variant` picks the param_ values).
RESULT_NAMES = [
    *OUTPUT_SCHEMA.names,
    "ttft_s",
    "sample",
    "_variant",
    *STRUCTURED_SCHEMA.names,
    "mode",
]
RESULT_SCHEMA = pa.schema([PART_SCHEMA.field(name) for name in RESULT_NAMES])


class Assembler:
    """Joins each window of requests with their results from the parts, in order.

    `models` is the job's model list, the rows' own models included, in the order of the
    requests' `_model_index`; `variants` and `samples` the size of the sweep grid and the
    samples per combination. `row_ranges` are the row ranges of the parts this run wrote
    (other parts have theirs read from their footers)."""

    def __init__(
        self,
        job_dir: JobDir,
        layout: Layout,
        *,
        models: Sequence[str],
        variants: int,
        samples: int,
        not_sent_reason: str,
        row_ranges: Mapping[str, tuple[int, int]] | None = None,
    ) -> None:
        self.layout = layout
        self.schema = layout.schema()
        self.not_sent_reason = not_sent_reason
        self._models = pa.array(models, pa.string())
        self._shape = (max(1, len(models)), variants, samples)
        # A window opens only the parts that overlap it (parts are written roughly in input
        # order). Reading a thousand footers leaves ~50 MiB of the heap behind, so the ranges
        # of this run's parts come from the writer.
        known = row_ranges or {}
        self._parts = [
            (i, path, *(known.get(path.name) or _row_range(path)))
            for i, path in enumerate(job_dir.parts())
        ]
        self._cache: dict[int, pa.Table] = {}

    def table(self, requests: pa.Table, start: int, stop: int, inputs: pa.Table | None) -> pa.Table:
        """The OUT rows of rows [start, stop): `requests` are the spool's rows of the window,
        `inputs` the input's kept columns, one row per input row."""
        found = self._results(start, stop)
        found_keys, at = self._newest(found, start)
        wanted = self._keys(
            requests.column("_row"),
            requests.column("_model_index"),
            requests.column("_variant"),
            requests.column("sample"),
            start,
        )
        slot = np.minimum(np.searchsorted(found_keys, wanted), max(0, len(found_keys) - 1))
        hit = found_keys[slot] == wanted if len(found_keys) else np.zeros(len(wanted), bool)
        take = np.where(hit, at[slot] if len(at) else 0, found.num_rows + np.cumsum(~hit) - 1)
        missing = requests.filter(pa.array(~hit))
        results = found.select(RESULT_NAMES)
        if missing.num_rows:
            results = pa.concat_tables([results, self._not_sent(missing)])
        out = results.take(pa.array(take, pa.int64()))
        columns = {name: out.column(name) for name in out.column_names}
        for name, kind, values in self.layout.params:
            columns[name] = pa.array(values, type=kind).take(out.column("_variant"))
        if self.layout.typed:
            parsed = [None if v is None else orjson.loads(v) for v in out["parsed"].to_pylist()]
            columns.update(typed_columns(parsed, list(self.layout.typed)))
        if inputs is not None:
            rows = pc.subtract(requests.column("_row"), start)
            picked = inputs.take(rows)
            for name, col in zip(picked.column_names, picked.columns):
                columns[self.layout.input_name(name)] = col
        return pa.Table.from_arrays([columns[f.name] for f in self.schema], schema=self.schema)

    def _keys(self, rows, models, variants, samples, start: int) -> np.ndarray:
        """The dense int64 key of each (row, model, combination, sample) in the window."""
        m, v, s = self._shape
        row = _ints(rows) - start
        return ((row * m + _ints(models)) * v + _ints(variants)) * s + _ints(samples)

    def _newest(self, found: pa.Table, start: int) -> tuple[np.ndarray, np.ndarray]:
        """The sorted keys of the window's results and, per key, the position of its newest
        result; results of a model, combination or sample this job does not have are left
        out."""
        _, v, s = self._shape
        model = pc.index_in(found.column("model"), value_set=self._models)
        keep = pc.and_(pc.is_valid(model), pc.is_valid(found.column("_variant")))
        keep = pc.and_(keep, pc.is_valid(found.column("sample")))
        variant = found.column("_variant").fill_null(-1)
        sample = found.column("sample").fill_null(-1)
        keep = pc.and_(keep, pc.and_(pc.less(variant, v), pc.greater_equal(variant, 0)))
        keep = pc.and_(keep, pc.and_(pc.less(sample, s), pc.greater_equal(sample, 0)))
        inside = np.flatnonzero(_bools(keep))
        if not len(inside):
            return np.zeros(0, np.int64), np.zeros(0, np.int64)
        keys = self._keys(found.column("_row"), model.fill_null(0), variant, sample, start)[inside]
        part = _ints(found.column("_part"))[inside]
        order = np.lexsort((part, keys))  # by key, then by part: the newest last
        keys, positions = keys[order], inside[order]
        last = np.ones(len(keys), dtype=bool)
        last[:-1] = keys[1:] != keys[:-1]
        return keys[last], positions[last]

    def _not_sent(self, missing: pa.Table) -> pa.Table:
        """`not_sent` error rows for requests without a result."""
        n = missing.num_rows
        columns = {f.name: pa.nulls(n, f.type) for f in RESULT_SCHEMA}
        for name in ("id", "model", "request_hash", "sample", "_variant"):
            columns[name] = missing.column(name)
        columns["status"] = pa.array([Status.ERROR.value] * n, pa.string())
        columns["error_type"] = pa.array([ErrorType.NOT_SENT.value] * n, pa.string())
        columns["error_message"] = pa.array([self.not_sent_reason] * n, pa.string())
        for name in ("prompt_tokens", "completion_tokens", "total_tokens", "attempts", "reasks"):
            columns[name] = pa.array(np.zeros(n, np.int64)).cast(RESULT_SCHEMA.field(name).type)
        columns["cached"] = pa.array(np.zeros(n, bool))
        return pa.Table.from_arrays([columns[f.name] for f in RESULT_SCHEMA], schema=RESULT_SCHEMA)

    def _results(self, start: int, stop: int) -> pa.Table:
        """Every stored result of rows [start, stop), with the number of its part."""
        tables = []
        for number, path, low, high in self._parts:
            if high < start or low >= stop:
                continue
            table = self._part(number, path)
            rows = table.column("_row")
            table = table.filter(pc.and_(pc.greater_equal(rows, start), pc.less(rows, stop)))
            part = pa.array(np.full(table.num_rows, number, np.int32))
            tables.append(table.append_column("_part", part))
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


def _ints(column: pa.ChunkedArray | pa.Array) -> np.ndarray:
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    return column.to_numpy(zero_copy_only=False).astype(np.int64, copy=False)


def _bools(column: pa.ChunkedArray | pa.Array) -> np.ndarray:
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    return column.fill_null(False).to_numpy(zero_copy_only=False)


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


def assemble(
    job_dir: JobDir,
    *,
    source: InputFile | InputSet,
    limit: int | None,
    schema: pa.Schema,
    keep: list[str] | None,
    layout: Layout,
    models: Sequence[str],
    variants: int,
    samples: int,
    not_sent_reason: str,
    row_ranges: Mapping[str, tuple[int, int]],
    finish: Callable[[pa.Table], pa.Table],
    metadata: Callable[[], dict[str, bytes]],
    fingerprint: Fingerprint | None = None,
) -> None:
    """Write OUT: the spool's requests window by window, with their results, the input's
    `keep` columns (read again from `source`, whose inferred `schema` the checking pass
    found) and whatever `finish` adds to each window (costs, counts).

    The input read again must be the one the checking pass read (its `fingerprint`):
    otherwise OUT is not written, and `InputError` says the file changed."""
    assembler = Assembler(
        job_dir,
        layout,
        models=models,
        variants=variants,
        samples=samples,
        not_sent_reason=not_sent_reason,
        row_ranges=row_ranges,
    )
    windows = spool.Windows(job_dir.spool)

    def tables() -> Iterator[pa.Table]:
        try:
            if keep is None:  # nothing to take from the input: the spool alone
                for start, stop in spool.row_windows(job_dir.spool):
                    requests = windows.take(start, stop)
                    yield finish(assembler.table(requests, start, stop, None))
                return
            shown = source.name
            if fingerprint is not None and not fingerprint.same_file(Fingerprint.stat(source)):
                raise fingerprint.changed(shown)
            digest = hashlib.blake2b(digest_size=16)
            for batch in read_batches(source, limit=limit, digest=digest):
                start, stop = batch.start, batch.start + len(batch.rows)
                inputs = rows_table(batch, schema).select(keep)
                yield finish(assembler.table(windows.take(start, stop), start, stop, inputs))
            if fingerprint is not None and digest.hexdigest() != fingerprint.digest:
                raise fingerprint.changed(shown)  # before OUT is renamed into place
        finally:
            windows.close()

    write_output(job_dir.output, layout.schema(), tables(), metadata)

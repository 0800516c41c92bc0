"""The checking pass: every row read and built into its requests before anything is sent.

A job that would fail at row 900,000 spends nothing: a bad row raises `InputError` here
(unless `--on-bad-row skip`), ids must be unique, and earlier results (a rerun) must match
the requests this run makes. Each request is built, serialised and hashed once, here, and
handed to a sink (the job's request spool, a dry run's sample, estimate's token counter).
The pass also infers the schema of the input's own columns and counts what the job holds.
"""

from __future__ import annotations

import hashlib
import os
from array import array
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

from batcher.errors import InputError, UsageError, os_problem, quote
from batcher.io.input_schema import SchemaBuilder
from batcher.io.inputs import InputFile, InputSet, RowBatch, file_stat, read_batches
from batcher.io.resume import DoneIndex
from batcher.io.rows import RequestBuilder, RequestSpec, row_id_of, unread_id
from batcher.io.templates import RowProblem
from batcher.types import Request

DUPLICATE_CHUNK = 1000  # colliding id hashes looked up per rescan

# Receives each input batch's requests and, per request, whether it still has to be sent.
RequestSink = Callable[[RowBatch, list[Request], list[bool]], None]


@dataclass(frozen=True, slots=True)
class ModelCount:
    requests: int = 0
    est_prompt_tokens: int = 0
    max_tokens_total: int | None = None  # None when some request has no max_tokens


@dataclass(frozen=True, slots=True)
class Fingerprint:
    """What the input was when the checking pass read it: a later read must match."""

    size: int
    mtime_ns: int
    digest: str  # BLAKE2b of every byte the rows came from

    @classmethod
    def stat(cls, source: InputFile | InputSet, digest: str = "") -> Fingerprint:
        """The input's size and newest mtime (over every file of a set)."""
        files = source.files if isinstance(source, InputSet) else (source,)
        stats = [file_stat(f.path, f.fs) for f in files]
        return cls(sum(size for size, _ in stats), max(t for _, t in stats), digest)

    def same_file(self, other: Fingerprint) -> bool:
        return (self.size, self.mtime_ns) == (other.size, other.mtime_ns)

    def changed(self, source: str) -> InputError:
        return InputError(
            f"{source}: changed while the job ran, so its rows are no longer the rows that "
            "were sent; restore it and run the same command again to write the output, or "
            "use --fresh to start over"
        )


@dataclass(frozen=True, slots=True)
class InputScan:
    """What the checking pass found: counts, estimates and the input's column schema."""

    rows: int
    requests: int  # including those of bad rows
    bad_rows: int
    est_prompt_tokens: int  # over the requests of good rows
    max_tokens_total: int | None  # sum when every good request has max_tokens, else None
    per_model: Mapping[str, ModelCount]  # in model_index order
    schema: pa.Schema
    columns: tuple[str, ...]
    done: int = 0  # requests whose earlier result stands (not sent again)
    fingerprint: Fingerprint | None = None

    def schema_of(self, names: list[str]) -> pa.Schema:
        """The inferred schema of these input columns."""
        return pa.schema([self.schema.field(name) for name in names])

    @property
    def models(self) -> tuple[str, ...]:
        """Every model of the job, the rows' own included, in model_index order."""
        return tuple(self.per_model)


def check_input(
    spec: RequestSpec,
    path: str | os.PathLike[str] | InputFile | InputSet,
    *,
    limit: int | None = None,
    earlier: DoneIndex | None = None,
    retry_errors: bool = False,
    sink: RequestSink | None = None,
    tpm: Callable[[str], float | None] | None = None,
) -> InputScan:
    """Read and check every row, build its requests and hand them to `sink`.

    Raises `InputError` for a bad row (unless on_bad_row="skip"), duplicate ids and every
    file-level problem, and `UsageError` when an earlier result was made from a different
    row or settings. A request counts as done when `earlier` holds its result (an ok one,
    or an error unless `retry_errors` or the error is one every request met). With `tpm`
    (a model's tokens-per-minute limit), a request that needs more than a minute's tokens
    is an `InputError`: it could never be sent."""
    file = path if isinstance(path, (InputFile, InputSet)) else InputFile.of(path)
    source = file.name
    builder = RequestBuilder(spec, source)
    schema = SchemaBuilder()
    tally = _Tally()
    ids = array("q")
    done = 0
    before = _stat(file, source)
    digest = hashlib.blake2b(digest_size=16)
    for batch in read_batches(file, limit=limit, digest=digest):
        schema.add(batch)
        requests: list[Request] = []
        for i in range(len(batch.rows)):
            row = builder.requests(batch, i)
            if row[0].bad_input is not None and spec.on_bad_row == "error":
                raise InputError(row[0].bad_input)
            if tpm is not None and row[0].bad_input is None:
                _check_tpm(row, tpm, batch.place(i))
            tally.add(row)
            requests += row
        ids.extend(id_hash(row_id) for row_id in builder.ids)
        builder.ids.clear()
        if earlier is not None and len(earlier):
            todo = [not earlier.is_done(r, retry_errors=retry_errors) for r in requests]
            done += len(todo) - sum(todo)
        else:
            todo = [True] * len(requests)
        if sink is not None:
            sink(batch, requests, todo)
    if earlier is not None and earlier.not_asked():
        raise earlier.dropping()
    after = _stat(file, source)
    if not before.same_file(after):
        raise InputError(f"{source}: changed while it was being read; run again once it is whole")
    _check_duplicates(ids, lambda: _ids(spec, file, limit))
    found = schema.schema()
    missing = [name for name in spec.body_columns if name not in found.names]
    if missing:
        raise UsageError(
            f"--body-columns: no input column {quote(missing[0])} "
            f"(columns: {', '.join(found.names)})"
        )
    return InputScan(
        rows=tally.rows,
        requests=tally.requests,
        bad_rows=tally.bad_rows,
        est_prompt_tokens=tally.tokens,
        max_tokens_total=tally.max_total(),
        per_model=tally.per_model(list(builder.models)),
        schema=found,
        columns=tuple(found.names),
        done=done,
        fingerprint=Fingerprint(before.size, before.mtime_ns, digest.hexdigest()),
    )


def _stat(file: InputFile | InputSet, source: str) -> Fingerprint:
    try:
        return Fingerprint.stat(file)
    except OSError as exc:
        raise InputError(f"{source}: {os_problem(exc)}") from None


def _check_tpm(requests: list[Request], tpm: Callable[[str], float | None], where: str) -> None:
    for request in requests:
        limit = tpm(request.model)
        charge = request.est_prompt_tokens + request.completion_bound
        if limit is not None and charge > limit:
            raise InputError(
                f"{where}: the request needs ~{charge} tokens (~{request.est_prompt_tokens} "
                f"in, up to {request.completion_bound} out), more than the {limit:g} tokens a "
                "minute --tpm allows: it could never be sent; raise --tpm or lower --max-tokens"
            )


def id_hash(row_id: str) -> int:
    """A signed 64-bit hash of an id, for duplicate detection in flat memory."""
    digest = hashlib.blake2b(row_id.encode("utf-8", "surrogatepass"), digest_size=8).digest()
    return int.from_bytes(digest, "little", signed=True)


def _ids(spec: RequestSpec, path: InputFile | InputSet, limit: int | None) -> Iterator[Any]:
    """(id, file, where) of every row, in input order (a row whose id cannot be read:
    "(line 7)", as the builder names it)."""
    for batch in read_batches(path, limit=limit):
        for i, row in enumerate(batch.rows):
            where = batch.where(i)
            try:
                if i in batch.bad:
                    raise RowProblem(batch.bad[i])
                yield row_id_of(row, batch.start + i, spec.id_column), batch.source, where
            except RowProblem:
                yield unread_id(batch, i, path.name), batch.source, where


def _check_duplicates(hashes: array, rescan: Callable[[], Iterator[Any]]) -> None:
    """Sort the id hashes; only if two collide, read the ids again to name both lines."""
    if len(hashes) < 2:
        return
    ordered = np.frombuffer(hashes, dtype=np.int64)
    ordered.sort()  # in place: 8 bytes per row, no copy
    same = ordered[1:][ordered[1:] == ordered[:-1]]
    colliding = np.unique(same).tolist()
    for start in range(0, len(colliding), DUPLICATE_CHUNK):
        wanted = set(colliding[start : start + DUPLICATE_CHUNK])
        first: dict[str, tuple[str, str]] = {}
        for row_id, file, where in rescan():
            if id_hash(row_id) not in wanted:
                continue
            if row_id in first:
                was_in, was_at = first[row_id]
                earlier = was_at if was_in == file else f"{was_in}: {was_at}"
                raise InputError(
                    f"{file}: {where}: duplicate id {quote(row_id)} (first at {earlier})"
                )
            first[row_id] = (file, where)


class _Tally:
    """Counts of the pass, per model too."""

    def __init__(self) -> None:
        self.rows = self.requests = self.bad_rows = self.tokens = 0
        self.max_sum = 0
        self.all_bounded = True
        self.good = 0
        self.models: dict[str, list[Any]] = {}  # name -> [requests, tokens, max sum or None]

    def add(self, requests: list[Request]) -> None:
        self.rows += 1
        self.requests += len(requests)
        if requests[0].bad_input is not None:
            self.bad_rows += 1
            return
        for r in requests:
            self.good += 1
            self.tokens += r.est_prompt_tokens
            counts = self.models.setdefault(r.model, [0, 0, 0])
            counts[0] += 1
            counts[1] += r.est_prompt_tokens
            if r.max_tokens is None:
                self.all_bounded = False
                counts[2] = None
            else:
                self.max_sum += r.max_tokens
                if counts[2] is not None:
                    counts[2] += r.max_tokens

    def max_total(self) -> int | None:
        return self.max_sum if self.all_bounded and self.good else None

    def per_model(self, names: list[str]) -> dict[str, ModelCount]:
        out = {}
        for name in names:
            n, tokens, bound = self.models.get(name, (0, 0, None))
            out[name] = ModelCount(n, tokens, bound if n else None)
        return out

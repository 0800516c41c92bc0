"""What earlier runs already finished, so a rerun sends only the rest.

A result is identified by its key (row index, model name, sample) and checked by its
fingerprint (request hash and row id): never by prompt text, so repeated prompts stay
distinct rows, and a changed input or setting is noticed instead of silently reused.
The index holds two 8-byte integers and a flag per result, sorted for binary search.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from batcher.errors import UsageError
from batcher.io.columns import PART_SCHEMA
from batcher.io.jobdir import JobDir, write_atomic
from batcher.io.output import exists as output_exists
from batcher.io.output import iter_output, written_at
from batcher.io.output import metadata as output_metadata
from batcher.io.output import schema as output_schema
from batcher.types import JOB_FATAL, Request

log = logging.getLogger(__name__)

INDEX_COLUMNS = [
    "_row",
    "model",
    "_variant",
    "sample",
    "id",
    "request_hash",
    "status",
    "error_type",
]


def digest64(*parts: object) -> int:
    """A stable signed 64-bit digest of the parts (stable across processes, unlike hash())."""
    text = "\0".join(str(p) for p in parts).encode("utf-8", "surrogatepass")
    return int.from_bytes(hashlib.blake2b(text, digest_size=8).digest(), "little", signed=True)


def request_key(request: Request) -> int:
    return digest64(*request.key)


def request_print(request: Request) -> int:
    return digest64(request.request_hash or "", request.row_id)


@dataclass(frozen=True)
class DoneIndex:
    """Sorted keys of durable results, their fingerprints and whether each was ok."""

    keys: np.ndarray
    prints: np.ndarray
    ok: np.ndarray
    redo: np.ndarray  # errors every request met (a bad key): sent again once it is fixed
    source: str = ""  # where the results are (the job folder or OUT), for messages
    asked: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=bool))  # by this run

    def __post_init__(self) -> None:
        if len(self.asked) != len(self.keys):
            object.__setattr__(self, "asked", np.zeros(len(self.keys), dtype=bool))

    @classmethod
    def empty(cls) -> DoneIndex:
        none = np.zeros(0, dtype=np.int64)
        return cls(none, none, np.zeros(0, dtype=bool), np.zeros(0, dtype=bool))

    def not_asked(self) -> int:
        """Earlier results that no request of this run has looked up (so far)."""
        return len(self.keys) - int(self.asked.sum())

    def dropping(self) -> UsageError:
        """The error for a run that would leave earlier results out of OUT."""
        return UsageError(
            f"{self.source}: holds {self.not_asked()} earlier results that this run does not "
            "ask for (a smaller --limit, fewer models, samples or sweep values); run the "
            "command that made them to finish the job, or add --fresh to start over without "
            "them"
        )

    @classmethod
    def build(cls, tables: Iterable[pa.Table]) -> DoneIndex:
        """From part tables in write order: a key written twice keeps its newest result."""
        chunks: list[tuple[np.ndarray, ...]] = []  # numpy per part: 18 bytes a result
        for table in tables:
            cols = [table.column(n).to_pylist() for n in INDEX_COLUMNS]
            keys, prints, oks, redo = [], [], [], []
            for row, model, variant, sample, row_id, rhash, status, error_type in zip(*cols):
                keys.append(digest64(row, model, variant, sample))
                prints.append(digest64(rhash or "", row_id))
                # an error every request would have met (bad key, no quota) is not done:
                # the rerun after the fix sends it again
                oks.append(status == "ok")
                redo.append(error_type in JOB_FATAL)
            chunks.append(
                (
                    np.array(keys, dtype=np.int64),
                    np.array(prints, dtype=np.int64),
                    np.array(oks, dtype=bool),
                    np.array(redo, dtype=bool),
                )
            )
        if not chunks or not sum(len(c[0]) for c in chunks):
            return cls.empty()
        k, all_prints, all_ok, all_redo = (np.concatenate(c) for c in zip(*chunks))
        # newest wins: stable sort on key, then keep the last of each run
        order = np.argsort(k, kind="stable")
        k = k[order]
        last = np.ones(len(k), dtype=bool)
        last[:-1] = k[1:] != k[:-1]
        pick = order[last]
        return cls(
            k[last],
            all_prints[pick],
            all_ok[pick],
            all_redo[pick],
        )

    def __len__(self) -> int:
        return len(self.keys)

    def find(self, key: int) -> int:
        """Position of `key`, or -1."""
        i = int(np.searchsorted(self.keys, key))
        if i < len(self.keys) and self.keys[i] == key:
            return i
        return -1

    def is_done(self, request: Request, *, retry_errors: bool = False) -> bool:
        """Whether the request's earlier result stands: an ok one, or an error unless
        `retry_errors` (or the error is one every request met, which a rerun sends again).
        An earlier result made from a different row or settings is a UsageError."""
        i = self.find(request_key(request))
        if i < 0:
            return False
        self.asked[i] = True
        if self.prints[i] != request_print(request):
            raise UsageError(
                f"{self.source}: earlier results were made from a different input or settings "
                f"(first: row {request.row_index}, id {request.row_id!r}, model "
                f"{request.model!r}); run with --fresh to start over, or restore the earlier "
                "input and options"
            )
        return bool(self.ok[i]) or not (retry_errors or self.redo[i])


def load_index(job_dir: JobDir, source: str) -> DoneIndex:
    """The index of the job folder's parts. Each part is read whole, once: one that cannot
    be (a damaged page behind an intact footer) is set aside, and its results sent again."""

    def tables() -> Iterable[pa.Table]:
        for path in job_dir.healthy_parts():
            try:
                table = pq.ParquetFile(path).read()
            except (OSError, ValueError, pa.ArrowException) as exc:
                job_dir.set_aside(path, exc)
                continue
            yield table.select(INDEX_COLUMNS)

    return dataclasses.replace(DoneIndex.build(tables()), source=source)


def import_output(output: Path, job_dir: Path) -> int:
    """Turn a finished OUT into the first parts of a new job directory, to resume from.

    OUT is in input order with every row's results together, so the n-th run of equal ids
    is input row n. Rows never sent are left out: they are not done.
    Returns the number of results imported.
    """
    if output_metadata(output) is None:
        raise UsageError(
            f"{output}: exists and is not a batcher output; choose another -o, or use --fresh "
            "to replace it"
        )
    names = set(output_schema(output).names)
    imported = 0
    row, last_id = -1, object()
    seen: dict[tuple[str, int], int] = {}  # (model, sample) -> sweep combinations so far
    for number, batch in enumerate(iter_output(output)):
        ids = batch.column("id").to_pylist()
        models = batch.column("model").to_pylist()
        samples = batch.column("sample").to_pylist() if "sample" in names else [0] * len(ids)
        rows, variants = [], []
        for row_id, model, sample in zip(ids, models, samples):
            if row_id != last_id:
                row, last_id = row + 1, row_id
                seen.clear()
            variants.append(seen.get((model, sample), 0))  # OUT order: model, combination, sample
            seen[(model, sample)] = variants[-1] + 1
            rows.append(row)
        columns = {
            "_row": pa.array(rows, pa.int64()),
            "_variant": pa.array(variants, pa.int32()),
            "sample": pa.array(samples, pa.int32()),
        }
        for f in PART_SCHEMA:
            if f.name in names:
                columns.setdefault(f.name, batch.column(f.name).cast(f.type))
            else:
                columns.setdefault(f.name, pa.nulls(len(ids), f.type))
        part = pa.Table.from_pydict(columns, schema=PART_SCHEMA)
        sent = pc.invert(pc.fill_null(pc.equal(part.column("error_type"), "not_sent"), False))
        part = part.filter(sent)
        write_atomic(part, job_dir / f"part-{number:06d}.parquet")
        imported += part.num_rows
    return imported


def earlier_results(job_dir: JobDir) -> tuple[DoneIndex, bool]:
    """What earlier runs of this OUT finished, and whether it came from OUT itself.

    The job folder, unless OUT was written after its last part (a finished job whose folder
    was kept, or whose removal was cut short): then OUT, the complete record, is imported
    into a new job folder instead, as it is when there is no folder. The record of the
    batches a Batch API job submitted goes with it into the new folder: they may still run,
    or hold results not collected yet."""
    batches: dict[str, bytes] = {}
    if job_dir.exists() and _finished_after(job_dir):
        batches = job_dir.batch_record()
        if not batches:
            job_dir.remove()
    imported = False
    if (batches or not job_dir.exists()) and output_exists(job_dir.output):
        with job_dir.staging() as staging:  # all of OUT, or nothing: a kill here loses nothing
            imported = import_output(job_dir.output, staging) > 0
            for name, data in batches.items():
                (staging / name).write_bytes(data)
    if not job_dir.exists():
        return DoneIndex.empty(), False
    source = job_dir.output if imported else job_dir.path
    return load_index(job_dir, str(source)), imported


def _finished_after(job_dir: JobDir) -> bool:
    """Whether OUT is a batcher output written after every part of the job folder."""
    try:
        written = written_at(job_dir.output)
    except OSError:
        return False
    if written is None or output_metadata(job_dir.output) is None:
        return False
    parts = [p.stat().st_mtime_ns for p in job_dir.parts()]
    return bool(parts) and written >= max(parts)

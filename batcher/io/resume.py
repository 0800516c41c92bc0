"""What earlier runs already finished, so a rerun sends only the rest.

A result is identified by its key (row index, model name, sample) and checked by its
fingerprint (request hash and row id): never by prompt text, so repeated prompts stay
distinct rows, and a changed input or setting is noticed instead of silently reused.
The index holds two 8-byte integers and a flag per result, sorted for binary search.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from batcher.errors import UsageError
from batcher.io.assemble import PART_SCHEMA, part_files, write_atomic
from batcher.types import Request

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
# Errors that say every request would fail the same way: the job stopped on them, and once
# the cause is fixed (a key, a top-up, a model name) a rerun should send those rows again.
REDO_ERRORS = frozenset({"auth_error", "permission_denied", "quota_exhausted", "not_found"})


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
    redo: np.ndarray  # results to send again in any case (see REDO_ERRORS)

    @classmethod
    def empty(cls) -> DoneIndex:
        none = np.zeros(0, dtype=np.int64)
        return cls(none, none, np.zeros(0, dtype=bool), np.zeros(0, dtype=bool))

    @classmethod
    def build(cls, tables: Iterable[pa.Table]) -> DoneIndex:
        """From part tables in write order: a key written twice keeps its newest result."""
        keys: list[int] = []
        prints: list[int] = []
        oks: list[bool] = []
        redo: list[bool] = []
        for table in tables:
            cols = [table.column(n).to_pylist() for n in INDEX_COLUMNS]
            for row, model, variant, sample, row_id, rhash, status, error_type in zip(*cols):
                keys.append(digest64(row, model, variant, sample))
                prints.append(digest64(rhash or "", row_id))
                # an error every request would have met (bad key, no quota) is not done:
                # the rerun after the fix sends it again
                oks.append(status == "ok")
                redo.append(error_type in REDO_ERRORS)
        if not keys:
            return cls.empty()
        k = np.array(keys, dtype=np.int64)
        # newest wins: stable sort on key, then keep the last of each run
        order = np.argsort(k, kind="stable")
        k = k[order]
        last = np.ones(len(k), dtype=bool)
        last[:-1] = k[1:] != k[:-1]
        pick = order[last]
        return cls(
            k[last],
            np.array(prints, dtype=np.int64)[pick],
            np.array(oks, dtype=bool)[pick],
            np.array(redo, dtype=bool)[pick],
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
        i = self.find(request_key(request))
        return i >= 0 and self._done(i, retry_errors)

    def _done(self, i: int, retry_errors: bool) -> bool:
        return bool(self.ok[i]) or not (retry_errors or self.redo[i])

    def compare(
        self, requests: Iterable[Request], *, retry_errors: bool = False
    ) -> tuple[int, Request | None]:
        """How many requests are already done, and the first whose durable result was
        made from a different input row or settings (None when all match)."""
        done = 0
        for request in requests:
            i = self.find(request_key(request))
            if i < 0:
                continue
            if self.prints[i] != request_print(request):
                return done, request
            done += self._done(i, retry_errors)
        return done, None


def healthy_parts(job_dir: Path) -> list[Path]:
    """Parts whose footer reads; a damaged one is set aside (renamed hidden) and re-sent."""
    good = []
    for path in part_files(job_dir):
        try:
            meta = pq.read_metadata(path)
            if not set(INDEX_COLUMNS) <= set(meta.schema.names):
                raise ValueError("missing columns")
        except (OSError, ValueError, pa.ArrowException) as exc:
            aside = path.with_name(f".damaged-{path.name}")
            path.replace(aside)
            log.warning("%s is damaged (%s); its results will be sent again", path.name, exc)
            continue
        good.append(path)
    return good


def load_index(job_dir: Path) -> DoneIndex:
    parts = healthy_parts(job_dir)
    tables = (pq.ParquetFile(p).read(columns=INDEX_COLUMNS) for p in parts)
    return DoneIndex.build(tables)


def import_output(output: Path, job_dir: Path) -> int:
    """Turn a finished OUT into the first parts of a new job directory, to resume from.

    OUT is in input order with every row's results together, so the n-th run of equal ids
    is input row n. Rows never sent are left out: they are not done.
    Returns the number of results imported.
    """
    try:
        source = pq.ParquetFile(output)
        is_ours = b"batcher" in (source.metadata.metadata or {})
    except (OSError, pa.ArrowException):
        is_ours = False
    if not is_ours:
        raise UsageError(
            f"{output}: exists and is not a batcher output; choose another -o, or use --fresh "
            "to replace it"
        )
    names = set(source.schema_arrow.names)
    imported = 0
    row, last_id = -1, object()
    seen: dict[tuple[str, int], int] = {}  # (model, sample) -> sweep combinations so far
    for number, batch in enumerate(source.iter_batches(batch_size=65536)):
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
        for field in PART_SCHEMA:
            if field.name in names:
                columns.setdefault(field.name, batch.column(field.name).cast(field.type))
            else:
                columns.setdefault(field.name, pa.nulls(len(ids), field.type))
        part = pa.Table.from_pydict(columns, schema=PART_SCHEMA)
        sent = pc.invert(pc.fill_null(pc.equal(part.column("error_type"), "not_sent"), False))
        part = part.filter(sent)
        write_atomic(part, job_dir / f"part-{number:06d}.parquet")
        imported += part.num_rows
    return imported

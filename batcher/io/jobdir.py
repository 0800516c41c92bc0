"""The job folder `OUT.batcher/` beside an output: the one owner of its format.

```
out/run.parquet              OUT, written at the end (a file or a dataset folder: io.output)
out/.run.parquet.lock        one job at a time per OUT (flock)
out/run.parquet.batcher/     the job folder, while a job runs or after it stopped
    job.json                 settings (never a key), sizes, pid, start time
    requests.arrow           this run's requests, built once by the checking pass
    limits.json              rate limits learned per endpoint and model (a rerun starts there)
    batches.json             --mode batch: the provider batches submitted (fsynced first)
    batch-00001.ids          the custom_ids of each, one a line
    part-000000.parquet      durable results, in write order; the newest part wins a key
    .part-000001.parquet.tmp a part being written (never read)
    .damaged-part-...        a part that could not be read, set aside (its rows are resent)
```

A part is written to a hidden temporary name, fsynced, renamed and the folder fsynced, so a
part that exists is whole. The folder is removed by renaming it to a hidden tombstone first,
so a kill during the removal never leaves a half-deleted folder that looks like a job.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import math
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from batcher.errors import UsageError, os_problem
from batcher.io.columns import KEY_NAMES, PART_SCHEMA
from batcher.io.durable import fsync_dir, fsync_file
from batcher.io.output import KEY, check_name, metadata, read_output, remove_leftovers

log = logging.getLogger(__name__)

SUFFIX = ".batcher"
INFO = "job.json"
LIMITS = "limits.json"  # the rate limits learned, per endpoint and model
BATCHES = "batches.json"  # --mode batch: the batches submitted to the provider
SPOOL = "requests.arrow"
PART_GLOB = "part-*.parquet"
DAMAGED = ".damaged-"
TOMBSTONE = ".removing-"
# The columns a part must have to count: the key, the fingerprint and the outcome.
REQUIRED = frozenset({*KEY_NAMES, "id", "request_hash", "status", "error_type"})


class JobDir:
    """The job folder of one output (`OUT.batcher/`), and the names beside OUT."""

    def __init__(self, output: Path) -> None:
        self.output = Path(output)
        self.path = self.output.with_name(self.output.name + SUFFIX)

    @classmethod
    def of(cls, path: Path) -> JobDir:
        """The job folder named by OUT or by the folder itself (`batcher status OUT.batcher`)."""
        path = Path(path)
        if path.name.endswith(SUFFIX) and path.is_dir():
            return cls(path.with_name(path.name[: -len(SUFFIX)]))
        return cls(path)

    def exists(self) -> bool:
        return self.path.is_dir()

    @property
    def spool(self) -> Path:
        return self.path / SPOOL

    @property
    def input_copy(self) -> Path:
        """Where an input that can be read only once (standard input) is copied for a run."""
        return self.output.with_name(f".{self.output.name}.input")

    def check_output(self) -> None:
        """Fail before anything is sent if OUT cannot be written (its folder is made)."""
        output = self.output
        check_name(output)
        parent = output.parent
        try:
            parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise UsageError(f"{output}: cannot create {parent}: {exc.strerror}") from None
        if not os.access(parent, os.W_OK):
            raise UsageError(f"{output}: the directory {parent} is not writable")

    # --- the lock, the folder itself ----------------------------------------------------

    @contextlib.contextmanager
    def lock(
        self,
        busy: str = "another batcher job is writing this output; wait for it or choose another -o",
    ) -> Iterator[None]:
        """One job at a time per OUT: a second would send (and bill) every row again."""
        path = self.output.with_name(f".{self.output.name}.lock")
        try:
            handle = open(path, "a+")  # noqa: SIM115 - held for the whole job
        except OSError as exc:
            problem = os_problem(exc)
            raise UsageError(f"{path}: cannot lock {self.output} with it: {problem}") from None
        try:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                raise UsageError(f"{self.output}: {busy}") from None
            yield
        finally:
            handle.close()

    def clean(self) -> None:
        """Remove what a killed run left behind: temporary OUT files and tombstones."""
        parent = self.output.parent
        remove_leftovers(self.output)
        for stone in parent.glob(f"{TOMBSTONE}*{self.path.name}"):
            shutil.rmtree(stone, ignore_errors=True)
        shutil.rmtree(self.input_copy, ignore_errors=True)

    def create(self) -> None:
        self.path.mkdir(exist_ok=True)

    def remove(self) -> None:
        """Delete the folder: renamed to a tombstone first (atomic), then removed."""
        if not self.path.exists():
            return
        stone = self.path.with_name(f"{TOMBSTONE}{os.getpid()}-{self.path.name}")
        os.replace(self.path, stone)
        fsync_dir(self.path.parent)
        shutil.rmtree(stone, ignore_errors=True)

    @contextlib.contextmanager
    def staging(self) -> Iterator[Path]:
        """A hidden folder that becomes the job folder in one rename (the folder there goes
        first), or vanishes."""
        staging = self.path.with_name(f".{self.path.name}.importing")
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir()
        try:
            yield staging
            for path in staging.iterdir():
                fsync_file(path)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        self.remove()
        os.replace(staging, self.path)
        fsync_dir(self.path.parent)

    # --- job.json --------------------------------------------------------------------------

    def write_info(self, info: dict[str, Any]) -> None:
        tmp = self.path / f".{INFO}.tmp"
        tmp.write_text(json.dumps(info, indent=2, default=str))
        os.replace(tmp, self.path / INFO)

    def earlier_starts(self) -> list[str]:
        """When the earlier runs of this job started, oldest first: from job.json, else
        from OUT's metadata (a finished job run again)."""
        info = self.read_info() or metadata(self.output) or {}
        runs = info.get("runs") or ([info["started"]] if info.get("started") else [])
        return [str(r) for r in runs]

    def read_info(self) -> dict[str, Any]:
        try:
            return json.loads((self.path / INFO).read_text())
        except (OSError, ValueError):
            return {}

    # --- limits.json: what the engine learned of the server's limits ------------------------

    def write_limits(self, base_url: str, learned: dict[str, Any]) -> None:
        """Keep the limits learned for `base_url` ({model: {"rpm": [600.0, "429s"]}}), beside
        those of other endpoints and models; a failed write only loses a rerun's head start."""
        known = self._all_limits()
        before = known.get(base_url)
        known[base_url] = {**(before if isinstance(before, dict) else {}), **learned}
        tmp = self.path / f".{LIMITS}.tmp"
        try:
            tmp.write_text(json.dumps(known, indent=2))
            os.replace(tmp, self.path / LIMITS)
        except OSError as exc:
            log.debug("could not keep the learned limits: %s", exc)

    def read_limits(self, base_url: str) -> dict[str, dict[str, tuple[float, str]]]:
        """The limits an earlier run learned for `base_url` (nothing when unreadable)."""
        out: dict[str, dict[str, tuple[float, str]]] = {}
        models = self._all_limits().get(base_url)
        if not isinstance(models, dict):
            return out
        for model, limits in models.items():
            if not isinstance(limits, dict):
                continue
            kept = {}
            for name, value in limits.items():
                ok = name in ("rpm", "tpm") and isinstance(value, list) and len(value) == 2
                ok = ok and type(value[0]) in (int, float) and value[1] in ("429s", "headers")
                per_minute = _finite(value[0]) if ok else None
                if per_minute is not None and per_minute > 0:
                    kept[name] = (per_minute, value[1])
            if kept:
                out[model] = kept
        return out

    def _all_limits(self) -> dict[str, Any]:
        try:
            known = json.loads((self.path / LIMITS).read_text())
        except (OSError, ValueError):
            return {}
        return known if isinstance(known, dict) else {}

    # --- batches.json: the provider batches of --mode batch ---------------------------------

    def read_batches(self) -> list[dict[str, Any]]:
        """The batches recorded, in submission order (none when there is no record)."""
        try:
            records = json.loads((self.path / BATCHES).read_text())
        except FileNotFoundError:
            return []
        except (OSError, ValueError) as exc:
            raise UsageError(
                f"{self.path / BATCHES}: unreadable ({exc}); its batches may "
                "still run: check them with the provider before --fresh"
            ) from None
        return [r for r in records if isinstance(r, dict)] if isinstance(records, list) else []

    def write_batches(self, records: list[dict[str, Any]]) -> None:
        """Record the batches durably (fsynced) before anything waits on them."""
        self._write_durably(BATCHES, json.dumps(records, indent=1).encode())

    def write_batch_ids(self, number: int, ids: list[str]) -> None:
        self._write_durably(f"batch-{number:05d}.ids", "\n".join(ids).encode())

    def read_batch_ids(self, number: int) -> list[str]:
        text = (self.path / f"batch-{number:05d}.ids").read_text()
        return text.split("\n") if text else []

    def batch_record(self) -> dict[str, bytes]:
        """The files that record the batches (`batches.json`, `batch-*.ids`), by name."""
        names = [BATCHES, *sorted(p.name for p in self.path.glob("batch-*.ids"))]
        return {n: (self.path / n).read_bytes() for n in names if (self.path / n).is_file()}

    def _write_durably(self, name: str, data: bytes) -> None:
        tmp = self.path / f".{name}.tmp"
        tmp.write_bytes(data)
        fsync_file(tmp)
        os.replace(tmp, self.path / name)
        fsync_dir(self.path)

    # --- parts -----------------------------------------------------------------------------

    def parts(self) -> list[Path]:
        """Every part, in write order."""
        return sorted(self.path.glob(PART_GLOB))

    def healthy_parts(self) -> list[Path]:
        """The parts whose footer reads and that hold a result's key and outcome; any other
        is set aside (renamed hidden), and its results are sent again."""
        good = []
        for path in self.parts():
            try:
                names = set(pq.read_metadata(path).schema.names)
                if not names >= REQUIRED:
                    raise ValueError("missing columns")
            except (OSError, ValueError, pa.ArrowException) as exc:
                self.set_aside(path, exc)
                continue
            good.append(path)
        return good

    def set_aside(self, path: Path, problem: BaseException) -> None:
        """Rename a damaged part hidden; its results are sent again."""
        path.replace(path.with_name(f"{DAMAGED}{path.name}"))
        log.warning("%s is damaged (%s); its results will be sent again", path.name, problem)

    def next_part_number(self) -> int:
        numbers = [int(p.stem.split("-")[1]) for p in self.parts()]
        return max(numbers, default=-1) + 1

    def part_path(self, number: int) -> Path:
        return self.path / f"part-{number:06d}.parquet"

    def results(self, columns: list[str] | None = None) -> pa.Table:
        """The newest result of every key (`columns` and the key), from the parts that read
        (parts being written or replaced are skipped): what a job has so far."""
        names = None if columns is None else list(dict.fromkeys([*KEY_NAMES, *columns]))
        tables = []
        for path in self.parts():
            try:
                table = pq.ParquetFile(path).read(columns=names)
            except (OSError, ValueError, pa.ArrowException):
                continue  # being written, replaced or damaged: the job itself deals with it
            try:
                if not set(table.column_names) >= REQUIRED & set(names or REQUIRED):
                    raise ValueError("missing columns")
                tables.append(_conform(table))
            except (ValueError, pa.ArrowException):
                log.warning("%s is not one of this job's parts; left out", path.name)
        if not tables:
            empty = PART_SCHEMA.empty_table()
            return empty if names is None else empty.select(names)
        return newest_per_key(pa.concat_tables(tables, promote_options="permissive"))


def _conform(table: pa.Table) -> pa.Table:
    """A part's columns cast to the part schema's types (an older layout's part reads)."""
    known = set(PART_SCHEMA.names)
    fields = [PART_SCHEMA.field(n) if n in known else table.field(n) for n in table.column_names]
    return table.cast(pa.schema(fields))


def _finite(value: float) -> float | None:
    try:
        number = float(value)
    except OverflowError:
        return None
    return number if math.isfinite(number) else None


def newest_per_key(table: pa.Table) -> pa.Table:
    """One row per result key (`_row`, `model`, `_variant`, `sample`): the last one, since
    rows are in write order and a later part replaces an earlier result of the same key."""
    if table.num_rows == 0:
        return table
    order = pa.array(range(table.num_rows), pa.int64())
    keyed = table.select(list(KEY_NAMES)).append_column("__at", order)
    last = keyed.group_by(list(KEY_NAMES), use_threads=False).aggregate([("__at", "max")])
    picks = pc.sort_indices(last.column("__at_max"))
    return table.take(pc.take(last.column("__at_max"), picks))


def read_results(path: Path) -> pa.Table:
    """The result rows of OUT, or of its job folder while the job runs or after it stopped
    (the newest result per key)."""
    job_dir = JobDir.of(path)
    if job_dir.exists():  # its models in the job's order, as OUT's metadata has them
        models = job_dir.read_info().get("models") or []
        return job_dir.results().replace_schema_metadata({KEY: json.dumps({"models": models})})
    path = Path(path)
    if path.exists():
        return read_output(path)
    raise UsageError(f"{path}: no such output or job directory")


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

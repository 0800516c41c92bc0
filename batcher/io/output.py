"""OUT in the form its name asks for, written whole or not at all, and read back.

```
out/run.parquet                  one Parquet file (a name ending .parquet or .pq)
out/run/                         a Parquet dataset (a name without a suffix, or a folder)
    part-00000.parquet           the rows in input order, DATASET_FILE_ROWS to a file
    part-00001.parquet           the last file's footer holds the job's metadata
```

Both forms have the same columns and the same `batcher` metadata (in the footer of the
file, or of the dataset's last file); pandas, pyarrow, polars and duckdb read the folder.
A name ending .jsonl, .ndjson or .csv is the same rows as text (`batcher.io.textout`).
Each is written under a hidden temporary name and renamed into place, so OUT is the old
output or the new one, never a mix. `cost`, `report`, `status` and resume read every form.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from batcher.errors import UsageError, os_problem
from batcher.io import textout
from batcher.io.durable import fsync_dir, fsync_file

FILE_SUFFIXES = (".parquet", ".pq")
DATASET_FILE_ROWS = 1 << 20  # result rows per file of a dataset OUT
DATASET_GLOB = "part-*.parquet"
KEY = b"batcher"


def is_dataset(path: Path) -> bool:
    """Whether OUT is (or is to be) a dataset folder: a folder, or a new name without a suffix."""
    path = Path(path)
    return path.is_dir() or (not path.exists() and path.suffix == "")


def exists(path: Path) -> bool:
    """Whether there is an OUT at `path` (an empty folder is none yet)."""
    path = Path(path)
    return path.is_file() or (path.is_dir() and any(path.iterdir()))


def check_name(path: Path) -> None:
    """Refuse an OUT that names neither form, or a folder that is not a batcher dataset
    (writing it would replace the folder and whatever else it holds)."""
    path = Path(path)
    if is_dataset(path):
        if exists(path) and metadata(path) is None:
            raise UsageError(
                f"{path}: a folder that is not a batcher output; choose another -o (a new "
                "name without a suffix is written as a Parquet dataset)"
            )
        return
    if path.suffix.lower() not in ("", *FILE_SUFFIXES, *textout.FORMATS):
        raise UsageError(
            f"{path}: name the output .parquet (a file), a name without a suffix (a Parquet "
            f"dataset folder), .jsonl or .csv; not {path.suffix}"
        )


def write_output(
    path: Path,
    schema: pa.Schema,
    tables: Iterable[pa.Table],
    metadata: Callable[[], dict[str, bytes]] | None = None,
) -> int:
    """Write the tables to OUT atomically; `metadata()` is asked for last. Return rows."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fmt = textout.text_format(path)
    try:
        if fmt is not None:
            rows, described = textout.write_text(tmp, fmt, schema, tables, metadata)
            textout.put_sidecar(path, described)
        else:
            write = _write_dataset if is_dataset(path) else _write_file
            rows = write(tmp, schema, tables, metadata)
        _replace(tmp, path)
    finally:
        _remove(tmp)
    return rows


def _write_file(tmp: Path, schema, tables, metadata) -> int:
    rows = 0
    with pq.ParquetWriter(tmp, schema, compression="zstd") as writer:
        for table in tables:
            writer.write_table(table)
            rows += table.num_rows
        if metadata is not None:
            writer.add_key_value_metadata(metadata())
    fsync_file(tmp)
    return rows


def _write_dataset(tmp: Path, schema, tables, metadata) -> int:
    tmp.mkdir()
    rows = number = in_file = 0
    writer = pq.ParquetWriter(tmp / f"part-{number:05d}.parquet", schema, compression="zstd")
    try:
        for table in tables:
            offset = 0
            while offset < table.num_rows:
                if in_file == DATASET_FILE_ROWS:  # the next file; the last one stays open
                    writer.close()
                    fsync_file(tmp / f"part-{number:05d}.parquet")
                    number, in_file = number + 1, 0
                    name = tmp / f"part-{number:05d}.parquet"
                    writer = pq.ParquetWriter(name, schema, compression="zstd")
                take = min(table.num_rows - offset, DATASET_FILE_ROWS - in_file)
                writer.write_table(table.slice(offset, take))
                offset, in_file, rows = offset + take, in_file + take, rows + take
        if metadata is not None:
            writer.add_key_value_metadata(metadata())
    finally:
        writer.close()
    fsync_file(tmp / f"part-{number:05d}.parquet")
    fsync_dir(tmp)
    return rows


def _replace(tmp: Path, path: Path) -> None:
    """Put `tmp` where `path` is: one rename for a file; a folder first moves the old one
    aside (a kill between the two renames leaves the job folder to assemble it again)."""
    if tmp.is_dir() and path.is_dir():
        old = path.with_name(f".{path.name}.{os.getpid()}.old")
        os.replace(path, old)
        os.replace(tmp, path)
        fsync_dir(path.parent)
        shutil.rmtree(old, ignore_errors=True)
        return
    os.replace(tmp, path)
    fsync_dir(path.parent)


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
    elif path.exists():
        path.unlink()


def remove_leftovers(path: Path) -> None:
    """Remove what a killed write of OUT left beside it (temporary files and folders)."""
    path = Path(path)
    for left in [
        *path.parent.glob(f".{path.name}.*.tmp"),
        *path.parent.glob(f".{path.name}.*.old"),
    ]:
        with contextlib.suppress(OSError):
            _remove(left)


# --- reading -----------------------------------------------------------------------------


def files(path: Path) -> list[Path]:
    """The Parquet files of OUT, in row order."""
    path = Path(path)
    return sorted(path.glob(DATASET_GLOB)) if path.is_dir() else [path]


def metadata(path: Path) -> dict[str, Any] | None:
    """The job's metadata of a batcher OUT; None when OUT is not one (or is unreadable)."""
    try:
        if textout.text_format(path) is not None:
            described = textout.read_sidecar(path) if Path(path).is_file() else None
            found = described.metadata if described is not None else None
        else:
            found = pq.read_metadata(files(path)[-1]).metadata
        return json.loads(found[KEY]) if found and KEY in found else None
    except (IndexError, OSError, ValueError, pa.ArrowException):
        return None


def written_at(path: Path) -> int | None:
    """When OUT was written (ns): the mtime of its file, or of a dataset's last file; None
    when there is none (yet)."""
    found = files(path) if exists(path) else []
    return found[-1].stat().st_mtime_ns if found else None


def schema(path: Path) -> pa.Schema:
    """OUT's schema, with the job's metadata (a footer's, which `read_schema` leaves out)."""
    if textout.text_format(path) is not None:
        described = textout.read_sidecar(path)
        if described is None:
            raise ValueError(f"{textout.sidecar(path).name} is missing or damaged")
        return described
    meta = pq.read_metadata(files(path)[-1])
    kept = {k: v for k, v in (meta.metadata or {}).items() if k != b"ARROW:schema"}
    return pq.read_schema(files(path)[-1]).with_metadata(kept)


def read_output(path: Path, columns: list[str] | None = None) -> pa.Table:
    """All of OUT (or the `columns` of it), with its metadata; `UsageError` if unreadable."""
    path = Path(path)
    try:
        fmt = textout.text_format(path)
        if fmt is not None:
            described = schema(path)
            table = textout.read_text(path, fmt, described, columns)
            return table.replace_schema_metadata(described.metadata)
        tables = [pq.ParquetFile(f).read(columns=columns) for f in files(path)]
        if not tables:
            raise ValueError("no part-*.parquet files")
        table = pa.concat_tables(tables) if len(tables) > 1 else tables[0]
        return table.replace_schema_metadata(schema(path).metadata)
    except (OSError, ValueError, pa.ArrowException) as exc:
        raise UsageError(f"{path}: not a readable batcher output: {os_problem(exc)}") from None


def iter_output(path: Path, batch_size: int = 65536) -> Iterator[pa.RecordBatch]:
    """OUT's rows in order, a batch at a time (flat memory)."""
    fmt = textout.text_format(path)
    if fmt is not None:
        yield from textout.iter_text(Path(path), fmt, schema(path), batch_size)
        return
    for f in files(path):
        yield from pq.ParquetFile(f).iter_batches(batch_size=batch_size)

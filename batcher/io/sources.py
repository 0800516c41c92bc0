"""Where the input is: a file, a folder or a glob of files, here or on any filesystem that
pyarrow reads (`s3://`, `gs://`, `hdfs://`, `file://`, ...).

A folder means every file in it and below whose name says it is an input (`.jsonl`,
`.csv`, `.parquet`, also compressed), hidden ones (`.x`, `_x`) left out, in path order. A
glob (`data/*.jsonl`, `s3://bucket/in/**/*.parquet`) matches path segments as a shell does,
with `**` for any number of them. Every file of an input is of one kind; the rows of the
files are read in order as one input.
"""

from __future__ import annotations

import fnmatch
import os
from pathlib import Path, PurePosixPath

import pyarrow as pa
import pyarrow.fs as pafs

from batcher.errors import InputError, is_uri, one_line, show_path
from batcher.io.inputs import COMPRESSIONS, FORMATS, InputFile, InputSet

WILDCARDS = frozenset("*?[")


def locate(given: str | os.PathLike[str], fmt: str | None = None) -> InputFile | InputSet:
    """The input named by `given` (a path, a glob or a URI), its kind from `fmt` or names."""
    text = os.fspath(given)
    shown = show_path(text)
    if is_uri(text):
        try:
            fs, path = pafs.FileSystem.from_uri(text)
        except (pa.ArrowException, ValueError, OSError) as exc:
            raise InputError(f"{shown}: cannot open: {one_line(str(exc))}") from None
        prefix = text[: text.index("://") + 3]
        if prefix == "file://":
            prefix = "file://" if path.startswith("/") else "file:///"
        return _locate(fs, path, shown, fmt, lambda p: show_path(prefix + p))
    if os.path.isdir(text) or (_is_pattern(text) and not os.path.exists(text)):
        local = pafs.LocalFileSystem()
        return _locate(local, os.path.abspath(text), shown, fmt, _relative(text), remote=False)
    return InputFile.of(text, fmt)


def _relative(given: str):
    """How a local file found under `given` is named in messages: as the user would type it."""
    base = os.path.abspath(os.curdir)

    def name(path: str) -> str:
        return show_path(path if os.path.isabs(given) else os.path.relpath(path, base))

    return name


def _locate(fs, path: str, shown: str, fmt, name, *, remote: bool = True):
    found = _matches(fs, path, shown) if _is_pattern(path) else _single_or_folder(fs, path, shown)
    if isinstance(found, str):  # one file
        return InputFile.of(found, fmt, name=name(found), fs=fs if remote else None)
    files = [p for p in found if fmt is not None or _input_name(p)]
    if not files:
        what = "matches no input file" if _is_pattern(path) else "holds no input file"
        raise InputError(f"{shown}: {what} (.jsonl, .csv or .parquet, also compressed)")
    inputs = tuple(
        InputFile.of(p, fmt, name=name(p), fs=fs if remote else None) for p in sorted(files)
    )
    kinds = sorted({f.kind for f in inputs})
    if len(kinds) > 1:
        first = {k: next(f.name for f in inputs if f.kind == k) for k in kinds}
        listed = ", ".join(f"{k} ({first[k]})" for k in kinds)
        raise InputError(f"{shown}: files of more than one kind: {listed}; give one kind")
    return InputSet(inputs, shown)


def _single_or_folder(fs, path: str, shown: str) -> str | list[str]:
    info = _info(fs, path, shown)
    if info.type == pafs.FileType.NotFound:
        raise InputError(f"{shown}: no such file")
    if info.type != pafs.FileType.Directory:
        return path
    return _files_under(fs, path, shown)


def _matches(fs, pattern: str, shown: str) -> list[str]:
    """The files matching a glob: listed under the pattern's fixed leading folder."""
    parts = PurePosixPath(pattern).parts
    fixed = next(i for i, part in enumerate(parts) if _is_pattern(part))
    base = str(PurePosixPath(*parts[:fixed])) if fixed else "/"
    if _info(fs, base, shown).type != pafs.FileType.Directory:
        return []
    return [p for p in _files_under(fs, base, shown) if _glob_match(parts, PurePosixPath(p).parts)]


def _files_under(fs, folder: str, shown: str) -> list[str]:
    try:
        listed = fs.get_file_info(pafs.FileSelector(folder, recursive=True))
    except (pa.ArrowException, OSError, ValueError) as exc:
        raise InputError(f"{shown}: cannot list: {one_line(str(exc))}") from None
    base = len(PurePosixPath(folder).parts)
    return [
        info.path
        for info in listed
        if info.type == pafs.FileType.File
        and not any(part[0] in "._" for part in PurePosixPath(info.path).parts[base:])
    ]


def _info(fs, path: str, shown: str):
    try:
        return fs.get_file_info(path)
    except (pa.ArrowException, OSError, ValueError) as exc:
        raise InputError(f"{shown}: cannot open: {one_line(str(exc))}") from None


def _glob_match(pattern: tuple[str, ...], parts: tuple[str, ...]) -> bool:
    """Segment by segment, as a shell matches; `**` stands for zero or more segments."""
    if not pattern:
        return not parts
    if pattern[0] == "**":
        return any(_glob_match(pattern[1:], parts[i:]) for i in range(len(parts) + 1))
    return (
        bool(parts)
        and fnmatch.fnmatchcase(parts[0], pattern[0])
        and (_glob_match(pattern[1:], parts[1:]))
    )


def _is_pattern(text: str) -> bool:
    return any(c in WILDCARDS for c in text)


def _input_name(path: str) -> bool:
    suffixes = [s.lower() for s in Path(path).suffixes[-2:]]
    if suffixes and suffixes[-1] in COMPRESSIONS:
        suffixes = suffixes[:-1]
    return bool(suffixes) and suffixes[-1] in FORMATS

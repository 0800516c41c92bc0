"""The library API: `batcher.run(...)` and `await batcher.arun(...)`.

Both take the options of `batcher run` as keyword arguments (`models=["a", "b"]`,
`concurrency=64`, `template="Classify: {text}"`, ...), or a TOML job file (`job="x.toml"`,
which the other arguments override, as on the command line), and return a `JobSummary`.
Their signatures list every option with its default: they are made from `JobSpec`'s fields,
so `help(batcher.run)` and a notebook's signature hints always show the real ones.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import inspect
import os
import typing
from typing import Any

from batcher.analysis.summary import JobSummary
from batcher.errors import UsageError
from batcher.job import Job, ProgressCallback
from batcher.jobfile import load_job_file, merge
from batcher.progress import ProgressBar
from batcher.spec import JobSpec, make_spec, unknown_message

PathLike = str | os.PathLike[str]


async def arun(
    input: PathLike | None = None,
    output: PathLike | None = None,
    *,
    job: PathLike | None = None,
    progress: ProgressCallback | bool | None = None,
    **options: Any,
) -> JobSummary:
    """Run a job on the current event loop (use this in notebooks and async code).
    `progress`: a callback given a `Progress` a few times a second, or True for a bar (a
    notebook's widget in Jupyter, else text on stderr)."""
    spec = job_spec(input, output, job, options)
    if progress is not True:
        return await Job(spec, progress=progress or None).run()
    bar = ProgressBar(notebook=True)
    try:
        return await Job(spec, progress=bar.update).run()
    finally:
        bar.close()


def run(
    input: PathLike | None = None,
    output: PathLike | None = None,
    *,
    job: PathLike | None = None,
    progress: ProgressCallback | bool | None = None,
    **options: Any,
) -> JobSummary:
    """Run a job to the end and return its summary (`progress` as for `arun`).

    Inside a running event loop (a notebook) the job runs on a loop of its own in a
    worker thread, so this call works everywhere."""
    coro = arun(input, output, job=job, progress=progress, **options)
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coro).result()


def job_spec(
    input: PathLike | None, output: PathLike | None, job: PathLike | None, options: dict
) -> JobSpec:
    """The spec of a library call: its own options laid over the job file's."""
    known = set(OPTIONS)
    for name in options:
        if name not in known:
            raise UsageError(unknown_message("option", name, known | {"job", "progress"}))
    given = dict(options)
    if input is not None:
        given["input"] = input
    if output is not None:
        given["output"] = output
    merged = merge(load_job_file(job).options, given) if job is not None else given
    if merged.get("input") is None:
        raise UsageError("missing input: give the input file, or `input` in the job file")
    return make_spec(**merged)


def _signature(function: Any) -> inspect.Signature:
    """`function`'s own parameters, then one keyword parameter per `JobSpec` option."""
    own = inspect.signature(function)
    hints = typing.get_type_hints(JobSpec)
    extra = []
    for f in dataclasses.fields(JobSpec):
        if f.name in ("input", "output"):
            continue
        default = f.default
        if default is dataclasses.MISSING:
            default = f.default_factory()  # type: ignore[misc]
        extra.append(
            inspect.Parameter(
                f.name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=hints[f.name]
            )
        )
    params = [p for p in own.parameters.values() if p.kind is not inspect.Parameter.VAR_KEYWORD]
    return own.replace(parameters=[*params, *extra])


OPTIONS = tuple(f.name for f in dataclasses.fields(JobSpec) if f.name not in ("input", "output"))
arun.__signature__ = _signature(arun)  # type: ignore[attr-defined]
run.__signature__ = _signature(run)  # type: ignore[attr-defined]

__all__ = ["arun", "run"]

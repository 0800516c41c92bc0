"""The library API: `batcher.run(...)` and `await batcher.arun(...)`.

Both take the options of `batcher run` as keyword arguments (`models=["a", "b"]`,
`concurrency=64`, `template="Classify: {text}"`, ...) and return a `JobSummary`.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
from typing import Any

from batcher.analysis.summary import JobSummary
from batcher.job import Job, ProgressCallback
from batcher.spec import make_spec


async def arun(
    input: str | os.PathLike[str],
    output: str | os.PathLike[str] | None = None,
    *,
    progress: ProgressCallback | None = None,
    **options: Any,
) -> JobSummary:
    """Run a job on the current event loop (use this in notebooks and async code)."""
    spec = make_spec(input=input, output=output, **options)
    return await Job(spec, progress=progress).run()


def run(
    input: str | os.PathLike[str],
    output: str | os.PathLike[str] | None = None,
    *,
    progress: ProgressCallback | None = None,
    **options: Any,
) -> JobSummary:
    """Run a job to the end and return its summary.

    Inside a running event loop (a notebook) the job runs on a loop of its own in a
    worker thread, so this call works everywhere.
    """
    coro = arun(input, output, progress=progress, **options)
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coro).result()

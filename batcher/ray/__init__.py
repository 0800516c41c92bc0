"""batcher on Ray Data (`pip install "batcher[ray]"`): the same job across a cluster.

    import batcher.ray
    summary = batcher.ray.run("prompts.jsonl", "out.parquet", models=["gpt-5.5"], actors=4)
    ds = batcher.ray.process(ray.data.read_parquet("s3://bucket/rows/"), models=["gpt-5.5"])

`run` is `batcher run --engine ray`: the job as on one machine (checked input, durable
parts, resume, the same OUT), its requests sent by `actors` actors. `process` adds batcher's
result columns to any Dataset, lazily, one output row per request. In both, each actor runs
batcher's own Engine (`-c` requests in flight each), and one coordinator actor holds the
job's rate limits, the limits its 429s show, its pauses and its early stop for all of them.

Importing `batcher` never imports Ray; importing `batcher.ray` does.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

from batcher.analysis.summary import JobSummary
from batcher.api import OPTIONS, PathLike, _signature
from batcher.api import run as _run
from batcher.errors import UsageError
from batcher.io.rows import sweep_grid
from batcher.spec import make_spec, unknown_message

# Options of a job that mean nothing for a Dataset (it has no file, no OUT, no job folder).
NOT_FOR_DATASETS = frozenset(
    {
        "input_format",
        "limit",
        "keep_columns",
        "flush_rows",
        "flush_seconds",
        "keep_job_dir",
        "fresh",
        "retry_errors",
        "cache",
        "max_cost",
        "dry_run",
        "engine",
        "ray_address",
    }
)


def run(input: PathLike, output: PathLike, **options: Any) -> JobSummary:
    """Run a job on Ray (started on 127.0.0.1, or joined with `ray_address=`) to the end
    and return its summary: `batcher.run(..., engine="ray")`."""
    return _run(input, output, engine="ray", **options)


def process(ds: Any, **options: Any) -> Any:
    """`ds` with batcher's result columns, lazily: one row per (row, model, combination,
    sample), the result columns of OUT (`id`, `model`, `status`, `content`, tokens, `cost_usd`,
    ...) then the row's own columns (`input_<name>` where a name is taken). A row's id is its
    `id` / `custom_id` / `id_column` value, or, without one, `row-` and a hash of the row. A bad
    row is an error row of its own; nothing in a row fails the Dataset."""
    import ray

    from batcher.job import Job
    from batcher.ray.engine import ACTORS, actor_settings, connect, coordinator, map_senders
    from batcher.ray.sender import RowRules, SenderConfig
    from batcher.senders import engine_settings

    for name in options:
        if name in NOT_FOR_DATASETS:
            raise UsageError(f"process(): {name!r} is for jobs over files (batcher.ray.run)")
        if name not in OPTIONS:
            raise UsageError(unknown_message("option", name, set(OPTIONS) - NOT_FOR_DATASETS))
    spec = make_spec(input=Path("<dataset>"), engine="ray", **options)
    if not ray.is_initialized():  # as `ray.data` would, but bound to 127.0.0.1
        connect(None)
    job = Job(spec)
    base_url = job.provider.base_url or _mock_url()
    settings = engine_settings(spec)
    rules = RowRules(job.requests, job.prices)
    config = SenderConfig(
        job.endpoint(base_url), actor_settings(settings), coordinator(settings), rules
    )
    per_row = max(1, len(job.requests.models)) * spec.samples * len(sweep_grid(spec.sweep))
    batch = max(1, spec.concurrency // (2 * per_row))
    return map_senders(ds, config, spec.actors or ACTORS, batch)


_mock: list[Any] = []  # the built-in mock, once started
_mock_lock = threading.Lock()


def _mock_url() -> str:
    """The built-in mock, in a thread of this process for as long as it lives (a Dataset
    runs later, lazily): for trying `process` with no key and no network."""
    from batcher.mock import MockServerThread

    with _mock_lock:
        if not _mock:
            server = MockServerThread(keep_log=False)
            server.start()
            _mock.append(server)
        return _mock[0].url


process.__signature__ = _signature(process).replace(  # type: ignore[attr-defined]
    parameters=[
        p
        for p in _signature(process).parameters.values()
        if p.name not in NOT_FOR_DATASETS and p.name not in ("input", "output")
    ]
)
run.__signature__ = _signature(run)  # type: ignore[attr-defined]

__all__ = ["process", "run"]

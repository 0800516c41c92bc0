"""How a job's requests go out, chosen in one place: the local engine, actors on Ray Data,
or the provider's Batch API. Each starts over the job folder's request spool and gives a
run with the engine run's interface (iterate it for batches of results; `stop`)."""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import logging
from typing import Any

from batcher.engine.budget import Budget
from batcher.engine.engine import Engine, EngineSettings, ModelLimits
from batcher.engine.http import fit_open_files
from batcher.engine.retry import RetryPolicy
from batcher.io import spool
from batcher.io.jobdir import JobDir
from batcher.providers import Endpoint
from batcher.spec import JobSpec

log = logging.getLogger("batcher.job")

__all__ = ["engine_settings", "start_sending"]


def engine_settings(spec: JobSpec) -> EngineSettings:
    return EngineSettings(
        concurrency=spec.concurrency,
        timeout=spec.timeout,
        retry=RetryPolicy(max_retries=spec.max_retries),
        rpm=spec.rpm,
        tpm=spec.tpm,
        model_limits={
            model: ModelLimits(limits.get("rpm"), limits.get("tpm"))
            for model, limits in spec.model_limits.items()
        },
        reask=spec.reask,
    )


def local_settings(spec: JobSpec, embedded_mock: bool) -> EngineSettings:
    """The engine's settings: the spec's, with no more in flight than open files allow."""
    settings = engine_settings(spec)
    wanted = settings.concurrency
    fits = fit_open_files(wanted, per_request=2 if embedded_mock else 1)
    if fits < wanted:
        log.warning(
            "-c %d needs more open files than this process may have: %d in flight at most "
            "(raise `ulimit -n` for more)",
            wanted,
            fits,
        )
        settings = dataclasses.replace(settings, concurrency=fits)
    return settings


def start_sending(
    spec: JobSpec,
    endpoint: Endpoint,
    job_dir: JobDir,
    stack: contextlib.AsyncExitStack,
    *,
    embedded_mock: bool,
    known: Any,
    budget: Budget | None,
    learned: dict,
    structured: bool,
    identity: str = "",
) -> Any:
    """The run that sends the spool's requests still to do, as `spec` says."""
    if spec.mode == "batch":
        return _batch(spec, endpoint, job_dir, embedded_mock, known, structured, identity)
    if spec.engine == "ray":
        from batcher.ray.engine import ACTORS, RayEngine, connected

        stack.enter_context(connected(spec.ray_address))
        engine = RayEngine(endpoint, engine_settings(spec), actors=spec.actors or ACTORS)
        return engine.start(job_dir.spool, learned=learned, known=known, budget=budget)
    engine = Engine(endpoint, local_settings(spec, embedded_mock))
    requests = (
        spool.todo_requests(job_dir.spool)
        if spec.cache_aware is False
        else spool.grouped_requests(job_dir.spool, lead=spec.concurrency)
    )
    return engine.start(requests, known=known, budget=budget, learned=learned)


def _batch(
    spec: JobSpec,
    endpoint: Endpoint,
    job_dir: JobDir,
    embedded_mock: bool,
    known: Any,
    structured: bool,
    identity: str,
) -> Any:
    from batcher.batch.lines import MAX_BYTES, MAX_REQUESTS
    from batcher.batch.run import BatchRun, BatchSettings

    settings = BatchSettings(
        rounds=spec.batch_rounds or 3,
        reask=spec.reask,
        fallback=spec.fallback,
        wait=spec.wait is not False,
        submit=spec.batch_submit is not False,
        max_requests=spec.batch_max_requests or MAX_REQUESTS,
        max_bytes=spec.batch_max_bytes or MAX_BYTES,
    )
    online = Engine(endpoint, local_settings(spec, embedded_mock))
    token = hashlib.sha256(str(job_dir.path.resolve()).encode()).hexdigest()[:16]
    return BatchRun(
        endpoint,
        job_dir,
        settings,
        token=f"batcher-{token}",
        identity=identity,
        structured=structured,
        known=known,
        online=lambda requests: online.start(requests, known=known),
    )

"""The recorded batches of a `--mode batch` job, looked up (`batcher batch status OUT`) or
cancelled (`batcher batch cancel OUT`) at the endpoint the job sent them to, with the key it
used (from the environment or the key file, as the job read it; job.json names only where).
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from batcher.batch.client import TERMINAL, BatchApiError, BatchClient
from batcher.errors import UsageError
from batcher.io.jobdir import JobDir
from batcher.providers import MOCK_IDENTITY, Endpoint, read_key, resolve_provider
from batcher.spec import PATHS, JobSpec

log = logging.getLogger("batcher.batch")

__all__ = ["BatchState", "Recorded", "cancel", "look", "refuse_running_batches"]

ENDED = TERMINAL | {"lost"}  # "lost": the provider no longer knew it (404)
MOCK_NOTE = (
    "the built-in mock's batches end with the run that made them: rerun the job to submit "
    "them again"
)


@dataclass(frozen=True)
class BatchState:
    """One recorded batch as the provider (or, for the built-in mock, the record) has it."""

    number: int
    batch_id: str | None
    model: str
    round: int
    requests: int
    status: str  # the provider's; "unknown" (404), "not submitted"; the mock's: last seen
    completed: int | None = None
    failed: int | None = None
    note: str | None = None  # what a cancel found

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Recorded:
    """A job folder's batch records, and the spec the job ran with (paths made absolute)."""

    job_dir: JobDir
    spec: dict[str, Any]
    records: list[dict[str, Any]]

    @classmethod
    def of(cls, path: Path) -> Recorded:
        job_dir = JobDir.of(path)
        if not job_dir.exists():
            raise UsageError(
                f"{path}: no job folder ({job_dir.path.name}), so no batches on record "
                "(a job that finished keeps none)"
            )
        records = job_dir.read_batches()
        if not records:
            raise UsageError(f"{job_dir.path}: no batches on record (not a --mode batch job?)")
        info = job_dir.read_info()
        known = {f.name for f in fields(JobSpec)}
        recorded = info.get("spec") or info.get("settings") or {}
        spec = {k: v for k, v in recorded.items() if k in known}
        cwd = Path(info.get("cwd") or ".")
        for name in PATHS:
            value = spec.get(name)
            if isinstance(value, str) and value != "-" and "://" not in value:
                spec[name] = str(cwd / value)  # an absolute value stays as it is
        spec["batch_output"] = [str(cwd / p) for p in spec.get("batch_output") or ()]
        return cls(job_dir, spec, records)

    @property
    def built_in_mock(self) -> bool:
        return all(r.get("endpoint") == MOCK_IDENTITY for r in self.records)

    def endpoint(self) -> Endpoint:
        s = self.spec
        provider = resolve_provider(
            s.get("provider"), s.get("base_url"), s.get("auth_header"), s.get("api_key_env")
        )
        assert provider.base_url is not None  # not the built-in mock's
        return Endpoint(
            provider.base_url, provider.auth_header, read_key(provider, s.get("api_key_file"))
        )

    def collecting_spec(self) -> dict[str, Any]:
        """The job's options again, to collect what its batches finished and submit nothing."""
        return {
            **self.spec,
            "output": str(self.job_dir.output),
            "batch_submit": False,
            "wait": None,
            "fresh": False,
            "retry_errors": False,
            "dry_run": False,
        }

    def as_recorded(self) -> list[BatchState]:
        return [_state(r, r.get("status") or "not seen") for r in self.records]


def _state(record: dict[str, Any], status: str, batch: dict | None = None, note=None):
    counts = (batch or {}).get("request_counts") or {}
    return BatchState(
        number=int(record["number"]),
        batch_id=record.get("batch_id"),
        model=str(record.get("model")),
        round=int(record.get("round") or 1),
        requests=int(record.get("requests") or 0),
        status=status,
        completed=counts.get("completed") if batch else None,
        failed=counts.get("failed") if batch else None,
        note=note,
    )


async def look(found: Recorded) -> list[BatchState]:
    """Each recorded batch's state at the provider (read only: the record is not changed)."""
    if found.built_in_mock:
        return found.as_recorded()
    states = []
    async with BatchClient(found.endpoint()) as client:
        for record in found.records:
            batch_id = await _batch_id(client, record)
            if batch_id is None:
                states.append(_state(record, "not submitted"))
                continue
            try:
                batch = await client.retrieve(batch_id)
            except BatchApiError as exc:
                if exc.status != 404:
                    raise
                states.append(_state({**record, "batch_id": batch_id}, "unknown"))
                continue
            states.append(_state({**record, "batch_id": batch_id}, str(batch["status"]), batch))
    return states


async def cancel(found: Recorded) -> list[BatchState]:
    """Cancel every recorded batch that may still run, recording each one's new status.
    Hold the job folder's lock: a running job would submit the next round."""
    if found.built_in_mock:
        return found.as_recorded()
    states = []
    async with BatchClient(found.endpoint()) as client:
        for record in found.records:
            record["batch_id"] = await _batch_id(client, record)
            if record["batch_id"] is None:
                states.append(_state(record, "not submitted"))
                continue
            states.append(await _cancel_one(client, record))
            found.job_dir.write_batches(found.records)
    return states


async def _batch_id(client: BatchClient, record: dict[str, Any]) -> str | None:
    """The record's batch id, or that of the batch made over its file (a run cut short
    after the upload), or None."""
    if record.get("batch_id") is None and record.get("file_id"):
        batch = await client.find(record["file_id"])
        return batch["id"] if batch else None
    return record.get("batch_id")


async def _cancel_one(client: BatchClient, record: dict[str, Any]) -> BatchState:
    batch_id = record["batch_id"]
    if record.get("status") in ENDED:
        return _state(record, record["status"], note="had ended")
    try:
        batch = await client.cancel(batch_id)
        note = "cancel requested"
    except BatchApiError as exc:
        if exc.status == 404:
            record["status"] = "lost"
            return _state(record, "unknown", note="unknown to the provider")
        try:
            batch = await client.retrieve(batch_id)
        except BatchApiError:
            raise exc from None
        status = batch.get("status")
        note = "had ended" if status in TERMINAL else f"cancel refused while {status}"
    record["status"] = str(batch.get("status"))
    return _state(record, record["status"], batch, note)


def refuse_running_batches(job_dir: JobDir, option: str, instead: str) -> None:
    """Refuse `option` (which would drop the job folder, or send online what the batches
    hold) while a recorded batch may still run or holds results not collected: it would go
    on being billed, or be billed twice, with no record left to collect it."""
    try:
        records = job_dir.read_batches()
    except UsageError as exc:  # the folder goes all the same: say what may still run
        log.warning("%s", exc)
        return
    open_ = [
        r
        for r in records
        if r.get("endpoint") != MOCK_IDENTITY
        and (r.get("batch_id") or r.get("file_id"))
        and not r.get("collected")
        and r.get("status") != "lost"
    ]
    if open_:
        out = job_dir.output
        raise UsageError(
            f"{option}: {len(open_)} batches of {out} may still run or hold results not "
            f"collected: cancel them first (batcher batch cancel {out}) or {instead} to "
            "collect them"
        )

"""`--mode batch`: a job's requests through the provider's Batch API, behind the interface of
an engine run (iterate it for batches of results; `stop`), so the job folder, parts,
assembly and summary are the online ones.

Rounds. The requests to send go into input files (`lines.batch_files`); each is recorded in
the job folder before anything waits on it: its custom_ids, then its file id, then its batch
id, each write fsynced. A rerun finds the record and never submits a recorded batch again (a
file uploaded but not yet made a batch is looked up among the provider's batches first).
When every batch of a round has ended, the requests with no final outcome (expired,
cancelled, a retryable error status, content gone) make the next round, up to `rounds`;
what is left then is sent online (`fallback="online"`) or ends as error rows. An invalid
structured reply is re-asked in the next round (`batch.reasks`); one whose re-ask never came
back ends `invalid_output`, never online (its row is billed at one rate).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections import Counter, defaultdict
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from typing import Any

from batcher.batch.client import TERMINAL, BatchApiError, BatchClient, ContentGone
from batcher.batch.lines import MAX_BYTES, MAX_REQUESTS, batch_files, custom_id, line_of, read_lines
from batcher.batch.reasks import BatchReasks
from batcher.engine.http import Attempt
from batcher.engine.reask import known_result
from batcher.engine.results import error_result, to_result
from batcher.errors import UsageError
from batcher.io import spool
from batcher.io.jobdir import JobDir
from batcher.providers import Endpoint
from batcher.structured.validate import Validators
from batcher.types import ErrorType, Request, Result, Usage

log = logging.getLogger("batcher.batch")

__all__ = ["BatchRun", "BatchSettings"]

STUCK_S = 3600.0  # finalizing this long: say so (once)


@dataclass(frozen=True)
class BatchSettings:
    rounds: int = 3  # batch rounds at most: the first, then resubmissions of what is missing
    reask: int = 2  # re-asks of an invalid structured reply, each in the next round
    fallback: str | None = None  # "online": send what the rounds left online
    wait: bool = True  # False: submit (or look at the running batches once) and stop
    submit: bool = True  # False: only collect the recorded batches (`batcher batch cancel`)
    max_requests: int = MAX_REQUESTS  # of one input file
    max_bytes: int = MAX_BYTES
    poll_initial: float = 1.0  # seconds between status checks, growing 1.5x...
    poll_max: float = 60.0  # ...to this


class BatchRun:
    """The job's requests still to send, batch by batch; results come out as each batch ends."""

    def __init__(
        self,
        endpoint: Endpoint,
        job_dir: JobDir,
        settings: BatchSettings,
        *,
        token: str,
        identity: str = "",
        structured: bool = False,
        known: Any = None,
        online: Callable[[list[Request]], Any] | None = None,
    ) -> None:
        self.endpoint = endpoint
        self.job_dir = job_dir
        self.settings = settings
        self.token = token  # names the job in each batch's metadata
        self.identity = identity  # the endpoint the batches go to (recorded with each)
        self.stop_reason: str | None = None
        self.submitted_only = False  # wait=False and batches were submitted
        self.sent = 0  # batch lines that ran (each a request the provider answered)
        self._structured = structured
        self._known = known
        self._online = online  # starts an online run over requests (the fallback)
        self._inner: Any = None  # that online run, once started
        self._woken = asyncio.Event()
        self._todo: dict[str, Request] = {}  # without payloads
        self._reasks = BatchReasks(settings.reask)
        self._billed: defaultdict[str, list[Usage]] = defaultdict(list)
        self._tries: Counter[str] = Counter()  # batch lines that ran, per request
        self._last: dict[str, Attempt | str] = {}  # why a request has no final outcome yet
        self._records: list[dict[str, Any]] = []
        self._states: dict[str, tuple[str, int, int, int]] = {}  # status, done, failed, total
        self._gen: AsyncIterator[list[Result]] | None = None
        self._client: BatchClient | None = None

    # --- the engine-run interface -------------------------------------------------------

    @property
    def stopping(self) -> bool:
        return self.stop_reason is not None

    def stop(self, reason: str) -> None:
        if self.stop_reason is None:
            self.stop_reason = reason
            log.info("stopping: %s", reason)
        self._woken.set()
        if self._inner is not None:
            self._inner.stop(reason)

    def note(self) -> str | None:
        """ "3 batches: 2 in_progress (340/1,000), 1 completed" while batches run."""
        if self._inner is not None:
            return "online: what the batch rounds left"
        if not self._states:
            return None
        by = Counter(status for status, *_ in self._states.values())
        running = [s for s in self._states.values() if s[0] == "in_progress"]
        done = sum(s[1] + s[2] for s in running)
        total = sum(s[3] for s in running)
        parts = [
            f"{n} {status}" + (f" ({done:,}/{total:,})" if status == "in_progress" else "")
            for status, n in by.items()
        ]
        return f"{len(self._states)} batches: " + ", ".join(parts)

    def learned(self) -> dict:
        return self._inner.learned() if self._inner is not None else {}

    def __aiter__(self) -> AsyncIterator[list[Result]]:
        if self._gen is None:
            self._gen = self._run()
        return self._gen

    async def aclose(self) -> None:
        if self._gen is not None:
            await self._gen.aclose()  # type: ignore[attr-defined]

    # --- the rounds -----------------------------------------------------------------------

    async def _run(self) -> AsyncIterator[list[Result]]:
        first = self._read_todo()
        if first:
            yield first
        self._records = self.job_dir.read_batches()
        live = [r for r in self._records if any(i in self._todo for i in self._ids(r))]
        ended = [r for r in self._records if r not in live and r.get("status") in TERMINAL]
        if any(not r.get("collected") for r in ended):  # every row done: nothing to collect
            for record in ended:
                record["collected"] = True
            self._save()
        if not self._todo:
            return
        elsewhere = {r.get("endpoint") for r in self._records} - {self.identity}
        if elsewhere:
            raise UsageError(
                f"the batches of {self.job_dir.output} went to {sorted(map(str, elsewhere))[0]}: "
                "rerun with that endpoint to collect them (or --fresh to start over)"
            )
        done_rounds = max((r["round"] for r in self._records), default=0)
        async with BatchClient(self.endpoint) as client:
            self._client = client
            while self._todo and not self.stopping:
                if self._reasks.due:  # the bodies of the re-asks the last batches asked for
                    self._reasks.make_bodies(self._requests(self._reasks.due))
                if live:  # an earlier run's: the batches made first, then those it was
                    # cut short making (a re-ask's body needs the reply before it)
                    made = [r for r in live if r.get("batch_id") is not None]
                    if made:
                        live = [r for r in live if r.get("batch_id") is None]
                    else:
                        for record in live:
                            await self._create(record, adopt=True)
                        made, live = [r for r in live if r.get("batch_id") is not None], []
                elif done_rounds < self.settings.rounds and self.settings.submit:
                    done_rounds += 1
                    made = await self._submit(done_rounds)
                else:
                    break
                async for results in self._wait(made):
                    yield results
        if self._todo and not self.stopping:
            async for results in self._leftovers():
                yield results

    def _read_todo(self) -> list[Result]:
        """Take the spool's requests still to send (bodies dropped); the results known
        without sending: bad input rows and the response cache's."""
        known, validators = [], Validators()
        for request in spool.todo_requests(self.job_dir.spool):
            if request.bad_input is not None:
                known.append(error_result(request, ErrorType.BAD_INPUT.value, request.bad_input))
                continue
            if self._known is not None:
                found = known_result(self._known, validators, request)
                if found is not None:
                    known.append(found)
                    continue
            cid = custom_id(request)
            if self._structured and (validator := validators.of(request.payload)) is not None:
                self._reasks.validators[cid] = validator
            self._todo[cid] = dataclasses.replace(request, payload=b"")
        return known

    def _requests(self, ids: set[str]) -> Iterator[Request]:
        """The spool's requests whose custom_ids are in `ids`, bodies as built (a re-ask's:
        the conversation so far)."""
        for request in spool.todo_requests(self.job_dir.spool):
            if request.bad_input is None and (cid := custom_id(request)) in ids:
                body = self._reasks.body(cid)
                yield request if body is None else dataclasses.replace(request, payload=body)

    def _ids(self, record: dict[str, Any]) -> list[str]:
        if "_ids" not in record:
            record["_ids"] = self.job_dir.read_batch_ids(record["number"])
        return record["_ids"]

    def _save(self) -> None:
        public = [{k: v for k, v in r.items() if not k.startswith("_")} for r in self._records]
        self.job_dir.write_batches(public)

    async def _submit(self, round_: int) -> list[dict[str, Any]]:
        """Every request still without an outcome, in new batches of this round."""
        s, made = self.settings, []
        for f in batch_files(self._requests(set(self._todo)), s.max_requests, s.max_bytes):
            if self.stopping:
                break
            number = len(self._records) + 1
            self.job_dir.write_batch_ids(number, f.ids)
            record = {
                "number": number,
                "model": f.model,
                "round": round_,
                "requests": len(f.ids),
                "file_id": None,
                "batch_id": None,
                "endpoint": self.identity,
                "_ids": f.ids,
            }
            self._records.append(record)
            self._save()
            await self._create(record, bytes(f.data))
            made.append(record)
        return made

    async def _create(self, record: dict[str, Any], data: bytes | None = None, *, adopt=False):
        """Upload the record's file and create its batch, recording each id as it comes; an
        earlier run's upload is looked up among the batches first (`adopt`)."""
        client, number = self._client, record["number"]
        assert client is not None
        if record["file_id"] is None:
            if not self.settings.submit:
                return
            if data is None:
                ids = set(self._ids(record))
                data = b"".join(line_of(r) for r in self._requests(ids))
            record["file_id"] = await client.upload(data, f"batcher-{number:05d}.jsonl")
            self._save()
        batch = await client.find(record["file_id"]) if adopt else None
        if batch is None and not self.settings.submit:
            return  # collecting only: what was never made a batch stays unsent
        if batch is None:
            metadata = {"batcher_job": self.token, "batcher_batch": str(number)}
            batch = await client.create(record["file_id"], metadata)
        record["batch_id"] = batch["id"]
        self._save()
        log.info(
            "batch %s: %d requests to %s (round %d) submitted",
            batch["id"],
            record["requests"],
            record["model"],
            record["round"],
        )

    async def _wait(self, live: list[dict[str, Any]]) -> AsyncIterator[list[Result]]:
        """Poll the batches with growing pauses; collect each as it ends."""
        client = self._client
        assert client is not None
        pending = {r["batch_id"]: r for r in live}
        delay = self.settings.poll_initial
        stuck_said: set[str] = set()
        while pending and not self.stopping:
            for batch_id, record in list(pending.items()):
                try:
                    batch = await client.retrieve(batch_id)
                except BatchApiError as exc:
                    if exc.status != 404:
                        raise
                    del pending[batch_id]  # gone: the built-in mock's die with their run
                    self._lost(record, batch_id)
                    continue
                self._show(record, batch)
                status = batch.get("status")
                if status == "finalizing" and batch_id not in stuck_said:
                    since = batch.get("finalizing_at") or time.time()
                    if time.time() - since > STUCK_S:
                        stuck_said.add(batch_id)
                        log.warning("batch %s has been finalizing for over an hour", batch_id)
                if status in TERMINAL:
                    del pending[batch_id]
                    results = await self._collect(record, batch)
                    if results:
                        yield results
                if self.stopping:
                    return
            if pending and not self.settings.wait:  # --no-wait: one look, then exit
                self.submitted_only = True
                self.stop(f"{len(pending)} batches running: rerun the same command to collect")
                return
            if pending:
                self._woken.clear()
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self._woken.wait(), delay)
                delay = min(delay * 1.5, self.settings.poll_max)

    def _lost(self, record: dict[str, Any], batch_id: str) -> None:
        """A recorded batch the provider does not know: its requests are sent again."""
        mine = [i for i in self._ids(record) if i in self._todo]
        log.warning(
            "batch %s is unknown to the provider (404): its %d requests are submitted again",
            batch_id,
            len(mine),
        )
        for cid in mine:
            self._last[cid] = f"batch {batch_id} was lost (404)"
        record["status"] = "lost"
        self._save()

    def _show(self, record: dict[str, Any], batch: dict[str, Any]) -> None:
        counts = batch.get("request_counts") or {}
        state = (
            str(batch.get("status")),
            int(counts.get("completed") or 0),
            int(counts.get("failed") or 0),
            int(counts.get("total") or record["requests"]),
        )
        if self._states.get(batch["id"], (None,))[0] != state[0]:
            record["status"] = state[0]  # last seen: --fresh refuses while it may still run
            self._save()
            log.info(
                "batch %s (%s, round %d): %s, %d/%d done",
                batch["id"],
                record["model"],
                record["round"],
                state[0],
                state[1] + state[2],
                state[3],
            )
        self._states[batch["id"]] = state

    async def _collect(self, record: dict[str, Any], batch: dict[str, Any]) -> list[Result]:
        """The final results of an ended batch; what it left without one stays to do."""
        client, status, batch_id = self._client, batch["status"], batch["id"]
        assert client is not None
        mine = [i for i in self._ids(record) if i in self._todo]
        if status == "failed":
            problem = _first_error(batch)
            log.error("batch %s failed: %s", batch_id, problem)
            message = f"the Batch API refused batch {batch_id}: {problem}"
            results = [
                error_result(self._todo.pop(i), ErrorType.BAD_REQUEST.value, message) for i in mine
            ]
            self._collected(record)
            return [dataclasses.replace(r, mode="batch") for r in results]
        files = [batch.get("output_file_id"), batch.get("error_file_id")]
        counts = batch.get("request_counts") or {}
        if status == "completed" and not any(files) and (counts.get("completed") or 0) > 0:
            self.stop(
                f"batch {batch_id} completed without an output file: rerun later to fetch it "
                "(nothing is sent again while the batch is on record)"
            )
            return []
        outcomes = {}
        wanted = set(mine)
        for file_id in filter(None, files):
            try:
                data = await client.download(file_id)
            except ContentGone as exc:
                log.warning(
                    "batch %s: %s; its requests without a result are sent again", batch_id, exc
                )
                continue
            for outcome in read_lines(data):
                if outcome.custom_id in wanted:
                    outcomes[outcome.custom_id] = outcome
        results = []
        for cid in mine:
            outcome = outcomes.get(cid)
            if outcome is None or outcome.attempt is None:
                reason = outcome.missing if outcome is not None else None
                self._last[cid] = reason or f"batch {batch_id} {status} before it ran"
                continue
            attempt = outcome.attempt
            self._tries[cid] += 1
            self.sent += 1
            if (usage := attempt.billed) is not None:
                self._billed[cid].append(usage)
            if attempt.error is not None and attempt.error.retryable:
                self._last[cid] = attempt
                continue
            checked = self._reasks.check(cid, attempt)
            if checked is None:  # invalid: re-asked in the next round
                self._last[cid] = f"re-ask {self._reasks.asked[cid]} of an invalid reply"
                continue
            results.append(self._result(cid, attempt, *checked))
        self._collected(record)
        return results

    def _collected(self, record: dict[str, Any]) -> None:
        """Say in the record that its batch's files were read (--fresh may drop it now)."""
        record["collected"] = True
        self._save()

    def _result(self, cid: str, attempt: Attempt, parsed=None, problem=None, reasks=None):
        """The row of a request's final outcome, billed for every line of it that ran."""
        request = self._todo.pop(cid)
        usage = Usage.total(self._billed.pop(cid, []))
        made = self._tries.pop(cid, 1)
        asked = self._reasks.done(cid)
        reasks = asked if reasks is None else reasks
        result = to_result(
            request, attempt, made, usage=usage, reasks=reasks, parsed=parsed, invalid=problem
        )
        return dataclasses.replace(result, latency_s=None, mode="batch")

    def _invalid_rows(self) -> list[Result]:
        """The requests whose re-ask never came back, as `invalid_output` with the last
        reply (a re-ask answered with an error status ends in that error instead)."""
        rows = []
        for cid in [c for c in self._todo if c in self._reasks.invalid]:
            last = self._last.get(cid)
            if isinstance(last, Attempt):
                rows.append(self._result(cid, last))
                continue
            attempt, problem = self._reasks.invalid[cid]
            rows.append(self._result(cid, attempt, None, problem, self._reasks.asked[cid] - 1))
        return rows

    async def _leftovers(self) -> AsyncIterator[list[Result]]:
        """What the rounds left: sent online (the fallback), else error rows saying why."""
        rounds = self.settings.rounds
        invalid = self._invalid_rows()
        if invalid:
            yield invalid
        if not self.settings.submit:  # `batcher batch cancel`: the rest is sent by a rerun
            results = []
            for cid, request in self._todo.items():
                last = self._last.get(cid)
                why = last if isinstance(last, str) else "in no batch that ran"
                if isinstance(last, Attempt) and last.error is not None:
                    status = f"HTTP {last.http_status} " if last.http_status else ""
                    why = f"its last line failed with {status}{last.error.error_type}"
                message = f"{why} (batcher batch cancel): rerun the job to send it"
                results.append(error_result(request, ErrorType.NOT_SENT.value, message))
            self.stop(f"batches cancelled: {len(results):,} requests not sent (rerun to send them)")
            self._todo.clear()
            yield [dataclasses.replace(r, mode="batch") for r in results]
            return
        if self.settings.fallback == "online" and self._online is not None:
            left = len(self._todo)
            log.info("%d requests left after %d batch rounds: sending them online", left, rounds)
            requests = list(self._requests(set(self._todo)))
            self._todo.clear()
            self._inner = self._online(requests)
            try:
                async for results in self._inner:
                    yield results
            finally:
                await self._inner.aclose()
            return
        results = []
        for cid, request in list(self._todo.items()):
            last = self._last.get(cid)
            if isinstance(last, Attempt):
                result = self._result(cid, last)
            else:
                message = (
                    f"{last or 'no outcome'}; still without one after {rounds} batch rounds "
                    "(rerun with --retry-errors, or --fallback online)"
                )
                result = error_result(request, ErrorType.NOT_SENT.value, message)
            results.append(dataclasses.replace(result, mode="batch"))
        self._todo.clear()
        yield results


def _first_error(batch: dict[str, Any]) -> str:
    """The first validation error of a failed batch, in one line."""
    errors = (batch.get("errors") or {}).get("data") or []
    if not errors or not isinstance(errors[0], dict):
        return "no reason given"
    e = errors[0]
    where = f"line {e['line']}: " if e.get("line") else ""
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    return f"{where}{e.get('message') or e.get('code')}{more}"

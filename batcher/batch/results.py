"""Batch API output files as results (`batcher run --batch-output FILE`): each line joined
to the job's request of the same `custom_id`, read as `--mode batch` reads it, and given to
the senders as known results (like the response cache's), so only the rest is sent."""

from __future__ import annotations

import dataclasses
import logging
import re
from collections.abc import Iterable, Sequence
from pathlib import Path

import orjson

from batcher.batch.lines import LineOutcome, custom_id, read_lines
from batcher.engine.results import error_result, to_result
from batcher.errors import UsageError, os_problem
from batcher.io import spool
from batcher.types import ErrorType, Request, Result

log = logging.getLogger("batcher.batch")
DATED = re.compile(r"-(\d{4}-\d{2}-\d{2}|\d{8}|\d{4})")  # what follows a name in a version

__all__ = ["BatchOutput", "FirstOf", "is_batch_output", "output_results", "with_batch_output"]


class BatchOutput:
    """The final outcomes of Batch API output and error files, by custom_id. A line with
    no outcome (expired, cancelled) or a retryable error (429, 5xx) is no result: that
    request is sent."""

    def __init__(self, outcomes: dict[str, tuple[LineOutcome, str]]) -> None:
        self._outcomes = outcomes  # custom_id: the outcome, and where it was read
        self.used = 0

    @classmethod
    def read(cls, paths: Sequence[Path]) -> BatchOutput:
        outcomes: dict[str, tuple[LineOutcome, str]] = {}
        for path in paths:
            try:
                data = Path(path).read_bytes()
            except OSError as exc:
                raise UsageError(f"--batch-output {path}: {os_problem(exc)}") from None
            found = 0
            for outcome in read_lines(data):
                found += 1
                final = outcome.attempt is not None and not (
                    outcome.attempt.error is not None and outcome.attempt.error.retryable
                )
                if final or outcome.custom_id not in outcomes:
                    outcomes[outcome.custom_id] = (outcome, str(path))
            if not found:
                raise UsageError(f"--batch-output {path}: {_not_output(data)}")
        return cls(outcomes)

    def check(self, requests: Iterable[Request]) -> int:
        """Fail before anything is sent when the files were not made for these requests: no
        line matches one, or a reply came from another of the job's models than its request
        names (the file was made with other -m or --sweep options: its rows would be
        mislabelled). How many of the requests the files answer."""
        matched, pairs, models = 0, {}, set()
        for request in requests:
            models.add(request.model)
            found = self._outcomes.get(custom_id(request))
            if found is None:
                continue
            matched += 1
            reply = found[0].attempt.reply if found[0].attempt is not None else None
            if reply is not None and reply.response_model:
                pairs.setdefault((request.model, reply.response_model), found)
        if self._outcomes and not matched:
            raise UsageError(
                "--batch-output: no line's custom_id is one of this job's requests (custom_ids "
                "are row-model-combination-sample, as `batcher export-batch` writes them)"
            )
        for (asked, answered), (outcome, where) in pairs.items():
            if same_model(asked, answered):
                continue
            if any(same_model(m, answered) for m in models - {asked}):
                raise UsageError(
                    f"--batch-output {where}: custom_id {outcome.custom_id} is a request to "
                    f"{asked} here, but {answered} answered it: give the -m and --sweep "
                    "options the file's requests were made with"
                )
            log.warning(
                "--batch-output %s: %s answered the requests to %s (response_model says so in "
                "each row; a file made with other -m options would do this)",
                where,
                answered,
                asked,
            )
        return matched

    def get(self, request: Request) -> Result | None:
        found = self._outcomes.get(custom_id(request))
        attempt = found[0].attempt if found is not None else None
        if attempt is None or (attempt.error is not None and attempt.error.retryable):
            return None
        self.used += 1
        result = to_result(request, attempt, 1, usage=attempt.billed)
        return dataclasses.replace(result, latency_s=None, mode="batch")


def _not_output(data: bytes) -> str:
    """Why a file holds no Batch API output line."""
    try:
        first = orjson.loads(next(iter(data.splitlines()), b""))
    except orjson.JSONDecodeError:
        first = None
    if isinstance(first, dict) and {"method", "url", "body"} <= first.keys():
        return "a Batch API input file (requests); give the output or error file it made"
    return "no Batch API output line (custom_id with a response or an error)"


def same_model(asked: str, answered: str) -> bool:
    """Whether a reply's model is the one asked for: the same name or a dated version of it
    ("gpt-4o-mini-2024-07-18", "gpt-4-0613"), a gateway's prefix ("openai/") aside."""
    asked, answered = (name.rsplit("/", 1)[-1].lower() for name in (asked, answered))
    rest = answered[len(asked) :] if answered.startswith(asked) else None
    return rest == "" or (rest is not None and DATED.fullmatch(rest) is not None)


class FirstOf:
    """Known results from the first source that has one."""

    def __init__(self, *sources: object) -> None:
        self.sources = [s for s in sources if s is not None]

    def get(self, request: Request) -> Result | None:
        for source in self.sources:
            found = source.get(request)  # type: ignore[attr-defined]
            if found is not None:
                return found
        return None


def with_batch_output(paths: Sequence[Path], spool_path: Path) -> BatchOutput:
    """The results of Batch API output files, checked against the job's requests in the
    spool at `spool_path` (those done by earlier runs too)."""
    output = BatchOutput.read(paths)
    every = (r for batch in spool.batches(spool_path) for r in spool.requests_in(batch))
    matched = output.check(every)
    log.info("--batch-output: %d lines are results of this job's requests", matched)
    return output


def is_batch_output(path: Path) -> bool:
    """Whether `path` is a Batch API output or error file: JSON Lines whose first line has a
    custom_id and a response or an error."""
    try:
        with open(path, "rb") as f:
            first = f.readline(1 << 20)
    except OSError:
        return False
    return next(read_lines(first), None) is not None


def output_results(path: Path) -> list[Result]:
    """The lines of a Batch API output or error file as result rows, in file order (for
    `batcher cost`): id the custom_id, model the one that answered (a file's one model for
    its error lines), usage from the body, mode "batch"."""
    try:
        outcomes = list(read_lines(Path(path).read_bytes()))
    except OSError as exc:
        raise UsageError(f"{path}: {os_problem(exc)}") from None
    if not outcomes:
        raise UsageError(f"{path}: no Batch API output lines (custom_id and response or error)")
    replies = [o.attempt.reply for o in outcomes if o.attempt is not None]
    models = {r.response_model for r in replies if r is not None and r.response_model}
    only = models.pop() if len(models) == 1 else "unknown"
    results = []
    for i, outcome in enumerate(outcomes):
        attempt = outcome.attempt
        reply = attempt.reply if attempt is not None else None
        model = (reply.response_model if reply is not None else None) or only
        request = Request(i, outcome.custom_id, model, 0, b"", "", 0, None)
        if attempt is None:
            why = outcome.missing or "no outcome"
            result = error_result(request, ErrorType.NOT_SENT.value, why)
        else:
            result = to_result(request, attempt, 1, usage=attempt.billed)
        results.append(dataclasses.replace(result, latency_s=None, mode="batch"))
    return results

"""Structured output in a Batch API job: each reply checked against its request's own
`response_format` as online; an invalid one is re-asked in the next batch round (the reply
and the problem added to the conversation, as `engine.reask` does online), up to the job's
re-asks. A request whose re-asks or rounds ran out ends `invalid_output` with its last reply.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

import orjson

from batcher.batch.lines import custom_id
from batcher.engine.http import Attempt
from batcher.structured.validate import ReplyValidator
from batcher.types import Request, canonical_json

__all__ = ["BatchReasks"]


class BatchReasks:
    """The validators of a job's structured requests, and the re-asks under way, by
    custom_id."""

    def __init__(self, limit: int) -> None:
        self.limit = limit  # re-asks per request at most (--reask)
        self.validators: dict[str, ReplyValidator] = {}
        self.asked: Counter[str] = Counter()
        self.invalid: dict[str, tuple[Attempt, str]] = {}  # the last reply, and its problem
        self._bodies: dict[str, bytes] = {}  # the conversation to send next
        self._due: dict[str, tuple[str, dict]] = {}  # re-asks whose bodies are to be made

    def check(self, cid: str, attempt: Attempt) -> tuple[dict | None, str | None] | None:
        """The parsed object and the problem of a reply; None when it is to be re-asked."""
        validator = self.validators.get(cid)
        reply = attempt.reply
        if validator is None or reply is None:
            return None, None
        check = validator.check(reply.content, reply.finish_reason)
        if check.problem is not None and self.asked[cid] < self.limit:
            self.asked[cid] += 1
            self.invalid[cid] = (attempt, check.problem)
            self._due[cid] = (reply.content or "", validator.reask_message(check))
            return None
        return check.value, check.problem

    def done(self, cid: str) -> int:
        """Forget a request that has its row; the re-asks it took."""
        self.validators.pop(cid, None)
        self.invalid.pop(cid, None)
        self._bodies.pop(cid, None)
        return self.asked.pop(cid, 0)

    @property
    def due(self) -> set[str]:
        return set(self._due)

    def make_bodies(self, requests: Iterable[Request]) -> None:
        """The next bodies of the re-asks due, from their current ones (`requests`)."""
        for request in requests:
            cid = custom_id(request)
            content, message = self._due.pop(cid)
            body = orjson.loads(request.payload)
            body["messages"] = [
                *body["messages"],
                {"role": "assistant", "content": content},
                message,
            ]
            self._bodies[cid] = canonical_json(body)

    def body(self, cid: str) -> bytes | None:
        """The conversation a re-asked request is to send; None: the body as built."""
        return self._bodies.get(cid)

"""Structured output in the engine: a reply is checked against the request's own
`response_format`, and re-asked with the problem as a follow-up message until it is valid or
the re-asks run out. Every reply is billed, so the row's usage sums over all of them."""

from __future__ import annotations

import dataclasses
from collections.abc import Awaitable, Callable
from typing import Any

from batcher.engine.http import Attempt
from batcher.engine.results import to_result
from batcher.structured.validate import ReplyValidator, Validators
from batcher.types import Request, Result, Usage

# Sends a body (a dict) to its end, retries included: the last attempt and attempts made.
Complete = Callable[[dict], Awaitable[tuple[Attempt, int]]]


async def validated(
    request: Request,
    attempt: Attempt,
    made: int,
    validator: ReplyValidator,
    complete: Complete,
    reasks: int,
    billed: list[Usage],
) -> Result:
    """The row of a structured request whose first reply is `attempt` (`made` attempts so
    far): valid, re-asked up to `reasks` times, or `invalid_output` with the last reply.
    `complete` adds what each re-ask was billed to `billed`, the row's usage."""
    body = request.body
    messages = list(body["messages"])
    asked = 0
    while True:
        reply = attempt.reply
        assert reply is not None
        usage = Usage.total(billed)
        check = validator.check(reply.content, reply.finish_reason)
        if check.problem is None:
            return to_result(request, attempt, made, usage=usage, reasks=asked, parsed=check.value)
        if asked >= reasks:
            return to_result(
                request, attempt, made, usage=usage, reasks=asked, invalid=check.problem
            )
        asked += 1
        messages += [
            {"role": "assistant", "content": reply.content or ""},
            validator.reask_message(check),
        ]
        retry, more = await complete({**body, "messages": messages})
        made += more
        if retry.reply is None:  # the re-ask itself failed: the row ends in that error
            return to_result(request, retry, made, usage=Usage.total(billed), reasks=asked)
        attempt = retry


def known_result(known: Any, validators: Validators, request: Request) -> Result | None:
    """What `known` (the response cache) has for `request`, checked like a fresh reply;
    None when it has nothing, or nothing valid."""
    found = known.get(request)
    return None if found is None else checked(found, validators.of(request.payload))


def checked(known: Result, validator: ReplyValidator | None) -> Result | None:
    """A known result (the cache) checked like a fresh reply: None when it is not valid."""
    if validator is None or known.reply is None:
        return known
    check = validator.check(known.reply.content, known.reply.finish_reason)
    return None if check.problem is not None else dataclasses.replace(known, parsed=check.value)

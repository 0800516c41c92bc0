"""The prompt prefixes a job's rows share, for `batcher estimate`: what a prompt cache could
take off the bill.

A checking-pass sink keys each request's first 1,024, 2,048, 4,096, ... tokens
(`types.prefix_keys`). A request whose first L tokens match an earlier request's to the same
model could be answered with L tokens cached: at least L, since only those levels are
compared (a lower bound, so the saving is not overstated). Providers cache from 1,024
tokens (OpenAI; Anthropic's Sonnet and Opus), some from more: the bound holds for those that
start at 1,024.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from batcher.types import CACHEABLE_TOKENS, Request, prefix_keys

LEVELS = tuple(CACHEABLE_TOKENS << j for j in range(6))  # 1,024 .. 32,768 tokens
MAX_PREFIXES = 1_000_000  # prefixes remembered; past them, new ones count as unshared


@dataclass
class SharedPrefix:
    """One group of requests sharing their first 1,024+ tokens."""

    model: str
    requests: int
    tokens: int  # the longest level two of them share (at least)
    where: str  # "the system prompt", "the first 3 messages", ...
    first_id: str  # the row of its first request


@dataclass
class SharedPrefixes:
    """What the pass found: per model the cached tokens a warm cache would give."""

    cached_tokens: dict[str, int] = field(default_factory=dict)  # per model, at least
    groups: list[SharedPrefix] = field(default_factory=list)  # the largest first
    shared: int = 0  # prefixes two requests or more share
    sharing: int = 0  # the requests with one of those
    complete: bool = True  # False: more distinct prefixes than MAX_PREFIXES

    def to_dict(self) -> dict[str, Any]:
        return {
            "cached_tokens": dict(self.cached_tokens),
            "groups": [vars(g) for g in self.groups],
            "shared": self.shared,
            "sharing": self.sharing,
            "complete": self.complete,
        }


class PrefixCounter:
    """A checking-pass sink: the shared prefixes of the requests of good rows."""

    def __init__(self) -> None:
        self._seen: set[tuple[str, str]] = set()  # (model, key) of every level
        self._groups: dict[tuple[str, str], SharedPrefix] = {}  # by the 1,024-token key
        self._cached: dict[str, int] = {}
        self.complete = True

    def __call__(self, batch: Any, requests: list[Request], todo: list[bool]) -> None:
        for request in requests:
            if request.bad_input is None and request.cache_prefix is not None:
                self._add(request)

    def _add(self, request: Request) -> None:
        messages = request.body.get("messages")
        keys = prefix_keys(messages, LEVELS)
        model, hit = request.model, 0
        for level, (key, _) in zip(LEVELS, keys):
            if (model, key) in self._seen:
                hit = level
            elif len(self._seen) < MAX_PREFIXES:
                self._seen.add((model, key))
            else:
                self.complete = False
        first_key, at = keys[0]
        group = self._groups.get((model, first_key))
        if group is None:
            if len(self._groups) < MAX_PREFIXES:
                where = _where(messages, at)
                self._groups[(model, first_key)] = SharedPrefix(model, 1, 0, where, request.row_id)
            return
        group.requests += 1
        group.tokens = max(group.tokens, hit)
        self._cached[model] = self._cached.get(model, 0) + min(hit, request.est_prompt_tokens)

    def found(self, top: int = 3) -> SharedPrefixes:
        shared = [g for g in self._groups.values() if g.requests > 1]
        shared.sort(key=lambda g: (-g.requests, g.first_id))
        sharing = sum(g.requests for g in shared)
        return SharedPrefixes(dict(self._cached), shared[:top], len(shared), sharing, self.complete)


def _where(messages: list[dict], at: int) -> str:
    """Which part of the prompt its first 1,024 tokens are."""
    role = messages[0].get("role") if messages else None
    if at == 0:
        return "the system prompt" if role in ("system", "developer") else f"the {role} message"
    return f"the first {at + 1} messages"

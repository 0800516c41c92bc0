"""The mock's prompt cache: the cached tokens of a prompt whose prefix was seen lately.

As OpenAI's automatic caching does it: a prompt of at least `MIN_TOKENS` tokens is cached in
steps of `STEP_TOKENS`; a later prompt to the same model that starts with a cached prefix,
within `window` seconds of that prefix's last use, has the longest such prefix's tokens
cached, and every use keeps a prefix alive. A prefix is cached once the request that wrote
it has been answered (`ready_after` seconds after it arrived): requests sent together all
miss, as they do at a provider. Tokens are the mock's (4 characters each); prefixes are
over the messages' texts in order. `window=0` caches nothing.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict

MIN_TOKENS = 1024
STEP_TOKENS = 128
_CHARS = 4  # per token, as the mock counts them
_MAX_ENTRIES = 200_000  # prefixes remembered (least recently used go first)


class PromptCache:
    """Prefixes seen by model: (when cached, when last used) of each."""

    def __init__(self, window: float) -> None:
        self.window = window
        self._seen: OrderedDict[bytes, tuple[float, float]] = OrderedDict()

    def clear(self) -> None:
        self._seen.clear()

    def use(self, model: str, texts: list[str], t: float, ready_after: float) -> tuple[int, int]:
        """(cached, written): the tokens of the longest live prefix of this prompt, and the
        cacheable tokens past it, which this prompt writes to the cache."""
        text = "\x1e".join(texts)
        step = STEP_TOKENS * _CHARS
        if not self.window or len(text) < MIN_TOKENS * _CHARS:
            return 0, 0
        digest = hashlib.blake2b(model.encode() + b"\x00", digest_size=16)
        cached = cacheable = 0
        for end in range(step, len(text) + 1, step):
            digest.update(text[end - step : end].encode())
            if end < MIN_TOKENS * _CHARS:
                continue
            key = digest.copy().digest()
            ready, used = self._seen.pop(key, (t + ready_after, None))
            live = used is not None and t - used <= self.window
            if live and ready <= t and cached == cacheable:
                cached = end // _CHARS
            elif not live:
                ready = t + ready_after  # written again
            self._seen[key] = (ready, t)
            cacheable = end // _CHARS
        while len(self._seen) > _MAX_ENTRIES:
            self._seen.popitem(last=False)
        return cached, cacheable - cached

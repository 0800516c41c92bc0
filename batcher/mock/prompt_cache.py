"""The mock's prompt cache: the cached tokens of a prompt whose prefix was seen lately.

As OpenAI's automatic caching does it: a prompt of at least `MIN_TOKENS` tokens is cached in
steps of `STEP_TOKENS`; a later prompt to the same model that starts with a cached prefix,
within `window` seconds of that prefix's last use, has the longest such prefix's tokens
cached, and every use keeps a prefix alive. Tokens are the mock's (4 characters each); the
prefixes are over the messages' texts in order. `window=0` caches nothing.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict

MIN_TOKENS = 1024
STEP_TOKENS = 128
_CHARS = 4  # per token, as the mock counts them
_MAX_ENTRIES = 200_000  # prefixes remembered (least recently used go first)


class PromptCache:
    """Prefixes seen by model, with the time each was last used."""

    def __init__(self, window: float) -> None:
        self.window = window
        self._seen: OrderedDict[bytes, float] = OrderedDict()

    def clear(self) -> None:
        self._seen.clear()

    def use(self, model: str, texts: list[str], t: float) -> tuple[int, int]:
        """(cached, written): the tokens of the longest live prefix of this prompt, and the
        cacheable tokens past it, which this prompt now writes to the cache."""
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
            last = self._seen.pop(key, None)
            if last is not None and t - last <= self.window and cached == cacheable:
                cached = end // _CHARS
            self._seen[key] = t
            cacheable = end // _CHARS
        while len(self._seen) > _MAX_ENTRIES:
            self._seen.popitem(last=False)
        return cached, cacheable - cached

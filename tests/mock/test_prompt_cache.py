"""The mock's prompt cache: prefixes of 1,024+ tokens, in 128-token steps, live for a window."""

from __future__ import annotations

from batcher.mock.prompt_cache import PromptCache

SHARED = "s" * 4096 + "t" * 1000  # 1,024 tokens, then 250 more: 1,152 cacheable (9 steps)


def test_a_prefix_is_cached_once_its_first_request_was_answered():
    cache = PromptCache(window=10.0)
    assert cache.use("m", [SHARED, "q1"], t=0.0, ready_after=0.5) == (0, 1152)
    assert cache.use("m", [SHARED, "q2"], t=0.2, ready_after=0.5) == (0, 1152)  # in flight
    assert cache.use("m", [SHARED, "q3"], t=0.6, ready_after=0.5) == (1152, 0)
    assert cache.use("m2", [SHARED, "q4"], t=0.7, ready_after=0.5) == (0, 1152)  # per model


def test_the_longest_cached_step_counts_and_use_keeps_it_alive():
    cache = PromptCache(window=1.0)
    cache.use("m", ["s" * 4096 + "u" * 600], t=0.0, ready_after=0.0)  # 1,024 + 128 cached
    assert cache.use("m", ["s" * 4096 + "v" * 600], t=0.9, ready_after=0.0) == (1024, 128)
    assert cache.use("m", ["s" * 4096 + "w" * 600], t=1.8, ready_after=0.0) == (1024, 128)
    assert cache.use("m", ["s" * 4096 + "w" * 600], t=3.0, ready_after=0.0) == (0, 1152)


def test_short_prompts_and_a_zero_window_cache_nothing():
    assert PromptCache(window=10.0).use("m", ["x" * 4095], t=0.0, ready_after=0.0) == (0, 0)
    cache = PromptCache(window=0.0)
    cache.use("m", [SHARED], t=0.0, ready_after=0.0)
    assert cache.use("m", [SHARED], t=0.1, ready_after=0.0) == (0, 0)

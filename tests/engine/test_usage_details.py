"""Usage details read from every documented usage shape: unknown is None, never 0."""

from __future__ import annotations

import pytest

from batcher.engine.replies import usage_of
from batcher.types import UNKNOWN_USAGE, Usage


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (  # OpenAI chat completions
            {
                "usage": {
                    "prompt_tokens": 2000,
                    "completion_tokens": 300,
                    "total_tokens": 2300,
                    "prompt_tokens_details": {"cached_tokens": 1536, "audio_tokens": 10},
                    "completion_tokens_details": {"reasoning_tokens": 200, "audio_tokens": 5},
                }
            },
            Usage(2000, 300, 2300, None, 1536, None, 200, None, 15),
        ),
        (  # Octen: meta.usage, reasoning and searches at the top
            {
                "meta": {
                    "usage": {
                        "prompt_tokens": 40,
                        "completion_tokens": 30,
                        "total_tokens": 70,
                        "reasoning_tokens": 12,
                        "num_search_queries": 2,
                    }
                }
            },
            Usage(40, 30, 70, None, None, None, 12, 2, None),
        ),
        (  # Anthropic's own keys passed on: input_tokens leave the cache out
            {
                "usage": {
                    "input_tokens": 20,
                    "output_tokens": 50,
                    "cache_read_input_tokens": 1500,
                    "cache_creation_input_tokens": 300,
                    "server_tool_use": {"web_search_requests": 1},
                }
            },
            Usage(1820, 50, 1870, None, 1500, 300, None, 1, None),
        ),
        (  # LiteLLM-style: prompt_tokens already hold the cache
            {
                "usage": {
                    "prompt_tokens": 1820,
                    "completion_tokens": 50,
                    "total_tokens": 1870,
                    "cache_read_input_tokens": 1500,
                    "cache_creation_input_tokens": 300,
                    "prompt_tokens_details": {"cached_tokens": 1500},
                }
            },
            Usage(1820, 50, 1870, None, 1500, 300, None, None, None),
        ),
        (  # OpenAI Responses-style names
            {
                "usage": {
                    "input_tokens": 1200,
                    "output_tokens": 80,
                    "input_tokens_details": {"cached_tokens": 1024, "cache_write_tokens": 0},
                    "output_tokens_details": {"reasoning_tokens": 64},
                }
            },
            Usage(1200, 80, 1280, None, 1024, 0, 64, None, None),
        ),
        (  # counts alone: every detail unknown
            {"usage": {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7}},
            Usage(5, 2, 7),
        ),
        ({"choices": []}, UNKNOWN_USAGE),
    ],
)
def test_usage_shapes(data, expected):
    assert usage_of(data) == expected


def test_nonsense_detail_is_unknown():
    usage = usage_of(
        {
            "usage": {
                "prompt_tokens": 5,
                "completion_tokens": 2,
                "prompt_tokens_details": {"cached_tokens": -3},
                "completion_tokens_details": {"reasoning_tokens": "many"},
            }
        }
    )
    assert (usage.cached_tokens, usage.reasoning_tokens) == (None, None)


def test_total_sums_each_detail_unknown_when_a_reply_did_not_say():
    first = Usage(100, 10, 110, None, 64, None, 4, 1, None)
    second = Usage(120, 20, 140, None, 96, None, 8, None, None)
    assert Usage.total([first, second]) == Usage(220, 30, 250, None, 160, None, 12, None, None)

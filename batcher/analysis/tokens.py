"""Prompt token counts for `batcher estimate`: tiktoken's when it is installed and its
encoding is available offline, else characters / 4 (the default everywhere else)."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterable
from typing import Any

from batcher.io.check import InputScan
from batcher.types import Request

log = logging.getLogger(__name__)

ENCODING = "o200k_base"  # the encoding of OpenAI's current models; others differ a little


def offline_encoder() -> Any | None:
    """tiktoken's encoder, or None when tiktoken is missing or would need the network."""
    try:
        import tiktoken
    except ImportError:
        return None
    try:
        return tiktoken.get_encoding(ENCODING)
    except Exception as exc:  # not cached locally: it would be downloaded
        log.info("tiktoken encoding %s not available offline (%s)", ENCODING, exc)
        return None


def texts(request: Request) -> Iterable[str]:
    for message in request.body.get("messages", ()):
        content = message.get("content")
        if isinstance(content, str):
            yield content
        elif isinstance(content, list):
            for part in content:
                if isinstance(part, dict) and isinstance(part.get("text"), str):
                    yield part["text"]


class TokenCounter:
    """A checking-pass sink counting the prompt tokens of every request with tiktoken."""

    def __init__(self, encoder: Any) -> None:
        self.encoder = encoder
        self.per_model: dict[str, int] = {}

    @classmethod
    def offline(cls) -> TokenCounter | None:
        """A counter, or None when tiktoken or its encoding is not available offline."""
        encoder = offline_encoder()
        return None if encoder is None else cls(encoder)

    def __call__(self, batch: Any, requests: list[Request], todo: list[bool]) -> None:
        encode = self.encoder.encode
        for request in requests:
            if request.bad_input is None:
                tokens = sum(len(encode(t, disallowed_special=())) for t in texts(request))
                counts = self.per_model
                counts[request.model] = counts.get(request.model, 0) + max(1, tokens)

    def recount(self, found: InputScan) -> InputScan:
        """The pass's figures with these counts instead of characters / 4."""
        models = {
            m: dataclasses.replace(c, est_prompt_tokens=self.per_model.get(m, 0))
            for m, c in found.per_model.items()
        }
        total = sum(self.per_model.values())
        return dataclasses.replace(found, per_model=models, est_prompt_tokens=total)

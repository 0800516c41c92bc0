"""Prompt token counts for `batcher estimate`: tiktoken's when it is installed and its
encoding is available offline, else characters / 4 (the default everywhere else)."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterable
from typing import Any

from batcher.io.rows import InputScan
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


def recount(found: InputScan, requests: Iterable[Request]) -> tuple[InputScan, str]:
    """The scan with prompt tokens counted by tiktoken when possible; and how they were."""
    encoder = offline_encoder()
    if encoder is None:
        return found, "characters / 4"
    per_model = {model: 0 for model in found.per_model}
    for request in requests:
        if request.bad_input is None:
            tokens = sum(len(encoder.encode(t, disallowed_special=())) for t in texts(request))
            per_model[request.model] = per_model.get(request.model, 0) + max(1, tokens)
    models = {
        m: dataclasses.replace(c, est_prompt_tokens=per_model.get(m, 0))
        for m, c in found.per_model.items()
    }
    total = sum(per_model.values())
    return dataclasses.replace(found, per_model=models, est_prompt_tokens=total), (
        f"tiktoken {ENCODING}"
    )

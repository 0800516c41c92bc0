"""Templates over a row's columns: `{text}` fields, checked once, filled per row; and the
few-shot conversation file whose message contents are templates."""

from __future__ import annotations

import os
import string
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import orjson

from batcher.errors import InputError, os_problem, quote, show_path
from batcher.io.input_schema import compact_json


class RowProblem(Exception):
    """What is wrong with one row (the caller adds file and line)."""


@dataclass(frozen=True, slots=True)
class Template:
    """A parsed template: (literal, field or None, format spec) pieces."""

    label: str  # "template" or "system"
    pieces: tuple[tuple[str, str | None, str], ...]

    @property
    def fields(self) -> tuple[str, ...]:
        return tuple(name for _, name, _ in self.pieces if name is not None)

    def render(self, row: Mapping[str, Any]) -> str:
        """The template filled from the row; raises RowProblem for a missing column."""
        out: list[str] = []
        for literal, name, spec in self.pieces:
            out.append(literal)
            if name is not None:
                if name not in row:
                    raise RowProblem(
                        f"{self.label} field {quote(name)} names no column "
                        f"(columns: {_column_list(row)})"
                    )
                out.append(self._fill(name, row[name], spec))
        return "".join(out)

    def _fill(self, name: str, value: Any, spec: str) -> str:
        text = _template_text(value)
        if not spec:
            return text
        plain = value if isinstance(value, (int, float, str)) else text
        try:
            return format(plain, spec)
        except (ValueError, TypeError) as exc:
            raise RowProblem(f"{self.label} field {quote(name)}: {exc}") from None


@lru_cache(maxsize=64)
def compile_template(text: str, label: str = "template") -> Template:
    """Parse and check a template once: only plain column names such as {text}."""
    try:
        parsed = list(string.Formatter().parse(text))
    except ValueError as exc:
        raise InputError(f"{label}: {exc}") from None
    pieces = []
    for literal, name, spec, conversion in parsed:
        if name is None:
            pieces.append((literal, None, ""))
            continue
        spec = spec or ""
        if not _plain_field(name) or conversion is not None or "{" in spec:
            written = "{" + name + (f"!{conversion}" if conversion else "")
            written += (f":{spec}" if spec else "") + "}"
            raise InputError(
                f"{label}: field {quote(written)} is not allowed: "
                "only plain column names such as {text}"
            )
        pieces.append((literal, name, spec))
    return Template(label, tuple(pieces))


def _plain_field(name: str) -> bool:
    return bool(name) and not name.isdigit() and not any(c in name for c in ".[]")


def _template_text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, (list, tuple, dict)):
        return compact_json(value)
    return str(value)


def _column_list(row: Mapping[str, Any], limit: int = 200) -> str:
    text = ", ".join(map(str, row))
    text = text if len(text) <= limit else text[:limit] + "..."
    return text if text.isprintable() else repr(text)[1:-1]


def load_messages_template(path: str | os.PathLike[str]) -> tuple[dict[str, Any], ...]:
    """A JSON list of {role, content} messages whose contents are templates (few-shot)."""
    source = show_path(path)
    try:
        data = orjson.loads(Path(path).read_bytes())
    except OSError as exc:
        raise InputError(f"{source}: {os_problem(exc)}") from None
    except orjson.JSONDecodeError as exc:
        raise InputError(f"{source}: invalid JSON: {exc}") from None
    if not isinstance(data, list) or not data:
        raise InputError(f"{source}: expected a non-empty JSON list of messages")
    for i, message in enumerate(data, 1):
        ok = isinstance(message, dict) and isinstance(message.get("role"), str)
        if not ok or not isinstance(message.get("content"), str):
            raise InputError(f"{source}: message {i} needs a string 'role' and 'content'")
        compile_template(message["content"], f"{source}: message {i}")
    return tuple(data)


def text_or_file(text: str | None, path: Path | None, option: str) -> str | None:
    """An option's text as given, else the text of its file (`--system` / `--system-file`)."""
    return read_text(path, option) if text is None and path is not None else text


def read_text(path: str | os.PathLike[str], option: str) -> str:
    """A text option's file (`--system-file`, `--template-file`), as UTF-8 text."""
    try:
        return Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"{option} {show_path(path)}: {os_problem(exc)}") from None

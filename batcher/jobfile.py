"""TOML job files: `batcher run --job FILE.toml`, and `batcher.run(job="FILE.toml")`.

A job file holds `JobSpec` fields, checked against the field's own type; what the command
line or a library call sets overrides it (`merge`).

- Keys: the field names, `_` and `-` alike, plus `model` (for `models`), `param` (for
  `params`) and the `limits` table of per-model rate limits (`[limits."MODEL"] rpm = 20`).
- Per-invocation switches (`dry_run`, `fresh`, `retry_errors`, and the command line's `-q`,
  `-v`, `--job`) stay on the command line: a job file describes the job, not one run of it.
- Keys (secrets) never: `api_key`, `token`, `authorization`, ... anywhere in the file is an
  error; a job file names where the key is (`api_key_env`, `api_key_file`).
- Relative paths are relative to the job file's folder; `~` is expanded.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import math
import os
import re
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from batcher.errors import UsageError, is_uri, os_problem
from batcher.spec import CHOICES, JobSpec, keep_columns, unknown_message

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

# Per-invocation switches, and the command line's own: never in a job file.
COMMAND_LINE_ONLY = {
    "dry_run": "--dry-run",
    "fresh": "--fresh",
    "retry_errors": "--retry-errors",
    "quiet": "--quiet",
    "verbose": "--verbose",
    "job": "--job",
    "help": "--help",
    "version": "--version",
}
LIMITS = "limits"
LIMIT_KEYS = ("rpm", "tpm")
ALIASES = {"model": "models", "param": "params", "json_mode": "json"}
# Pairs that cannot both be set; when a caller sets one, it drops the file's other.
EXCLUSIVE = (("system", "system_file"), ("template", "template_file"))
OVERRIDES = (*EXCLUSIVE, ("api_key_env", "api_key_file"))
SECRET_NAMES = frozenset(
    {
        "key",
        "token",
        "auth",
        "authorization",
        "bearer",
        "password",
        "passwd",
        "secret",
        "credentials",
        "accesstoken",
        "authtoken",
        "apitoken",
        "bearertoken",
        "secretkey",
        "privatekey",
        "clientsecret",
    }
)
SECRET_SUFFIXES = ("_secret", "_password", "_access_token", "_auth_token", "_api_token")
NOT_SECRET = frozenset({"api_key_env", "api_key_file"})
ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
FIELDS = {
    f.name: hint
    for f, hint in zip(
        dataclasses.fields(JobSpec), typing.get_type_hints(JobSpec).values(), strict=True
    )
    if f.name not in COMMAND_LINE_ONLY and f.name != "model_limits"
}


@dataclass(frozen=True)
class JobFile:
    """A loaded job file: `JobSpec` field names -> checked values."""

    path: Path
    options: dict[str, Any]


def norm(key: str) -> str:
    """A key as compared: `-` and `_` alike."""
    return key.replace("-", "_")


def load_job_file(path: str | os.PathLike[str]) -> JobFile:
    """Read and check the job file at `path`; every problem is a one-line UsageError."""
    shown = os.fspath(path)
    where = Path(os.path.abspath(os.path.expanduser(shown)))
    doc = _read(where, shown)
    if _has_secret(doc, top=set(FIELDS) | set(ALIASES)):
        raise UsageError(
            f"{shown}: keys do not belong in job files; use api_key_env or api_key_file"
        )
    options: dict[str, Any] = {}
    given: dict[str, str] = {}  # field -> key as written
    for key, value in doc.items():
        name = norm(key)
        if name == LIMITS:
            options["model_limits"] = _limits(value, shown)
            continue
        if name in COMMAND_LINE_ONLY:
            flag = COMMAND_LINE_ONLY[name]
            raise UsageError(
                f"{shown}: {key!r} does not belong in a job file; give {flag} on the command line"
            )
        name = ALIASES.get(name, name)
        if name not in FIELDS:
            raise UsageError(f"{shown}: {_unknown(key)}")
        if name in given:
            raise UsageError(f"{shown}: {given[name]!r} and {key!r} set the same option; give one")
        given[name] = key
        options[name] = _value(name, FIELDS[name], value, where.parent, f"{shown}: key {key!r}")
    for a, b in EXCLUSIVE:
        if a in given and b in given:
            raise UsageError(f"{shown}: give {given[a]!r} or {given[b]!r}, not both")
    return JobFile(path=where, options=options)


def merge(file: Mapping[str, Any], given: Mapping[str, Any]) -> dict[str, Any]:
    """The options to run with: the file's, overridden by what the caller `given` set.

    `params` merge key by key (the caller's win). Setting `system`, `template` or
    `api_key_env` drops the file's `system_file`, `template_file` or `api_key_file` (and
    the other way round), so the caller really overrides."""
    merged = {**file, **given}
    for pair in OVERRIDES:
        for mine, other in (pair, pair[::-1]):
            if mine in given and other not in given:
                merged.pop(other, None)
    if "params" in file and "params" in given:
        merged["params"] = {**file["params"], **given["params"]}
    return merged


def _unknown(key: str) -> str:
    known = {*FIELDS, *ALIASES, LIMITS}
    message = unknown_message("key", key, known)
    return message if "did you mean" in message else f"{message} (see batcher run --help)"


def _read(where: Path, shown: str) -> dict[str, Any]:
    try:
        text = where.read_bytes().decode("utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"{shown}: {os_problem(exc)}") from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        message = " ".join(str(exc).split())
        raise UsageError(f"{shown}: invalid TOML: {message}") from None


def _is_secret(name: str) -> bool:
    n = norm(name.lower())
    if n in NOT_SECRET:
        return False
    compact = n.replace("_", "")
    return compact in SECRET_NAMES or "apikey" in compact or n.endswith(SECRET_SUFFIXES)


def _has_secret(value: Any, top: set[str] | None = None) -> bool:
    """Whether any key, at any depth, is named like a secret (`top`: valid top-level keys)."""
    if isinstance(value, dict):
        for key, item in value.items():
            if (top is None or norm(key) not in top) and _is_secret(key):
                return True
            if _has_secret(item):
                return True
    elif isinstance(value, list):
        return any(_has_secret(item) for item in value)
    return False


def _show(value: Any) -> str:
    """A TOML value as shown in a message."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, list):
        return "a list"
    return repr(value)


def _value(name: str, hint: Any, value: Any, folder: Path, prefix: str) -> Any:
    """`value` checked against the field's type and converted to it."""
    if name == "params":
        if not isinstance(value, dict):
            raise UsageError(f"{prefix}: expected a table of body keys, got {_show(value)}")
        _check_json(value, prefix)
        return dict(value)
    if name == "sweep":
        if not isinstance(value, dict) or not all(
            isinstance(v, list) and v for v in value.values()
        ):
            raise UsageError(f"{prefix}: expected a table of non-empty lists of values")
        _check_json(value, prefix)
        return tuple((k, tuple(v)) for k, v in value.items())
    if name == "keep_columns":
        return _keep_columns(value, prefix)
    if name == "api_key_env" and isinstance(value, str) and not ENV_NAME.fullmatch(value):
        # Never echo the value: it may be the key itself.
        raise UsageError(
            f"{prefix}: expected the name of an environment variable such as "
            "OPENAI_API_KEY, never the key itself"
        )
    if name == "input" and isinstance(value, str) and is_uri(value):
        return value  # s3://..., file://...: not a path of this machine's
    if name == "input":
        hint = Path
    kinds = {k for k in typing.get_args(hint) or (hint,) if k is not type(None)}
    if typing.get_origin(hint) is tuple:  # tuple[str, ...]: one value or a list of them
        items = value if isinstance(value, list) else [value]
        return tuple(_scalar(str, item, folder, prefix) for item in items)
    (kind,) = kinds
    if isinstance(value, (dict, list)):
        raise UsageError(f"{prefix}: expected one value, got {_show(value)}")
    converted = _scalar(kind, value, folder, prefix)
    choices = CHOICES.get(name)
    if choices is not None and converted not in choices:
        shown = ", ".join(repr(c) for c in choices)
        raise UsageError(f"{prefix}: {_show(value)} is not one of {shown}")
    return converted


def _scalar(kind: type, value: Any, folder: Path, prefix: str) -> Any:
    if isinstance(value, (dict, list)):
        raise UsageError(f"{prefix}: expected one value, got {_show(value)}")
    if kind is bool:
        if not isinstance(value, bool):
            raise UsageError(f"{prefix}: {_show(value)} is not a boolean (true or false)")
        return value
    if kind is int:
        if not isinstance(value, int) or isinstance(value, bool):
            raise UsageError(f"{prefix}: {_show(value)} is not a valid integer")
        return value
    if kind is float:
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            raise UsageError(f"{prefix}: {_show(value)} is not a valid float")
        return float(value)
    if not isinstance(value, str):
        raise UsageError(f"{prefix}: {_show(value)} is not a string")
    if kind is Path:
        if not value:
            raise UsageError(f"{prefix}: empty path")
        return Path(os.path.normpath(os.path.join(folder, os.path.expanduser(value))))
    return value


def _keep_columns(value: Any, prefix: str) -> str | tuple[str, ...]:
    if isinstance(value, list):
        if not all(isinstance(c, str) and c.strip() and "," not in c for c in value):
            raise UsageError(f"{prefix}: expected a list of column names")
        return tuple(value) if value else "none"
    if not isinstance(value, str):
        raise UsageError(f"{prefix}: {_show(value)} is not a string")
    return keep_columns(value)


def _check_json(value: Any, prefix: str) -> None:
    """TOML dates and times have no JSON form; refuse them in request bodies."""
    if isinstance(value, (dt.date, dt.time)):  # datetime is a date
        raise UsageError(f"{prefix}: dates and times are not JSON; quote them as strings")
    if isinstance(value, dict):
        for item in value.values():
            _check_json(item, prefix)
    elif isinstance(value, list):
        for item in value:
            _check_json(item, prefix)


def _limits(value: Any, shown: str) -> dict[str, dict[str, float]]:
    if not isinstance(value, dict):
        hint = " (the row limit is 'limit')" if not isinstance(value, list) else ""
        raise UsageError(f'{shown}: limits must be tables such as [limits."MODEL"] rpm = 20{hint}')
    out: dict[str, dict[str, float]] = {}
    for model, table in value.items():
        where = f"{shown}: limits {model!r}"
        if not isinstance(table, dict):
            raise UsageError(f"{where}: expected a table with rpm and/or tpm, got {_show(table)}")
        out[model] = {}
        for key, number in table.items():
            if key not in LIMIT_KEYS:
                raise UsageError(f"{where}: unknown key {key!r} (only rpm and tpm)")
            ok = (
                isinstance(number, (int, float))
                and not isinstance(number, bool)
                and math.isfinite(number)
                and number > 0
            )
            if not ok:
                raise UsageError(
                    f"{where}: key {key!r}: {_show(number)} is not a number greater than 0"
                )
            out[model][key] = float(number)
    return out


__all__ = ["JobFile", "load_job_file", "merge"]

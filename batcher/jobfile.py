"""TOML job files for `batcher run --job FILE.toml`.

A job file holds the options of `batcher run` (the click command is the one source of truth
for the valid keys and their types); options given on the command line override it.

- Keys: each option's long name or parameter name (`max-tokens`, `max_tokens`, `json`,
  `json_mode`, `model`/`models`, `param`/`params`), `input`, and the `limits` table of
  per-model rate limits; `_` and `-` are alike.
- Per-invocation switches (`--dry-run`, `--fresh`, `--retry-errors`, `-q`, `-v`, `--job`)
  stay on the command line: a job file describes the job, not one run of it.
- Keys (secrets) never: `api_key`, `token`, `authorization`, ... anywhere in the file is an
  error; a job file names where the key is (`api_key_env`, `api_key_file`).
- Relative paths are relative to the job file's folder; `~` is expanded.
"""

from __future__ import annotations

import datetime as dt
import difflib
import math
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click
from click.core import ParameterSource

from batcher.errors import UsageError

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

# Per-invocation switches: given on the command line only, never in a job file.
COMMAND_LINE_ONLY = frozenset(
    {"help", "version", "job", "dry_run", "quiet", "verbose", "fresh", "retry_errors"}
)
LIMITS = "limits"
LIMIT_KEYS = ("rpm", "tpm")
ALIASES = {"model": "models"}  # extra key -> parameter name
# Pairs the command refuses together: the command line giving one drops the file's other.
EXCLUSIVE = (("system", "system_file"), ("template", "template_file"))
OVERRIDES = (*EXCLUSIVE, ("api_key_env", "api_key_file"))
EXPLICIT = frozenset(
    {ParameterSource.COMMANDLINE, ParameterSource.ENVIRONMENT, ParameterSource.PROMPT}
)
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
STRING_TYPES = (
    click.types.StringParamType,
    click.Choice,
    click.Path,
    click.types.UUIDParameterType,
    click.DateTime,
)


@dataclass(frozen=True)
class JobFile:
    """A loaded job file: click parameter names -> converted values, and per-model limits."""

    path: Path
    options: dict[str, Any]
    model_limits: dict[str, dict[str, float]]


def norm(key: str) -> str:
    """A key as compared: `-` and `_` alike."""
    return key.replace("-", "_")


def accepted_keys(command: click.Command) -> dict[str, click.Parameter]:
    """Every key a job file may use for `command` (normalized) -> its click parameter."""
    keys: dict[str, click.Parameter] = {}
    for param in command.params:
        if not param.name or _command_line_only(param):
            continue
        names = [param.name]
        if isinstance(param, click.Option):
            names += [o[2:] for o in param.opts if o.startswith("--")]
        for name in names:
            keys[norm(name)] = param
    for alias, target in ALIASES.items():
        if target in keys:
            keys.setdefault(alias, keys[target])
    keys.pop(LIMITS, None)  # the special table wins over any option of that name
    return keys


def load_job_file(path: str | os.PathLike[str], command: click.Command) -> JobFile:
    """Read, check and convert the job file at `path` against `command`'s parameters."""
    shown = os.fspath(path)
    where = Path(os.path.abspath(os.path.expanduser(shown)))
    doc = _read(where, shown)
    keys = accepted_keys(command)
    if _has_secret(doc, top=set(keys)):
        raise UsageError(
            f"{shown}: keys do not belong in job files; use api_key_env or api_key_file"
        )
    ctx = click.Context(command, info_name=command.name)
    options: dict[str, Any] = {}
    given: dict[str, str] = {}  # parameter name -> key as written
    model_limits: dict[str, dict[str, float]] = {}
    for key, value in doc.items():
        if norm(key) == LIMITS:
            model_limits = _limits(value, shown)
            continue
        param = keys.get(norm(key))
        if param is None:
            raise UsageError(_unknown(key, keys, command, shown))
        assert param.name is not None
        if param.name in given:
            raise UsageError(
                f"{shown}: {given[param.name]!r} and {key!r} set the same option; give one"
            )
        given[param.name] = key
        options[param.name] = _value(param, key, value, ctx, where.parent, shown)
    for a, b in EXCLUSIVE:
        if a in given and b in given:
            raise UsageError(f"{shown}: give {given[a]!r} or {given[b]!r}, not both")
    return JobFile(path=where, options=options, model_limits=model_limits)


def merge(
    file: JobFile, cli_values: dict[str, Any], sources: Mapping[str, ParameterSource]
) -> dict[str, Any]:
    """The options to run with: the command line's (or environment's) where it set them,
    else the file's, else click's defaults.

    `params` is always a dict: the file's table updated key by key with the command line's
    (a dict, or click's raw `KEY=JSON` strings). Setting `system`, `template` or
    `api_key_env` on the command line drops the file's `system_file`, `template_file` or
    `api_key_file` (and the other way round), so the command line really overrides.
    """
    explicit = {name for name, source in sources.items() if source in EXPLICIT}
    merged = dict(cli_values)
    for name, value in file.options.items():
        if name != "params" and name not in explicit:
            merged[name] = value
    for pair in OVERRIDES:
        for mine, other in (pair, pair[::-1]):
            if mine in explicit and other not in explicit and other in file.options:
                merged[other] = cli_values.get(other)
    if "params" in file.options or "params" in cli_values:
        merged["params"] = {
            **file.options.get("params", {}),
            **_cli_params(cli_values.get("params")),
        }
    return merged


def _read(where: Path, shown: str) -> dict[str, Any]:
    try:
        text = where.read_bytes().decode("utf-8")
    except FileNotFoundError:
        raise UsageError(f"{shown}: no such file") from None
    except IsADirectoryError:
        raise UsageError(f"{shown}: is a directory, not a job file") from None
    except OSError as exc:
        raise UsageError(f"{shown}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise UsageError(f"{shown}: not UTF-8 text") from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        message = " ".join(str(exc).split())
        raise UsageError(f"{shown}: invalid TOML: {message}") from None


def _command_line_only(param: click.Parameter) -> bool:
    return param.name in COMMAND_LINE_ONLY or (isinstance(param, click.Option) and param.is_eager)


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


def _unknown(
    key: str, keys: Mapping[str, click.Parameter], command: click.Command, shown: str
) -> str:
    """The one-line error for a key that is not accepted."""
    n = norm(key)
    for param in command.params:
        long = [o for o in getattr(param, "opts", ()) if o.startswith("--")]
        names = {norm(param.name or ""), *(norm(o[2:]) for o in long)}
        if _command_line_only(param) and n in names:
            flag = max(long, key=len) if long else param.name
            return (
                f"{shown}: {key!r} does not belong in a job file; give {flag} on the command line"
            )
    close = difflib.get_close_matches(n, sorted({*keys, LIMITS}), n=1)
    hint = f"did you mean {close[0]!r}?" if close else f"see batcher {command.name} --help"
    return f"{shown}: unknown key {key!r} ({hint})"


def _show(value: Any) -> str:
    """A TOML value as shown in a message."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, list):
        return "a list"
    return repr(value)


def _value(
    param: click.Parameter, key: str, value: Any, ctx: click.Context, folder: Path, shown: str
) -> Any:
    """`value` converted as click would convert it for `param`."""
    prefix = f"{shown}: key {key!r}"
    name = param.name
    if name == "params":
        if not isinstance(value, dict):
            raise UsageError(f"{prefix}: expected a table of body keys, got {_show(value)}")
        _check_json(value, prefix)
        return dict(value)
    if name == "sweep" and isinstance(value, dict):  # [sweep] temperature = [0, 0.7]
        _check_json(value, prefix)
        if not all(isinstance(v, list) and v for v in value.values()):
            raise UsageError(f"{prefix}: expected a table of non-empty lists of values")
        return dict(value)
    if name == "keep_columns" and isinstance(value, list):
        if not all(isinstance(c, str) and c.strip() and "," not in c for c in value):
            raise UsageError(f"{prefix}: expected a list of column names")
        value = ",".join(value) if value else "none"
    if name == "api_key_env" and isinstance(value, str) and not ENV_NAME.fullmatch(value):
        # Never echo the value: it may be the key itself.
        raise UsageError(
            f"{prefix}: expected the name of an environment variable such as "
            "OPENAI_API_KEY, never the key itself"
        )
    many = param.multiple or param.nargs != 1
    if many:
        items = value if isinstance(value, list) else [value]
    elif isinstance(value, (list, dict)):
        raise UsageError(f"{prefix}: expected one value, got {_show(value)}")
    else:
        items = [value]
    is_path = isinstance(param.type, click.Path)
    checked = []
    for item in items:
        problem = _type_problem(param, item)
        if problem:
            raise UsageError(f"{prefix}: {problem}")
        checked.append(_resolve(item, folder, param.type, prefix) if is_path else item)
    try:
        converted = param.type_cast_value(ctx, checked if many else checked[0])
        if param.callback is not None:
            converted = param.callback(ctx, param, converted)
    except click.BadParameter as exc:
        raise UsageError(f"{prefix}: {' '.join(exc.message.split()).rstrip('.')}") from None
    return converted


def _type_problem(param: click.Parameter, value: Any) -> str | None:
    """What is wrong with a TOML value for `param`'s type (click alone would cast 1.5 to 1,
    true to 1 and 5 to "5"), or None."""
    kind = param.type
    flag = isinstance(param, click.Option) and param.is_flag
    if flag or isinstance(kind, click.types.BoolParamType):
        ok = isinstance(value, bool)
        return None if ok else f"{_show(value)} is not a boolean (true or false)"
    if isinstance(value, (dict, list)):
        return f"expected one value, got {_show(value)}"
    if isinstance(kind, click.types.IntParamType):
        ok = isinstance(value, int) and not isinstance(value, bool)
        return None if ok else f"{_show(value)} is not a valid integer"
    if isinstance(kind, click.types.FloatParamType):
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        return None if ok else f"{_show(value)} is not a valid float"
    if isinstance(kind, STRING_TYPES) and not isinstance(value, str):
        return f"{_show(value)} is not a string"
    return None


def _resolve(value: str, folder: Path, kind: click.Path, prefix: str) -> str:
    """A path from the file: `~` expanded, relative to the file's folder."""
    if not value:
        raise UsageError(f"{prefix}: empty path")
    if value == "-" and kind.allow_dash:
        return value
    return os.path.normpath(os.path.join(folder, os.path.expanduser(value)))


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


def _cli_params(value: Any) -> dict[str, Any]:
    """The command line's params as a dict: a dict already, or click's KEY=JSON strings."""
    if not value:
        return {}
    if isinstance(value, Mapping):
        return dict(value)
    from batcher.cli.run import parse_param  # the CLI's own parser; imported late (no cycle)

    items: Iterable[Any] = value
    return dict(parse_param(p) if isinstance(p, str) else p for p in items)


__all__ = ["JobFile", "accepted_keys", "load_job_file", "merge"]

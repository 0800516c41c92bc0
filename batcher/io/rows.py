"""Input rows to chat-completions requests: row shapes, templates, ids, hashes, the scan.

A row becomes one request per (model, sample). Its shape, checked in this order:

1. an OpenAI Batch API line (`custom_id` and an object `body`): the body is the request;
2. `template` set: the user message is the template filled from the row's columns;
3. a `messages` column: the messages as given;
4. a `prompt` column: one user message.

`system`, if set, is a template too and becomes the first message (not added when the
messages already start with a system or developer message). Job params go under the row's
own body-key columns (`temperature`, `model`, ...; null means no override). A column used
as prompt, messages, id or template field is never read as a body key.

`scan` is the cheap pass over every row before anything is sent: every body is built (not
hashed), so a bad row raises `InputError` first; ids must be unique; the schema of the
input's columns is inferred. `iter_requests` makes the same requests again, hashed, in
order: row, then model, then sample.
"""

from __future__ import annotations

import hashlib
import itertools
import os
import string
from array import array
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pyarrow as pa

from batcher.errors import InputError, UsageError
from batcher.io.inputs import (
    RowBatch,
    SchemaBuilder,
    compact_json,
    quote,
    read_batches,
    show_path,
    to_arrow,
)
from batcher.types import Request

# Row columns with these names override the job's body params for that row.
BODY_KEYS = frozenset(
    """model temperature top_p max_tokens max_completion_tokens stop seed response_format n
    presence_penalty frequency_penalty logit_bias logprobs top_logprobs tools tool_choice
    parallel_tool_calls reasoning_effort user metadata top_k min_p top_a repetition_penalty
    reasoning verbosity service_tier modalities prediction stream_options octen_search
    plugins""".split()  # noqa: SIM905
)
# CSV has no types: other body-key values are read as JSON when they parse ("0.2" -> 0.2).
CSV_TEXT_KEYS = frozenset({"model", "user", "reasoning_effort", "service_tier", "verbosity"})
SYSTEM_ROLES = ("system", "developer")
DUPLICATE_CHUNK = 1000  # colliding id hashes looked up per rescan


@dataclass(frozen=True, slots=True)
class RequestSpec:
    """How rows become request bodies."""

    models: tuple[str, ...] = ()  # every row to every model unless the row names its own
    params: Mapping[str, Any] = field(default_factory=dict)  # job body keys, under row ones
    system: str | None = None  # system message template
    template: str | None = None  # user message template, e.g. "Classify: {text}"
    prompt_column: str = "prompt"
    messages_column: str = "messages"
    id_column: str | None = None  # None: "id", else "custom_id", else the row index
    base_url: str = ""  # part of the request hash
    on_bad_row: str = "error"  # "error" | "skip"
    samples: int = 1  # requests per (row, model); sample k gets seed + k when seeded
    # --sweep: body keys and their values; every combination (in order) is its own request
    sweep: tuple[tuple[str, tuple[Any, ...]], ...] = ()
    # a whole conversation (few-shot) whose message contents are templates over the row
    messages_template: tuple[Mapping[str, Any], ...] | None = None

    def __post_init__(self) -> None:
        if self.on_bad_row not in ("error", "skip"):
            raise UsageError("--on-bad-row must be 'error' or 'skip'")
        if self.samples < 1:
            raise UsageError(f"samples must be at least 1, got {self.samples}")
        for key in ("model", "messages"):
            if key in self.params:
                raise UsageError(f"--param {key} is not allowed: use -m/--model or the input")
        if len(set(self.models)) < len(self.models):
            dup = next(m for m in self.models if self.models.count(m) > 1)
            raise UsageError(f"model {quote(dup)} is listed twice")


@dataclass(frozen=True, slots=True)
class ModelCount:
    requests: int = 0
    est_prompt_tokens: int = 0
    max_tokens_total: int | None = None  # None when some request has no max_tokens


@dataclass(frozen=True, slots=True)
class InputScan:
    """What `scan` found: counts, estimates and the input's column schema."""

    rows: int
    requests: int  # including those of bad rows
    bad_rows: int
    est_prompt_tokens: int  # over the requests of good rows
    max_tokens_total: int | None  # sum when every good request has max_tokens, else None
    per_model: Mapping[str, ModelCount]  # in model_index order
    schema: pa.Schema
    columns: tuple[str, ...]
    # Rows whose requests are not one per (model of the job, sweep combination, sample),
    # e.g. rows naming their own model. Every other row's keys are known without reading it.
    custom_rows: array = field(default_factory=lambda: array("q"))


def request_hash(body: Mapping[str, Any], base_url: str, *, sample: int = 0) -> str:
    """SHA-256 hex of the canonical body and base URL; sample k > 0 is part of it too,
    so samples of one body are distinct keys while sample 0 keeps the one-sample hash."""
    payload: dict[str, Any] = {"base_url": base_url.rstrip("/"), "body": body}
    if sample:
        payload["sample"] = sample
    return hashlib.sha256(orjson.dumps(payload, option=orjson.OPT_SORT_KEYS)).hexdigest()


def iter_requests(
    spec: RequestSpec, batches: Iterable[RowBatch], source: str | os.PathLike[str]
) -> Iterator[Request]:
    """The requests of the rows in `batches`, hashed, in order: row, model, sample.

    A bad row raises `InputError` (on_bad_row="error") or becomes requests with `bad_input`
    set, an empty body and no hash (on_bad_row="skip")."""
    builder = _Builder(spec, show_path(source))
    for batch in batches:
        for i in range(len(batch.rows)):
            requests = builder.requests(batch, i, hashed=True)
            bad = requests[0].bad_input
            if bad is not None and spec.on_bad_row == "error":
                raise InputError(bad)
            yield from requests


def batch_requests(spec: RequestSpec, batch: RowBatch, source: str) -> list[Request]:
    """The requests of one batch of rows (already checked by `scan`), hashed, in order."""
    return list(iter_requests(spec, [batch], source))


def scan(spec: RequestSpec, path: str | os.PathLike[str], *, limit: int | None = None) -> InputScan:
    """Check every row before anything is sent; count requests and estimate tokens.

    Raises `InputError` for a bad row (unless on_bad_row="skip"), duplicate ids and every
    file-level problem."""
    source = show_path(path)
    builder = _Builder(spec, source, collect_ids=True)
    schema = SchemaBuilder()
    tally = _Tally(len(spec.models) * len(builder.grid) * spec.samples)
    ids = array("q")
    for batch in read_batches(path, limit=limit):
        schema.add(batch)
        for i in range(len(batch.rows)):
            requests = builder.requests(batch, i, hashed=False)
            if requests[0].bad_input is not None and spec.on_bad_row == "error":
                raise InputError(requests[0].bad_input)
            tally.add(requests)
        ids.extend(builder.take_id_hashes())
    _check_duplicates(ids, lambda: _ids(spec, path, limit), source)
    found = schema.schema()
    return InputScan(
        rows=tally.rows,
        requests=tally.requests,
        bad_rows=tally.bad_rows,
        est_prompt_tokens=tally.tokens,
        max_tokens_total=tally.max_total(),
        per_model=tally.per_model(builder.model_names()),
        schema=found,
        columns=tuple(found.names),
        custom_rows=tally.custom_rows,
    )


# --- Templates --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Template:
    """A parsed template: (literal, field or None, format spec) pieces."""

    label: str  # "template" or "system"
    pieces: tuple[tuple[str, str | None, str], ...]

    @property
    def fields(self) -> tuple[str, ...]:
        return tuple(name for _, name, _ in self.pieces if name is not None)

    def render(self, row: Mapping[str, Any]) -> str:
        """The template filled from the row; raises _RowProblem for a missing column."""
        out: list[str] = []
        for literal, name, spec in self.pieces:
            out.append(literal)
            if name is not None:
                if name not in row:
                    raise _RowProblem(
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
            raise _RowProblem(f"{self.label} field {quote(name)}: {exc}") from None


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


# --- Rows to requests -------------------------------------------------------------------


class _RowProblem(Exception):
    """What is wrong with one row (the caller adds file and line)."""


@dataclass(frozen=True, slots=True)
class _Plan:
    """A good row: everything but the model and sample."""

    row_id: str
    targets: tuple[tuple[str, int], ...]  # (model, model_index)
    base: dict[str, Any]  # the body without "model"
    est_prompt_tokens: int
    max_tokens: int | None


class _Builder:
    """Turns rows into requests; remembers the model order of one pass over the input."""

    def __init__(self, spec: RequestSpec, source: str, *, collect_ids: bool = False) -> None:
        self.spec = spec
        self.source = source
        self.template = compile_template(spec.template) if spec.template is not None else None
        self.system = compile_template(spec.system, "system") if spec.system else None
        self.conversation = [
            (
                {k: v for k, v in m.items() if k != "content"},
                compile_template(
                    str(m.get("content") or ""), f"messages template, message {i + 1}"
                ),
            )
            for i, m in enumerate(spec.messages_template or ())
        ]
        self.params = {k: v for k, v in spec.params.items() if v is not None}
        self.grid = sweep_grid(spec.sweep)
        self.models: dict[str, int] = {m: i for i, m in enumerate(spec.models)}
        used = {spec.prompt_column, spec.messages_column, spec.id_column}
        for t in (self.template, self.system, *(t for _, t in self.conversation)):
            used.update(t.fields if t is not None else ())
        self.not_body = frozenset(used)  # columns read as something else, never as body keys
        self._id_hashes: list[int] | None = [] if collect_ids else None

    def model_names(self) -> list[str]:
        return list(self.models)

    def take_id_hashes(self) -> list[int]:
        """64-bit hashes of the ids seen since the last call (rows whose id was found)."""
        out, self._id_hashes = self._id_hashes or [], []
        return out

    def requests(self, batch: RowBatch, i: int, *, hashed: bool) -> list[Request]:
        """The requests of row i of the batch: good ones, or bad ones carrying the message."""
        index = batch.start + i
        if i in batch.bad:
            return self._bad(index, str(index), batch.bad[i], None)
        row = batch.rows[i]
        try:
            row_id = _row_id(row, index, self.spec.id_column)
        except _RowProblem as exc:
            return self._bad(index, str(index), self._message(batch, i, exc), row)
        if self._id_hashes is not None:
            self._id_hashes.append(id_hash(row_id))
        try:
            plan = self._plan(row, row_id, batch.kind == "csv")
            return self._emit(index, plan, hashed)
        except _RowProblem as exc:
            return self._bad(index, row_id, self._message(batch, i, exc), row)

    def _message(self, batch: RowBatch, i: int, exc: _RowProblem) -> str:
        return f"{self.source}: {batch.where(i)}: {exc}"

    def _plan(self, row: dict[str, Any], row_id: str, is_csv: bool) -> _Plan:
        if "custom_id" in row and isinstance(row.get("body"), dict):
            base, model = self._batch_line(row)
        else:
            overrides = self._overrides(row, is_csv)
            model = overrides.pop("model", None)
            messages = self._messages(row, is_csv)
            base = {"messages": messages, **self.params, **overrides}
        targets = self._targets(model)
        return _Plan(row_id, targets, base, _estimate(base["messages"]), _max_tokens(base))

    def _batch_line(self, row: dict[str, Any]) -> tuple[dict[str, Any], Any]:
        """An OpenAI Batch API line: its body over the job params; null means no override."""
        url = row.get("url")
        if url is not None and not str(url).rstrip("/").endswith("/chat/completions"):
            raise _RowProblem(f"batch request url {quote(url)} is not /v1/chat/completions")
        body = {k: v for k, v in row["body"].items() if v is not None}
        if "messages" not in body:
            raise _RowProblem("batch request body has no 'messages'")
        messages = self._with_system(_check_messages(body.pop("messages"), "body.messages"), row)
        model = body.pop("model", None)
        return {"messages": messages, **self.params, **body}, _check_model(model, "body.model")

    def _overrides(self, row: dict[str, Any], is_csv: bool) -> dict[str, Any]:
        out = {}
        for key, value in row.items():
            if key not in BODY_KEYS or key in self.not_body or value is None:
                continue
            if is_csv:
                if value == "":
                    continue
                if key not in CSV_TEXT_KEYS:
                    value = _csv_json(value)
            out[key] = value
        if "model" in out:
            out["model"] = _check_model(out["model"], "model")
        return out

    def _messages(self, row: dict[str, Any], is_csv: bool) -> list[dict[str, Any]]:
        spec = self.spec
        if self.conversation:
            messages = [{**meta, "content": t.render(row)} for meta, t in self.conversation]
            return self._with_system(messages, row)
        if self.template is not None:
            return self._with_system([{"role": "user", "content": self.template.render(row)}], row)
        mcol, pcol = spec.messages_column, spec.prompt_column
        value = row.get(mcol)
        if is_csv and isinstance(value, str):
            value = _csv_messages(value, mcol) if value else None
        if value is not None:
            return self._with_system(_check_messages(value, mcol), row)
        if pcol in row:
            prompt = row[pcol]
            if not isinstance(prompt, str):
                raise _RowProblem(f"{quote(pcol)} must be a string, got {_kind(prompt)}")
            return self._with_system([{"role": "user", "content": prompt}], row)
        if mcol in row:
            return _check_messages(None, mcol)
        raise _RowProblem(f"row has neither {quote(pcol)} nor {quote(mcol)}")

    def _with_system(self, messages: list[dict[str, Any]], row: dict[str, Any]) -> list[Any]:
        if self.system is None or messages[0].get("role") in SYSTEM_ROLES:
            return messages
        return [{"role": "system", "content": self.system.render(row)}, *messages]

    def _targets(self, model: str | None) -> tuple[tuple[str, int], ...]:
        if model is not None:
            return ((model, self._index(model)),)
        if not self.spec.models:
            raise _RowProblem("no model: pass -m/--model or give the row a 'model'")
        return tuple((m, i) for i, m in enumerate(self.spec.models))

    def _index(self, model: str) -> int:
        return self.models.setdefault(model, len(self.models))

    def _emit(self, index: int, plan: _Plan, hashed: bool) -> list[Request]:
        spec = self.spec
        seed = plan.base.get("seed")
        seeded = type(seed) is int and spec.samples > 1
        if not hashed:
            _check_json(plan.base)
        out = []
        for model, model_index in plan.targets:
            for variant, combination in enumerate(self.grid):
                for k in range(spec.samples):
                    body = {"model": model, **plan.base, **combination}
                    if seeded and k:
                        body["seed"] = seed + k
                    digest = _hash(body, spec.base_url, k) if hashed else ""
                    out.append(
                        Request(
                            index,
                            plan.row_id,
                            model,
                            model_index,
                            body,
                            digest,
                            plan.est_prompt_tokens,
                            _max_tokens(body),
                            k,
                            variant=variant,
                        )
                    )
        return out

    def _bad(self, index: int, row_id: str, message: str, row: dict | None) -> list[Request]:
        """Requests that carry the row's problem instead of a body (never sent)."""
        model = _own_model(row)
        if model is not None:
            targets: tuple[tuple[str, int], ...] = ((model, self._index(model)),)
        else:
            targets = tuple((m, i) for i, m in enumerate(self.spec.models)) or (("", 0),)
        return [
            Request(index, row_id, m, mi, {}, "", 0, None, k, bad_input=message, variant=v)
            for m, mi in targets
            for v in range(len(self.grid))
            for k in range(self.spec.samples)
        ]


def _own_model(row: dict[str, Any] | None) -> str | None:
    """The model a (bad) row names, if it names a usable one."""
    if row is None:
        return None
    body = row.get("body")
    model = body.get("model") if "custom_id" in row and isinstance(body, dict) else row.get("model")
    return model if isinstance(model, str) and model else None


def _row_id(row: Mapping[str, Any], index: int, id_column: str | None) -> str:
    """The row's id: the id column's value as text, else the row index."""
    if id_column is not None:
        if id_column not in row:
            raise _RowProblem(f"row has no id column {quote(id_column)}")
        name = id_column
    elif "id" in row:
        name = "id"
    elif "custom_id" in row:
        name = "custom_id"
    else:
        return str(index)
    value = row[name]
    if value is None:
        raise _RowProblem("null id")
    text = _id_text(value)
    if text == "":
        raise _RowProblem("empty id")
    return text


def _id_text(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, (list, tuple, dict)):
        return compact_json(value)
    return str(value)


def _check_model(model: Any, label: str) -> str | None:
    if model is None:
        return None
    if not isinstance(model, str):
        raise _RowProblem(f"{quote(label)} must be a string, got {_kind(model)}")
    if not model:
        raise _RowProblem(f"{quote(label)} is empty")
    return model


def _check_messages(value: Any, label: str) -> list[dict[str, Any]]:
    """A non-empty list of {role, content} objects; null keys other than content dropped."""
    if not isinstance(value, list):
        raise _RowProblem(f"{quote(label)} must be a non-empty list, got {_kind(value)}")
    if not value:
        raise _RowProblem(f"{quote(label)} is an empty list")
    return [_check_message(m, f"{label}[{j}]") for j, m in enumerate(value)]


def _check_message(message: Any, label: str) -> dict[str, Any]:
    if not isinstance(message, dict):
        raise _RowProblem(f"{quote(label)} must be an object, got {_kind(message)}")
    role = message.get("role")
    if role is None:
        raise _RowProblem(f"{quote(label)} has no 'role'")
    if not isinstance(role, str):
        raise _RowProblem(f"{quote(label + '.role')} must be a string, got {_kind(role)}")
    content = message.get("content")
    if content is None:
        if role != "assistant" or not message.get("tool_calls"):
            raise _RowProblem(f"{quote(label)} has no 'content'")
    elif isinstance(content, list):
        for p, part in enumerate(content):
            if not isinstance(part, dict):
                where = quote(f"{label}.content[{p}]")
                raise _RowProblem(f"{where} must be an object, got {_kind(part)}")
    elif not isinstance(content, str):
        where = quote(label + ".content")
        raise _RowProblem(f"{where} must be a string or a list of parts, got {_kind(content)}")
    return {k: v for k, v in message.items() if v is not None or k == "content"}


def _csv_json(value: str) -> Any:
    try:
        return orjson.loads(value)
    except orjson.JSONDecodeError:
        return value


def _csv_messages(value: str, label: str) -> Any:
    try:
        return orjson.loads(value)
    except orjson.JSONDecodeError as exc:
        raise _RowProblem(f"{quote(label)} is not valid JSON: {exc.msg}") from None


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__


def _estimate(messages: list[dict[str, Any]]) -> int:
    """Prompt tokens, roughly: characters of text / 4, at least 1."""
    chars = 0
    for message in messages:
        content = message.get("content")
        if isinstance(content, str):
            chars += len(content)
        elif isinstance(content, list):
            for part in content:
                text = part.get("text")
                chars += len(text) if isinstance(text, str) else 0
    return max(1, chars // 4)


def _max_tokens(body: Mapping[str, Any]) -> int | None:
    for key in ("max_tokens", "max_completion_tokens"):
        value = body.get(key)
        if type(value) is int:
            return value
    return None


def _check_json(body: Mapping[str, Any]) -> None:
    try:
        orjson.dumps(body)
    except (TypeError, orjson.JSONEncodeError) as exc:
        raise _RowProblem(f"request body is not JSON-serialisable: {exc}") from None


def _hash(body: Mapping[str, Any], base_url: str, sample: int) -> str:
    try:
        return request_hash(body, base_url, sample=sample)
    except (TypeError, orjson.JSONEncodeError) as exc:
        raise _RowProblem(f"request body is not JSON-serialisable: {exc}") from None


# --- Scan helpers -----------------------------------------------------------------------


def id_hash(row_id: str) -> int:
    """A signed 64-bit hash of an id, for duplicate detection in flat memory."""
    digest = hashlib.blake2b(row_id.encode("utf-8", "surrogatepass"), digest_size=8).digest()
    return int.from_bytes(digest, "little", signed=True)


def _ids(spec: RequestSpec, path: str | os.PathLike[str], limit: int | None):
    """(id, where) of every row whose id was found, in input order."""
    for batch in read_batches(path, limit=limit):
        for i, row in enumerate(batch.rows):
            if i in batch.bad:
                continue
            try:
                yield _row_id(row, batch.start + i, spec.id_column), batch.where(i)
            except _RowProblem:
                continue


def _check_duplicates(hashes: array, rescan, source: str) -> None:
    """Sort the id hashes; only if two collide, read the ids again to name both lines."""
    if len(hashes) < 2:
        return
    ordered = np.frombuffer(hashes, dtype=np.int64)
    ordered.sort()  # in place: 8 bytes per row, no copy
    same = ordered[1:][ordered[1:] == ordered[:-1]]
    colliding = np.unique(same).tolist()
    for start in range(0, len(colliding), DUPLICATE_CHUNK):
        wanted = set(colliding[start : start + DUPLICATE_CHUNK])
        first: dict[str, str] = {}
        for row_id, where in rescan():
            if id_hash(row_id) not in wanted:
                continue
            if row_id in first:
                raise InputError(
                    f"{source}: {where}: duplicate id {quote(row_id)} (first at {first[row_id]})"
                )
            first[row_id] = where


class _Tally:
    """Counts of the scan, per model too."""

    def __init__(self, per_row: int) -> None:
        self.per_row = per_row  # requests of a row for every model of the job
        self.custom_rows = array("q")
        self.rows = self.requests = self.bad_rows = self.tokens = 0
        self.max_sum = 0
        self.all_bounded = True
        self.good = 0
        self.models: dict[str, list[Any]] = {}  # name -> [requests, tokens, max sum or None]

    def add(self, requests: list[Request]) -> None:
        self.rows += 1
        self.requests += len(requests)
        if len(requests) != self.per_row or requests[0].model_index != 0:
            self.custom_rows.append(requests[0].row_index)
        if requests[0].bad_input is not None:
            self.bad_rows += 1
            return
        for r in requests:
            self.good += 1
            self.tokens += r.est_prompt_tokens
            counts = self.models.setdefault(r.model, [0, 0, 0])
            counts[0] += 1
            counts[1] += r.est_prompt_tokens
            if r.max_tokens is None:
                self.all_bounded = False
                counts[2] = None
            else:
                self.max_sum += r.max_tokens
                if counts[2] is not None:
                    counts[2] += r.max_tokens

    def max_total(self) -> int | None:
        return self.max_sum if self.all_bounded and self.good else None

    def per_model(self, names: list[str]) -> dict[str, ModelCount]:
        out = {}
        for name in names:
            n, tokens, bound = self.models.get(name, (0, 0, None))
            out[name] = ModelCount(n, tokens, bound if n else None)
        return out


__all__ = [
    "BODY_KEYS",
    "InputScan",
    "ModelCount",
    "RequestSpec",
    "Template",
    "compile_template",
    "id_hash",
    "iter_requests",
    "request_hash",
    "scan",
    "to_arrow",
]


def load_messages_template(path: str | os.PathLike[str]) -> tuple[dict[str, Any], ...]:
    """A JSON list of {role, content} messages whose contents are templates (few-shot)."""
    source = show_path(path)
    try:
        data = orjson.loads(Path(path).read_bytes())
    except OSError as exc:
        raise InputError(f"{source}: {exc.strerror or 'cannot be read'}") from None
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


def sweep_grid(sweep: Iterable[tuple[str, Iterable[Any]]]) -> list[dict[str, Any]]:
    """Every combination of the swept values, first key slowest: [{key: value, ...}, ...]."""
    keys = [key for key, _ in sweep]
    values = [tuple(v) for _, v in sweep]
    return [dict(zip(keys, combo)) for combo in itertools.product(*values)]

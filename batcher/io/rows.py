"""Input rows to chat-completions requests: row shapes, ids, body keys, payloads and hashes.

A row becomes one request per (model, sample). Its shape, checked in this order:

1. an OpenAI Batch API line (`custom_id` and an object `body`): the body is the request;
2. `template` set: the user message is the template filled from the row's columns;
3. a `messages` column: the messages as given;
4. a `prompt` column: one user message.

`system`, if set, is a template too and becomes the first message (not added when the
messages already start with a system or developer message). Job params go under the row's
own body-key columns (`temperature`, `model`, ...; null means no override). A column used
as prompt, messages, id or template field is never read as a body key.

`RequestBuilder.requests(batch, i)` gives the requests of one row, in order: model, then
sweep combination, then sample; each body serialised once into its payload and hashed. The
checking pass (`batcher.io.check`) is the one caller that runs over a whole input.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson

from batcher.errors import UsageError, quote
from batcher.io.input_schema import compact_json
from batcher.io.inputs import RowBatch
from batcher.io.templates import RowProblem, compile_template
from batcher.types import (
    Request,
    cache_prefix,
    canonical_json,
    estimate_tokens,
    max_tokens_of,
    request_hash,
)

# CSV has no types: body-column values are read as JSON when they parse ("0.2" -> 0.2).
CSV_TEXT_KEYS = frozenset({"model", "user", "reasoning_effort", "service_tier", "verbosity"})
SYSTEM_ROLES = ("system", "developer")


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
    # row columns sent as body keys of the same name (the row's own `model`, `temperature`)
    body_columns: tuple[str, ...] = ()
    models_given: bool = True  # False: `models` is the provider's default, not the user's
    cache_key: bool = False  # send OpenAI's prompt_cache_key on rows with a cacheable prefix

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
        if self.template is not None and self.messages_template is not None:
            raise UsageError("give --template or --messages-template, not both")
        if "messages" in self.body_columns:
            raise UsageError("--body-columns: 'messages' come from the input's rows, not a column")


# --- Rows to requests -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Plan:
    """A good row: everything but the model and sample."""

    row_id: str
    targets: tuple[tuple[str, int], ...]  # (model, model_index)
    base: dict[str, Any]  # the body without "model"
    est_prompt_tokens: int
    max_tokens: int | None
    prefix: str | None  # `cache_prefix` of its messages


def unread_id(batch: RowBatch, i: int, source: str) -> str:
    """The id of a bad row whose own id cannot be read: "(line 7)", with the file when the
    input has several ("(data/b.jsonl: line 7)"). It joins the ids checked for duplicates,
    so it can never stand for a real row as well."""
    same_file = not batch.source or batch.source == source
    return f"({batch.where(i)})" if same_file else f"({batch.place(i)})"


class RequestBuilder:
    """Turns rows into requests; remembers the model order of one pass over the input."""

    def __init__(self, spec: RequestSpec, source: str) -> None:
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
        both = sorted(used & set(spec.body_columns))
        if both:  # a column is a prompt, messages, id or template field, or a body key
            raise UsageError(
                f"--body-columns: {quote(both[0])} is read as the prompt, messages, id or a "
                "template field already; a column is one or the other"
            )
        self.ids: list[str] = []  # the ids read since the caller last cleared it

    def model_names(self) -> list[str]:
        return list(self.models)

    def requests(self, batch: RowBatch, i: int) -> list[Request]:
        """The requests of row i of the batch: good ones, or bad ones carrying the message."""
        index = batch.start + i
        if i in batch.bad:
            return self._bad(index, self._unread_id(batch, i), batch.bad[i], None)
        row = batch.rows[i]
        try:
            row_id = row_id_of(row, index, self.spec.id_column)
        except RowProblem as exc:
            return self._bad(index, self._unread_id(batch, i), self._message(batch, i, exc), row)
        self.ids.append(row_id)
        try:
            plan = self._plan(row, row_id, batch.kind == "csv")
            return self._emit(index, plan)
        except RowProblem as exc:
            return self._bad(index, row_id, self._message(batch, i, exc), row)

    def _unread_id(self, batch: RowBatch, i: int) -> str:
        row_id = unread_id(batch, i, self.source)
        self.ids.append(row_id)
        return row_id

    def _message(self, batch: RowBatch, i: int, exc: RowProblem) -> str:
        return f"{batch.source or self.source}: {batch.where(i)}: {exc}"

    def _plan(self, row: dict[str, Any], row_id: str, is_csv: bool) -> _Plan:
        if "custom_id" in row and isinstance(row.get("body"), dict):
            base, model = self._batch_line(row)
            if model is not None and self.spec.models_given:
                raise RowProblem(
                    f"the Batch API line names its own model ({quote(model)}) and -m names "
                    f"{', '.join(map(quote, self.spec.models))}; give one of them"
                )
        else:
            overrides = self._overrides(row, is_csv)
            model = overrides.pop("model", None)
            messages = self._messages(row, is_csv)
            base = {"messages": messages, **self.params, **overrides}
        targets = self._targets(model)
        messages = base["messages"]
        prefix = cache_prefix(messages)
        return _Plan(row_id, targets, base, estimate_tokens(messages), max_tokens_of(base), prefix)

    def _batch_line(self, row: dict[str, Any]) -> tuple[dict[str, Any], Any]:
        """An OpenAI Batch API line: its body over the job params; null means no override."""
        url = row.get("url")
        if url is not None and not str(url).rstrip("/").endswith("/chat/completions"):
            raise RowProblem(f"batch request url {quote(url)} is not /v1/chat/completions")
        body = {k: v for k, v in row["body"].items() if v is not None}
        if "messages" not in body:
            raise RowProblem("batch request body has no 'messages'")
        messages = self._with_system(_check_messages(body.pop("messages"), "body.messages"), row)
        model = body.pop("model", None)
        return {"messages": messages, **self.params, **body}, _check_model(model, "body.model")

    def _overrides(self, row: dict[str, Any], is_csv: bool) -> dict[str, Any]:
        """The row's own body keys: an object `body` column, and the --body-columns."""
        body = row.get("body")
        out = {k: v for k, v in body.items() if v is not None} if isinstance(body, dict) else {}
        for key in self.spec.body_columns:
            value = row.get(key)
            if value is None or (is_csv and value == ""):
                continue
            if is_csv and key not in CSV_TEXT_KEYS:
                value = _csv_json(value)
            out[key] = value
        if "messages" in out:
            raise RowProblem("the row's body holds 'messages'; give them as the messages column")
        if "model" in out:
            out["model"] = _check_model(out["model"], "model")
        return out

    def _messages(self, row: dict[str, Any], is_csv: bool) -> list[dict[str, Any]]:
        spec = self.spec
        if (self.conversation or self.template) and row.get(spec.messages_column) not in (None, ""):
            option = "--messages-template" if self.conversation else "--template"
            raise RowProblem(
                f"the row has {quote(spec.messages_column)} and {option} would replace them; "
                f"drop {option}, or name another --messages-column"
            )
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
                raise RowProblem(f"{quote(pcol)} must be a string, got {_kind(prompt)}")
            return self._with_system([{"role": "user", "content": prompt}], row)
        if mcol in row:
            return _check_messages(None, mcol)
        raise RowProblem(f"row has neither {quote(pcol)} nor {quote(mcol)}")

    def _with_system(self, messages: list[dict[str, Any]], row: dict[str, Any]) -> list[Any]:
        if self.system is None or messages[0].get("role") in SYSTEM_ROLES:
            return messages
        return [{"role": "system", "content": self.system.render(row)}, *messages]

    def _targets(self, model: str | None) -> tuple[tuple[str, int], ...]:
        if model is not None:
            return ((model, self._index(model)),)
        if not self.spec.models:
            raise RowProblem("no model: pass -m/--model or give the row a 'model'")
        return tuple((m, i) for i, m in enumerate(self.spec.models))

    def _index(self, model: str) -> int:
        return self.models.setdefault(model, len(self.models))

    def _emit(self, index: int, plan: _Plan) -> list[Request]:
        """The row's requests: each body serialised once, hashed over those bytes."""
        spec = self.spec
        seed = plan.base.get("seed")
        seeded = type(seed) is int and spec.samples > 1
        out = []
        for model, model_index in plan.targets:
            for variant, combination in enumerate(self.grid):
                for k in range(spec.samples):
                    body = {"model": model, **plan.base, **combination}
                    if seeded and k:
                        body["seed"] = seed + k
                    if spec.cache_key and plan.prefix and "prompt_cache_key" not in body:
                        body["prompt_cache_key"] = f"batcher-{plan.prefix}"
                    payload = _payload(body)
                    out.append(
                        Request(
                            index,
                            plan.row_id,
                            model,
                            model_index,
                            payload,
                            request_hash(payload, spec.base_url, sample=k),
                            plan.est_prompt_tokens,
                            max_tokens_of(body),
                            k,
                            variant=variant,
                            cache_prefix=plan.prefix,
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
            Request(index, row_id, m, mi, b"", "", 0, None, k, bad_input=message, variant=v)
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


def row_id_of(row: Mapping[str, Any], index: int, id_column: str | None) -> str:
    """The row's id: the id column's value as text, else the row index."""
    if id_column is not None:
        if id_column not in row:
            raise RowProblem(f"row has no id column {quote(id_column)}")
        name = id_column
    elif "id" in row:
        name = "id"
    elif "custom_id" in row:
        name = "custom_id"
    else:
        return str(index)
    value = row[name]
    if value is None:
        raise RowProblem("null id")
    text = _id_text(value)
    if text == "":
        raise RowProblem("empty id")
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
        raise RowProblem(f"{quote(label)} must be a string, got {_kind(model)}")
    if not model:
        raise RowProblem(f"{quote(label)} is empty")
    return model


def _check_messages(value: Any, label: str) -> list[dict[str, Any]]:
    """A non-empty list of {role, content} objects; null keys other than content dropped."""
    if not isinstance(value, list):
        raise RowProblem(f"{quote(label)} must be a non-empty list, got {_kind(value)}")
    if not value:
        raise RowProblem(f"{quote(label)} is an empty list")
    return [_check_message(m, f"{label}[{j}]") for j, m in enumerate(value)]


def _check_message(message: Any, label: str) -> dict[str, Any]:
    if not isinstance(message, dict):
        raise RowProblem(f"{quote(label)} must be an object, got {_kind(message)}")
    role = message.get("role")
    if role is None:
        raise RowProblem(f"{quote(label)} has no 'role'")
    if not isinstance(role, str):
        raise RowProblem(f"{quote(label + '.role')} must be a string, got {_kind(role)}")
    content = message.get("content")
    if content is None:
        if role != "assistant" or not message.get("tool_calls"):
            raise RowProblem(f"{quote(label)} has no 'content'")
    elif isinstance(content, list):
        for p, part in enumerate(content):
            if not isinstance(part, dict):
                where = quote(f"{label}.content[{p}]")
                raise RowProblem(f"{where} must be an object, got {_kind(part)}")
    elif not isinstance(content, str):
        where = quote(label + ".content")
        raise RowProblem(f"{where} must be a string or a list of parts, got {_kind(content)}")
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
        raise RowProblem(f"{quote(label)} is not valid JSON: {exc.msg}") from None


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__


def _payload(body: Mapping[str, Any]) -> bytes:
    try:
        return canonical_json(body)
    except (TypeError, orjson.JSONEncodeError) as exc:
        raise RowProblem(f"request body is not JSON-serialisable: {exc}") from None


__all__ = ["RequestBuilder", "RequestSpec", "RowProblem", "row_id_of", "sweep_grid"]


def sweep_grid(sweep: Iterable[tuple[str, Iterable[Any]]]) -> list[dict[str, Any]]:
    """Every combination of the swept values, first key slowest: [{key: value, ...}, ...]."""
    keys = [key for key, _ in sweep]
    values = [tuple(v) for _, v in sweep]
    return [dict(zip(keys, combo)) for combo in itertools.product(*values)]

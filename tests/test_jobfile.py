"""TOML job files: keys are JobSpec fields, values checked against their types, errors, and
the merge with what the command line or a library call sets."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from batcher.cli.options import spec_options
from batcher.cli.run import run as run_command
from batcher.errors import UsageError
from batcher.jobfile import FIELDS, JobFile, load_job_file, merge
from batcher.spec import make_spec

FILE = "jobs/x.toml"  # as the user typed it; messages name the file this way

EXAMPLE = """\
input = "../sample_data/reviews.jsonl"     # paths are relative to the job file's folder
output = "../out/reviews_labelled.parquet"
provider = "mock"
models = ["mock-1", "mock-2"]
template_file = "../sample_data/templates/review_user.txt"
system-file = "../sample_data/templates/review_system.txt"   # `_` and `-` are alike
temperature = 0
max_tokens = 300
concurrency = 16
rpm = 600
stop = ["END"]
keep_columns = ["id", "text"]

[params]
top_k = 40
reasoning = { effort = "low" }

[limits."openai/gpt-5.5"]
rpm = 20
tpm = 500000
"""


@pytest.fixture(autouse=True)
def in_tmp(tmp_path, monkeypatch):
    """Run from tmp_path with no BATCHER_* variables; the job file lives in tmp_path/jobs."""
    monkeypatch.chdir(tmp_path)
    for name in list(os.environ):
        if name.startswith("BATCHER_"):
            monkeypatch.delenv(name)
    (tmp_path / "jobs").mkdir()


def load(text: str) -> JobFile:
    Path(FILE).write_text(text, encoding="utf-8")
    return load_job_file(FILE)


def error(text: str) -> str:
    with pytest.raises(UsageError) as info:
        load(text)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_the_example_loads_with_converted_values_and_paths_relative_to_the_file(tmp_path):
    job = load(EXAMPLE)
    assert job.path == tmp_path / "jobs" / "x.toml"
    assert job.options == {
        "input": tmp_path / "sample_data" / "reviews.jsonl",  # a Path: path_type=Path
        "output": tmp_path / "out" / "reviews_labelled.parquet",
        "provider": "mock",
        "models": ("mock-1", "mock-2"),
        "template_file": tmp_path / "sample_data" / "templates" / "review_user.txt",
        "system_file": tmp_path / "sample_data" / "templates" / "review_system.txt",
        "temperature": 0.0,
        "max_tokens": 300,
        "concurrency": 16,
        "rpm": 600.0,
        "stop": ("END",),
        "keep_columns": ("id", "text"),
        "params": {"top_k": 40, "reasoning": {"effort": "low"}},
        "model_limits": {"openai/gpt-5.5": {"rpm": 20.0, "tpm": 500000.0}},
    }
    assert type(job.options["temperature"]) is float
    make_spec(**job.options)  # the library takes the file's options as they are


def test_the_keys_are_the_specs_fields():
    for key in ("input", "output", "models", "json", "params", "system_file", "max_cost"):
        assert key in FIELDS
    for key in ("dry_run", "fresh", "retry_errors", "model_limits"):
        assert key not in FIELDS
    # every option of the command but the per-invocation ones can be written in a file
    flags = {p.name for p in run_command.params} - {
        "dry_run",
        "quiet",
        "verbose",
        "log_every",
        "job_file",
    }
    flags = {{"json_mode": "json"}.get(name, name) for name in flags}
    assert flags - {"fresh", "retry_errors"} <= set(FIELDS)


def test_underscore_and_dash_are_alike():
    job = load('max-tokens = 5\nprompt_column = "q"\nkeep-job-dir = true\non-bad-row = "skip"\n')
    assert job.options == {
        "max_tokens": 5,
        "prompt_column": "q",
        "keep_job_dir": True,
        "on_bad_row": "skip",
    }
    assert load("json = true").options == {"json": True}
    assert load("json_mode = false").options == {"json": False}


def test_one_option_given_twice_is_refused():
    assert error("max_tokens = 5\nmax-tokens = 6\n") == (
        f"{FILE}: 'max_tokens' and 'max-tokens' set the same option; give one"
    )
    assert error('model = "a"\nmodels = ["b"]\n') == (
        f"{FILE}: 'model' and 'models' set the same option; give one"
    )


def test_model_is_an_alias_of_models():
    assert load('model = "gpt-5.5"').options == {"models": ("gpt-5.5",)}
    assert load('model = ["a", "b"]').options == {"models": ("a", "b")}
    assert load('models = "one"').options == {"models": ("one",)}


def test_unknown_key_names_the_closest_key():
    assert error("max_token = 300") == (
        f"{FILE}: unknown key 'max_token' (did you mean 'max_tokens'?)"
    )
    assert error("limitz = 5") == f"{FILE}: unknown key 'limitz' (did you mean 'limit'?)"


def test_unknown_key_with_nothing_close():
    assert error("zzz = 1") == f"{FILE}: unknown key 'zzz' (see batcher run --help)"


@pytest.mark.parametrize(
    ("key", "flag"),
    [
        ("dry_run", "--dry-run"),
        ("dry-run", "--dry-run"),
        ("fresh", "--fresh"),
        ("retry_errors", "--retry-errors"),
        ("quiet", "--quiet"),
        ("verbose", "--verbose"),
    ],
)
def test_per_invocation_switches_stay_on_the_command_line(key, flag):
    assert error(f"{key} = true") == (
        f"{FILE}: {key!r} does not belong in a job file; give {flag} on the command line"
    )


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ('concurrency = "many"', "key 'concurrency': 'many' is not a valid integer"),
        ("max_tokens = 1.5", "key 'max_tokens': 1.5 is not a valid integer"),
        ("concurrency = true", "key 'concurrency': true is not a valid integer"),
        ('temperature = "hot"', "key 'temperature': 'hot' is not a valid float"),
        ("temperature = [1]", "key 'temperature': expected one value, got a list"),
        ("base_url = 8000", "key 'base_url': 8000 is not a string"),
        ("stop = [1]", "key 'stop': 1 is not a string"),
        ("models = [[1]]", "key 'models': expected one value, got a list"),
        (
            'provider = "nope"',
            "key 'provider': 'nope' is not one of 'octen', 'octopusx', 'openai', 'mock', 'custom'",
        ),
    ],
)
def test_wrong_types_name_the_key_and_value(line, message):
    assert error(line) == f"{FILE}: {message}"


@pytest.mark.parametrize(("line", "shown"), [('json = "yes"', "'yes'"), ("keep_job_dir = 1", "1")])
def test_flags_must_be_booleans(line, shown):
    key = line.split(" ")[0]
    assert error(line) == f"{FILE}: key {key!r}: {shown} is not a boolean (true or false)"


def test_params_is_a_table_of_typed_values():
    job = load('[params]\ntop_k = 40\nlogit_bias = { "50256" = -100 }\nmodalities = ["text"]\n')
    assert job.options == {
        "params": {"top_k": 40, "logit_bias": {"50256": -100}, "modalities": ["text"]}
    }
    assert load("param = { top_k = 1 }").options == {"params": {"top_k": 1}}
    assert error('params = "top_k=40"') == (
        f"{FILE}: key 'params': expected a table of body keys, got 'top_k=40'"
    )
    assert error("[params]\nwhen = 2026-01-02\n") == (
        f"{FILE}: key 'params': dates and times are not JSON; quote them as strings"
    )


def test_keep_columns_list_or_string():
    assert load('keep_columns = ["id", "text"]').options == {"keep_columns": ("id", "text")}
    assert load('keep_columns = "id, text"').options == {"keep_columns": ("id", "text")}
    assert load("keep_columns = []").options == {"keep_columns": "none"}
    assert load('keep-columns = "all"').options == {"keep_columns": "all"}
    assert error('keep_columns = ["a,b"]') == (
        f"{FILE}: key 'keep_columns': expected a list of column names"
    )


def test_paths_expand_home_and_keep_absolute_paths(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    job = load(f'input = "~/in.jsonl"\ncache = "cache"\noutput = "{tmp_path}/o.parquet"\n')
    assert job.options == {
        "input": tmp_path / "home" / "in.jsonl",
        "cache": tmp_path / "jobs" / "cache",
        "output": tmp_path / "o.parquet",
    }
    assert error('output = ""') == f"{FILE}: key 'output': empty path"


def test_system_and_system_file_together_are_refused():
    assert error('system = "Be brief."\nsystem-file = "s.txt"\n') == (
        f"{FILE}: give 'system' or 'system-file', not both"
    )


def test_limits_per_model():
    job = load('[limits.a]\nrpm = 20\n[limits."b/c"]\ntpm = 1.5e5\nrpm = 1\n')
    limits = {"a": {"rpm": 20.0}, "b/c": {"tpm": 150000.0, "rpm": 1.0}}
    assert job.options == {"model_limits": limits}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[limits.m]\nrps = 2", "limits 'm': unknown key 'rps' (only rpm and tpm)"),
        ("[limits.m]\nrpm = 0", "limits 'm': key 'rpm': 0 is not a number greater than 0"),
        ('[limits.m]\ntpm = "x"', "limits 'm': key 'tpm': 'x' is not a number greater than 0"),
        ("[limits.m]\ntpm = true", "limits 'm': key 'tpm': true is not a number greater than 0"),
        ("[limits.m]\nrpm = inf", "limits 'm': key 'rpm': inf is not a number greater than 0"),
        ("limits = { m = 5 }", "limits 'm': expected a table with rpm and/or tpm, got 5"),
        (
            "limits = 5",
            "limits must be tables such as [limits.\"MODEL\"] rpm = 20 (the row limit is 'limit')",
        ),
    ],
)
def test_limits_errors_name_the_model_and_key(text, message):
    assert error(text) == f"{FILE}: {message}"


@pytest.mark.parametrize(
    "text",
    [
        'api_key = "sk-123"',
        'api-key = "sk-123"',
        'key = "sk-123"',
        'token = "t"',
        'OPENAI_API_KEY = "sk-123"',
        '[params]\nAuthorization = "Bearer sk-123"',
        'headers = { x-api-key = "sk-123" }',
        '[limits.m]\ntoken = "t"',
        'params = { extra = [{ password = "p" }] }',
    ],
)
def test_secrets_are_refused(text):
    assert error(text) == (
        f"{FILE}: keys do not belong in job files; use api_key_env or api_key_file"
    )


def test_where_the_key_is_may_be_named(tmp_path):
    job = load('api_key_env = "MY_KEY"\napi-key-file = "secrets/gw.key"\n')
    assert job.options == {
        "api_key_env": "MY_KEY",
        "api_key_file": tmp_path / "jobs" / "secrets" / "gw.key",
    }
    message = error('api_key_env = "sk-live-123"')
    assert "sk-live" not in message
    assert message.startswith(f"{FILE}: key 'api_key_env': expected the name of an environment")


def test_toml_syntax_error():
    message = error('max_tokens = \nmodel = "a"\n')
    assert message.startswith(f"{FILE}: invalid TOML: ")
    assert "line 1" in message


def test_missing_file():
    with pytest.raises(UsageError, match=r"^jobs/missing\.toml: no such file$"):
        load_job_file("jobs/missing.toml")


def cli_options(*args: str) -> dict:
    """The spec options `batcher run ARGS` would run with (the job file's among them)."""
    ctx = run_command.make_context("run", list(args))
    opts = {k: v for k, v in ctx.params.items() if k not in ("dry_run", "quiet", "verbose")}
    return spec_options(ctx, opts)


def test_merge_command_line_wins_and_defaults_do_not_override_the_file(tmp_path):
    load(EXAMPLE)
    merged = cli_options("in.jsonl", "--job", FILE, "--concurrency", "4", "-m", "gpt-5.5")
    assert merged["concurrency"] == 4  # command line
    assert merged["models"] == ("gpt-5.5",)  # replaces the file's list
    assert merged["input"] == Path("in.jsonl")
    assert merged["max_tokens"] == 300  # file; the command line left it unset
    assert merged["output"] == tmp_path / "out" / "reviews_labelled.parquet"
    assert "timeout" not in merged  # neither: the spec's default applies
    assert make_spec(**merged).timeout == 120.0


def test_merge_environment_wins(monkeypatch):
    load("concurrency = 16")
    monkeypatch.setenv("BATCHER_CONCURRENCY", "64")
    ctx = run_command.make_context("run", ["in.jsonl", "--job", FILE], auto_envvar_prefix="BATCHER")
    opts = {k: v for k, v in ctx.params.items() if k not in ("dry_run", "quiet", "verbose")}
    assert spec_options(ctx, opts)["concurrency"] == 64


def test_merge_params_per_key():
    job = load('input = "in.jsonl"\n[params]\ntop_k = 40\nreasoning = { effort = "low" }\n')
    merged = merge(job.options, {"params": {"reasoning": {"effort": "high"}}})
    assert merged["params"] == {"top_k": 40, "reasoning": {"effort": "high"}}
    # the command line's KEY=JSON strings are parsed the way --param parses them
    assert (
        cli_options("--job", FILE, "--param", 'reasoning={"effort":"high"}')["params"]
        == (merged["params"])
    )
    assert cli_options("--job", FILE)["params"] == {"top_k": 40, "reasoning": {"effort": "low"}}


def test_merge_command_line_text_drops_the_files_text_file(tmp_path):
    load('input = "in.jsonl"\nsystem_file = "s.txt"\ntemplate = "Classify: {text}"\n')
    merged = cli_options("--job", FILE, "--system", "Be brief.", "--template-file", "t.txt")
    assert (merged["system"], merged.get("system_file")) == ("Be brief.", None)
    assert (merged.get("template"), merged["template_file"]) == (None, Path("t.txt"))
    merged = cli_options("--job", FILE)
    assert merged["system_file"] == tmp_path / "jobs" / "s.txt"
    assert merged["template"] == "Classify: {text}"

"""Options from the environment: BATCHER_ and the flag's name users type (or click's
parameter name); the command line wins over it, and it wins over a --job file."""

from __future__ import annotations

import click
import pyarrow.parquet as pq
from conftest import SAMPLE

from batcher.cli import main


def models_of(out) -> set[str]:
    return set(pq.read_table(out, columns=["model"]).column("model").to_pylist())


def test_the_flag_name_the_parameter_name_and_their_precedence(cli, tmp_path):
    data = SAMPLE / "questions.jsonl"
    job = tmp_path / "job.toml"
    job.write_text('models = ["mock-1"]\nlimit = 2\n')
    cases = [  # (environment, extra args, the model used)
        ({"BATCHER_MODEL": "mock-2"}, (), {"mock-2"}),
        ({"BATCHER_MODELS": "mock-2"}, (), {"mock-2"}),
        ({"BATCHER_MODEL": "mock-2"}, ("-m", "mock-1"), {"mock-1"}),  # the command line wins
        ({"BATCHER_JOB": str(job)}, (), {"mock-1"}),  # --job from the environment
        ({"BATCHER_JOB": str(job), "BATCHER_MODEL": "mock-2"}, (), {"mock-2"}),  # over the file
    ]
    for i, (env, args, used) in enumerate(cases):
        out = tmp_path / f"o{i}.parquet"
        ran = cli("run", data, "-o", out, "--limit", "2", "-q", *args, env=env)
        assert ran.exit_code == 0, (env, ran.stderr)
        assert models_of(out) == used, env


def test_every_option_of_run_estimate_and_models_is_read_under_its_flag_name():
    for name in ("run", "estimate", "models"):
        command = main.commands[name]
        for param in command.params:
            flags = [o for o in param.opts if o.startswith("--")]
            if not isinstance(param, click.Option) or not flags:
                continue
            flag = "BATCHER_" + flags[0][2:].replace("-", "_").upper()
            envvar = param.envvar or f"BATCHER_{param.name.upper()}"
            assert flag in ([envvar] if isinstance(envvar, str) else envvar), (name, flags[0])

"""Shared fixtures: a mock API on loopback (in a thread) and a CLI runner."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from batcher.cli import main
from batcher.io.jobdir import JobDir
from batcher.mock import MockConfig, MockServerThread
from batcher.types import Request

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = ROOT / "sample_data"


@pytest.fixture
def api():
    """The mock API in a background thread; tests read `api.log` to see what it received."""
    with MockServerThread(MockConfig()) as server:
        yield server


@pytest.fixture
def make_api():
    servers = []

    def start(**config) -> MockServerThread:
        server = MockServerThread(MockConfig(**config))
        server.start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


@pytest.fixture
def cli(monkeypatch):
    """Invoke `batcher ...`; returns click's Result (exit_code, stdout, stderr)."""
    for name in ("OPENAI_API_KEY", "OCTEN_API_KEY", "OCTOPUSX_API_KEY", "BATCHER_MOCK_API_KEY"):
        monkeypatch.delenv(name, raising=False)
    runner = CliRunner()

    def invoke(*args: str, env: dict[str, str] | None = None):
        return runner.invoke(main, [str(a) for a in args], env=env, catch_exceptions=False)

    return invoke


@pytest.fixture
def run_job(cli, api):
    """`batcher run INPUT -o OUT --base-url API -m MODEL ARGS...` against the mock API.

    INPUT is a path, or a list of rows written to `in.jsonl` beside OUT; API is `api`
    unless `server=` names another mock; `model=None` gives no `-m`."""

    def run(data, out: Path, *args, model: str | None = "mock-1", server=None, env=None):
        if not isinstance(data, (str, Path)):
            data = write_jsonl(Path(out).parent / "in.jsonl", data)
        models = ("-m", model) if model is not None else ()
        url = (server or api).url
        return cli("run", data, "-o", out, "--base-url", url, *models, *args, env=env)

    return run


def records(out: Path) -> list[dict]:
    """The batches a `--mode batch` job writing `out` has on record (batches.json)."""
    return json.loads((out.parent / (out.name + ".batcher") / "batches.json").read_text())


def rewrite_records(out: Path, kept: list[dict]) -> None:
    """Put `kept` on record instead, as a run cut short (or an older version) left it."""
    (out.parent / (out.name + ".batcher") / "batches.json").write_text(json.dumps(kept))


def write_jsonl(path: Path, rows) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def request(i: int, prompt: str | None = None, model: str = "mock-1") -> Request:
    """Request i of a library caller: one user message, id and row index i."""
    content = prompt or f"prompt {i}"
    return Request.chat(model, [{"role": "user", "content": content}], id=str(i), index=i)


def prompts(n: int, prefix: str = "p") -> list[dict]:
    return [{"id": f"{prefix}{i}", "prompt": f"question number {i}"} for i in range(n)]


class Job:
    """`python -m batcher run ...` in a real subprocess; stderr goes to a file."""

    count = 0

    def __init__(self, args, stderr_dir: Path) -> None:
        Job.count += 1
        self.stderr_path = stderr_dir / f"stderr-{Job.count}.txt"
        env = {k: v for k, v in os.environ.items() if not k.endswith("_API_KEY")}
        with open(self.stderr_path, "wb") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "batcher", "run", *map(str, args)],
                stdout=subprocess.DEVNULL,
                stderr=err,
                env=env,
            )
        self.pid = self.proc.pid

    def send_signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def wait(self, timeout: float = 120) -> int:
        return self.proc.wait(timeout=timeout)

    @property
    def stderr(self) -> str:
        return self.stderr_path.read_text()


def wait_for(predicate, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting")
        time.sleep(0.02)


def durable_count(job_dir: Path) -> int:
    total = 0
    for part in JobDir.of(job_dir).parts():
        total += pq.read_metadata(part).num_rows
    return total


@pytest.fixture(scope="session")
def cluster():
    """A local Ray on 127.0.0.1 (no dashboard), for every Ray test that asks; its address."""
    import ray

    from batcher.ray.engine import connect

    connect("local")
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()

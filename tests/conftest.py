"""Shared fixtures: a mock API on loopback (in a thread) and a CLI runner."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from batcher.cli import main
from batcher.mockserver import MockConfig, MockServerThread

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


def write_jsonl(path: Path, rows) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path

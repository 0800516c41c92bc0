"""What the Ray tests share besides the cluster (the `cluster` fixture of tests/conftest.py)."""

from __future__ import annotations

from pathlib import Path


def run_on_ray(cli, data: Path, out: Path, api, *args: str, env=None):
    """`batcher run DATA -o OUT --base-url API -m m --engine ray ARGS...` in this process."""
    base = ("run", data, "-o", out, "--base-url", api.url, "-m", "m", "--engine", "ray")
    return cli(*base, *args, env=env)

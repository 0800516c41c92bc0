"""The floor: the least a Python aiohttp client can do to push the same requests.

One ClientSession with TCPConnector(limit=C), C worker coroutines pulling pre-built bodies
from a list, POST, `await resp.read()`, `orjson.loads`, nothing written. uvloop when
installed (unless --no-uvloop). Run by `benchmarks/throughput.py`; by hand:

    python benchmarks/floor_client.py IN.jsonl --url http://127.0.0.1:PORT/v1 -m mock-1 -c 64

Prints one JSON object on stdout: n, ok, errors, elapsed_s (first POST to last reply,
bodies already built), rps, loop.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time

import aiohttp
import orjson


def load_bodies(path: str, model: str) -> list[bytes]:
    """The same bodies batcher sends for `{"id", "prompt"}` rows and one model."""
    bodies = []
    with open(path, "rb") as f:
        for line in f:
            if line.strip():
                row = orjson.loads(line)
                body = {"model": model, "messages": [{"role": "user", "content": row["prompt"]}]}
                bodies.append(orjson.dumps(body))
    return bodies


async def run(url: str, bodies: list[bytes], concurrency: int) -> dict:
    headers = {"Content-Type": "application/json", "Accept": "application/json"}
    connector = aiohttp.TCPConnector(limit=concurrency)
    counts = {"ok": 0, "errors": 0}
    it = iter(bodies)

    async with aiohttp.ClientSession(connector=connector) as session:

        async def worker() -> None:
            for body in it:  # a shared iterator: each body is taken once
                try:
                    async with session.post(url, data=body, headers=headers) as resp:
                        raw = await resp.read()
                        orjson.loads(raw)
                        counts["ok" if resp.status == 200 else "errors"] += 1
                except (aiohttp.ClientError, asyncio.TimeoutError, orjson.JSONDecodeError):
                    counts["errors"] += 1

        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - start
    n = len(bodies)
    return {"n": n, **counts, "elapsed_s": elapsed, "rps": n / elapsed}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("input", help="JSONL with a 'prompt' column")
    parser.add_argument("--url", required=True, help="base URL, e.g. http://127.0.0.1:8000/v1")
    parser.add_argument("-m", "--model", default="mock-1")
    parser.add_argument("-c", "--concurrency", type=int, default=64)
    parser.add_argument("--no-uvloop", action="store_true", help="use asyncio's default loop")
    args = parser.parse_args()

    bodies = load_bodies(args.input, args.model)
    url = args.url.rstrip("/") + "/chat/completions"
    loop_factory = asyncio.new_event_loop
    loop_name = "asyncio"
    if not args.no_uvloop:
        try:
            import uvloop
        except ImportError:
            pass
        else:
            loop_factory, loop_name = uvloop.new_event_loop, "uvloop"
    loop = loop_factory()
    asyncio.set_event_loop(loop)
    try:
        out = loop.run_until_complete(run(url, bodies, args.concurrency))
    finally:
        loop.close()
    out["loop"] = loop_name
    sys.stdout.write(orjson.dumps(out).decode() + "\n")


if __name__ == "__main__":
    main()

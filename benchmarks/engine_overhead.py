"""CPU per request of the engine alone, in one process: floor vs `Client` vs `Engine`.

    python benchmarks/engine_overhead.py [--n 20000] [-c 64] [--runs 3] [--live]

The same N pre-built requests, the same concurrency, a mock server with no latency in its
own process, uvloop, and in every round (the order rotates):

- floor: one aiohttp session, C workers, `POST`, `await resp.read()`, `orjson.loads`;
- client: C workers calling `batcher.engine.http.Client.post` on bodies already encoded (one
  attempt: timeout, size cap, parse into a `Reply`, classification);
- engine: `Engine.run_batches` over the `Request`s (limits, concurrency cap, results).

No files, no input reading, no start-up: what batcher adds to each request on the send path,
in microseconds of CPU (this process only). `batcher run` adds reading the input, building
and hashing requests, writing parts and the final assembly on top (see throughput.py).

Prints one JSON object on stdout.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import MockServer, log, machine, median, rnd, snapshot_code


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=20_000)
    parser.add_argument("-c", "--concurrency", type=int, default=64)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--live", action="store_true", help="no snapshot of the code")
    args = parser.parse_args()
    code = snapshot_code(live=args.live)
    if code.get("path"):
        sys.path.insert(0, code["path"])

    import aiohttp
    import orjson
    import uvloop

    import batcher
    from batcher.engine.engine import Engine, EngineSettings
    from batcher.engine.http import Client, new_session
    from batcher.providers import Endpoint
    from batcher.types import Request

    n, c = args.n, args.concurrency

    def requests() -> list[Request]:
        text = "x" * 90
        return [
            Request.chat("mock-1", [{"role": "user", "content": f"p{i} {text}"}], index=i)
            for i in range(n)
        ]

    async def floor(url: str, todo: list[Request]) -> None:
        bodies = iter([r.payload for r in todo])
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=c)) as session:

            async def worker() -> None:
                for body in bodies:
                    async with session.post(
                        url + "/chat/completions", data=body, headers=headers
                    ) as r:
                        orjson.loads(await r.read())

            await asyncio.gather(*(worker() for _ in range(c)))

    async def client(url: str, todo: list[Request]) -> None:
        bodies = iter([r.payload for r in todo])
        endpoint = Endpoint(url, "bearer", None)
        session = new_session(c, endpoint.headers())
        posting = Client(session, endpoint, session_has_headers=True)

        async def worker() -> None:
            for body in bodies:
                if (await posting.post(body)).reply is None:
                    raise RuntimeError("a request failed")

        try:
            await asyncio.gather(*(worker() for _ in range(c)))
        finally:
            await session.close()

    async def engine(url: str, todo: list[Request]) -> None:
        runner = Engine(Endpoint(url, "bearer", None), EngineSettings(concurrency=c))
        done = 0
        async for batch in runner.run_batches(iter(todo)):
            done += len(batch)
        if done != n:
            raise RuntimeError(f"{done} results for {n} requests")

    clients = {"floor": floor, "client": client, "engine": engine}
    figures: dict[str, list[tuple[float, float]]] = {name: [] for name in clients}
    with MockServer(0.0) as server:
        for round_ in range(args.runs):
            names = list(clients)
            names = names[round_ % len(names) :] + names[: round_ % len(names)]
            for name in names:
                todo = requests()
                gc.collect()
                loop = uvloop.new_event_loop()
                cpu, wall = time.process_time(), time.perf_counter()
                loop.run_until_complete(clients[name](server.url, todo))
                cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
                loop.close()
                figures[name].append((cpu / n * 1e6, n / wall))
                log(f"round {round_ + 1} {name}: {cpu / n * 1e6:.1f} us CPU/request")
    out = {
        "machine": machine(),
        "code": {**code, "imported_from": batcher.__file__},
        "settings": {"n": n, "concurrency": c, "runs": args.runs},
        "cpu_us_per_request": {k: rnd(median([x[0] for x in v])) for k, v in figures.items()},
        "rps": {k: rnd(median([x[1] for x in v])) for k, v in figures.items()},
        "rounds": figures,
    }
    floor_us = out["cpu_us_per_request"]["floor"]
    out["added_us_per_request"] = {
        k: rnd(v - floor_us) for k, v in out["cpu_us_per_request"].items() if k != "floor"
    }
    sys.stdout.write(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()

"""The request engine: requests in, results out (`Engine`, `EngineSettings`, `EngineRun`).

`engine` runs requests through the worker `pool`, within the `limits` (the `rates` of each
endpoint and model, found from 429s by `adaptive` when no header says them), over the one
aiohttp boundary `http` (whose bytes `replies` parses), with the `retry` policy and the
server's health, the `budget`, the response `cache` and structured re-asks (`reask`);
`results` turns an outcome into its row.
"""

from batcher.engine.engine import Engine, EngineRun, EngineSettings, ModelLimits

__all__ = ["Engine", "EngineRun", "EngineSettings", "ModelLimits"]

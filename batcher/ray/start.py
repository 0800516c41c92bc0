"""Ray brought up beside the driver's own work: importing ray and ray.data and starting a
local Ray take seconds that the checking pass need not wait for, and shutting it down takes
one that assembling OUT need not wait for.

This module imports no Ray itself: `Job` uses it before it knows the input is good.
"""

from __future__ import annotations

import asyncio
import threading
from types import TracebackType


class RayStart:
    """Ray imported and started (or joined) in a thread of its own from `__enter__`;
    `ready()` waits for it, `release()` lets it shut down in the background, the end waits
    for that. A Ray that was up already (a notebook's own) is used and left up.

    One thread starts and stops Ray: the processes a local Ray starts die with the thread
    that started them (Linux's parent-death signal follows the thread)."""

    def __init__(self, address: str | None) -> None:
        self.address = address
        self._outcome: BaseException | bool | None = None  # an error, or: started here
        self._up = threading.Event()
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._keep, name="batcher-ray")

    def __enter__(self) -> RayStart:
        self._thread.start()
        return self

    async def ready(self) -> None:
        """Wait for Ray; raise what stopped it from starting (a one-line UsageError)."""
        await asyncio.to_thread(self._up.wait)
        if isinstance(self._outcome, BaseException):
            raise self._outcome

    def release(self) -> None:
        """Ray is done with: shut it down (if started here) while the driver goes on."""
        self._done.set()

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._done.set()
        self._thread.join()

    def _keep(self) -> None:
        try:
            import ray

            from batcher.ray.engine import connect

            if ray.is_initialized():
                self._outcome = False
            else:
                connect(self.address)
                self._outcome = True
        except BaseException as exc:  # said by ready(), in the driver's own task
            self._outcome = exc
        finally:
            self._up.set()
        self._done.wait()
        if self._outcome is True:
            ray.shutdown()

"""One reply being produced in the background, possibly before anyone has asked for it.

A run can start speculatively (the user paused; the turn may be over) and its outputs wait in a queue
until the session adopts it as a response, or it is cancelled because the user went on talking.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable

from engine.backends.base import BackendSession, ReplyOutput, ReplyRequest, ReplyStats

log = logging.getLogger(__name__)

_END = object()


class ReplyFailed(RuntimeError):
    pass


class ReplyRun:
    def __init__(self, backend: BackendSession, build_request: Callable[[], Awaitable[ReplyRequest]]):
        self._backend = backend
        self._build_request = build_request
        self._queue: asyncio.Queue = asyncio.Queue()
        self.stats = ReplyStats()
        self.started_at = time.monotonic()
        self.first_output_at: float | None = None
        self._task = asyncio.get_running_loop().create_task(self._produce())

    async def _produce(self) -> None:
        try:
            request = await self._build_request()
            self.stats.mark("request_ready")
            async for output in self._backend.reply(request, self.stats):
                if self.first_output_at is None:
                    self.first_output_at = time.monotonic()
                self._queue.put_nowait(output)
        except asyncio.CancelledError:
            raise
        except Exception as error:  # a model failure ends this reply, never the session
            log.exception("reply failed")
            self._queue.put_nowait(ReplyFailed(str(error) or type(error).__name__))
        finally:
            self._queue.put_nowait(_END)

    async def outputs(self) -> AsyncIterator[ReplyOutput]:
        while True:
            output = await self._queue.get()
            if output is _END:
                return
            if isinstance(output, ReplyFailed):
                raise output
            yield output

    def cancel(self) -> None:
        self._task.cancel()

    @property
    def done(self) -> bool:
        return self._task.done()

"""Dynamic micro-batching with a bounded queue (the batching of TF Serving and Triton).

Requests wait in a queue of at most ``max_queue`` entries; a single worker takes the first
waiting request, then keeps collecting until it holds ``max_batch`` requests or ``max_wait``
seconds have passed since it took the first (one timer per batch; a batch that fills up goes at
once), and runs the whole batch as one call in its own thread (model code never blocks the event
loop). ``max_wait = 0`` batches only the requests already waiting, Triton's default: a lone
request never waits, and under load batches grow by themselves while the model is busy.
``max_batch = 1`` is serving without batching.

A request counts against ``max_queue`` from when it is queued until the worker takes it (a
request that wakes an idle worker still counts until the worker runs, so two requests arriving
together at an idle server with ``max_queue = 1`` get one answer and one 503). A request that
finds the queue full is refused at once (:class:`Overloaded`, which the app turns
into 503 with ``Retry-After``): under overload, latency stays bounded instead of the queue
growing without limit. :meth:`MicroBatcher.close` refuses new requests and returns once every
request already queued has been answered, so a graceful shutdown finishes in-flight work.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import dataclasses
from collections.abc import Callable, Sequence
from typing import Generic, TypeVar

__all__ = ["BatchSettings", "MicroBatcher", "Overloaded"]

In = TypeVar("In")
Out = TypeVar("Out")


class Overloaded(Exception):
    """The queue is full or the batcher is closing: the caller should retry later."""


@dataclasses.dataclass(frozen=True, kw_only=True)
class BatchSettings:
    """Micro-batching limits.

    Attributes:
        max_batch: most requests in one model call (1: no batching).
        max_wait: longest a batch waits for more requests after its first, in seconds.
        max_queue: most requests waiting at once; one more is refused.
    """

    max_batch: int = 32
    max_wait: float = 0.005
    max_queue: int = 256

    def __post_init__(self) -> None:
        if not 1 <= self.max_batch <= 4096:
            raise ValueError(f"max_batch={self.max_batch}: must be in 1..4096")
        if not 0.0 <= self.max_wait <= 1.0:
            raise ValueError(f"max_wait={self.max_wait}: must be in [0, 1] seconds")
        if not 1 <= self.max_queue <= 1_000_000:
            raise ValueError(f"max_queue={self.max_queue}: must be in 1..1000000")


@dataclasses.dataclass
class _Pending(Generic[In, Out]):
    item: In
    future: asyncio.Future[Out]


class MicroBatcher(Generic[In, Out]):
    """Collects single requests into batches for ``run_batch`` (see the module docstring).

    Args:
        run_batch: maps a batch of inputs to as many outputs, in order; runs in a worker thread.
        settings: the limits.
        on_batch: called with each batch's size (a metrics hook).
    """

    def __init__(
        self,
        run_batch: Callable[[Sequence[In]], Sequence[Out]],
        settings: BatchSettings,
        *,
        on_batch: Callable[[int], None] | None = None,
    ) -> None:
        self.run_batch = run_batch
        self.settings = settings
        self.on_batch = on_batch
        self._queue: asyncio.Queue[_Pending[In, Out]] | None = None
        self._worker: asyncio.Task[None] | None = None
        self._pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="fedkit-batch")
        self._closing = False
        self._filled: asyncio.Event | None = None
        self._want = 0  # while a batch waits to fill: the queued requests that would fill it

    def start(self) -> None:
        """Start the worker on the running event loop."""
        self._queue = asyncio.Queue(self.settings.max_queue)
        self._filled = asyncio.Event()
        self._worker = asyncio.get_running_loop().create_task(self._work())

    @property
    def depth(self) -> int:
        """Requests waiting now."""
        return 0 if self._queue is None else self._queue.qsize()

    async def submit(self, item: In) -> Out:
        """Queue one request and wait for its answer.

        Raises:
            Overloaded: the queue is full, or the batcher is closing or not started.
            Exception: whatever ``run_batch`` raised for this request's batch.
        """
        if self._queue is None or self._closing:
            raise Overloaded("the server is shutting down")
        future: asyncio.Future[Out] = asyncio.get_running_loop().create_future()
        try:
            self._queue.put_nowait(_Pending(item, future))
        except asyncio.QueueFull:
            raise Overloaded(f"the request queue is full ({self.settings.max_queue})") from None
        if 0 < self._want <= self._queue.qsize() and self._filled is not None:
            self._filled.set()  # the waiting batch can fill up now
        return await future

    async def _collect(self, queue: asyncio.Queue[_Pending[In, Out]]) -> list[_Pending[In, Out]]:
        """The next batch: the first waiting request, everything already queued behind it (up to
        ``max_batch``) and, if that is not a full batch, what arrives within ``max_wait``.

        The wait is one event and one timer per batch, not one per request: :meth:`submit` sets
        the event when the queue holds the rest of a full batch, so a batch that fills up goes
        at once and the timer ends only a batch that did not fill.
        """
        batch = [await queue.get()]
        self._take(queue, batch)
        max_wait, filled = self.settings.max_wait, self._filled
        if len(batch) < self.settings.max_batch and max_wait > 0 and filled is not None:
            self._want = self.settings.max_batch - len(batch)
            filled.clear()
            try:
                async with asyncio.timeout(max_wait):
                    await filled.wait()
            except TimeoutError:
                pass
            finally:
                self._want = 0
            self._take(queue, batch)
        return batch

    def _take(
        self, queue: asyncio.Queue[_Pending[In, Out]], batch: list[_Pending[In, Out]]
    ) -> None:
        while len(batch) < self.settings.max_batch and not queue.empty():
            batch.append(queue.get_nowait())

    async def _work(self) -> None:
        assert self._queue is not None
        loop = asyncio.get_running_loop()
        while True:
            batch = await self._collect(self._queue)
            if self.on_batch is not None:
                self.on_batch(len(batch))
            items = [p.item for p in batch]
            try:
                outs = await loop.run_in_executor(self._pool, self.run_batch, items)
                if len(outs) != len(batch):
                    raise RuntimeError(f"run_batch gave {len(outs)} outputs for {len(batch)}")
            except Exception as e:  # every waiting request gets the error, the worker goes on
                for p in batch:
                    if not p.future.done():
                        p.future.set_exception(e)
            else:
                for p, out in zip(batch, outs, strict=True):
                    if not p.future.done():  # its client may have gone away
                        p.future.set_result(out)
            for _ in batch:
                self._queue.task_done()

    async def close(self) -> None:
        """Refuse new requests, answer every queued one, then stop the worker."""
        self._closing = True
        if self._queue is not None:
            await self._queue.join()
        if self._worker is not None:
            self._worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._worker
        self._pool.shutdown(wait=True)

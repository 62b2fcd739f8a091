"""``executor = "processes"``: K local gloo ranks, this process rank 0, the others spawned.

The spawned ranks receive only small typed recipes — the algorithm (a frozen dataclass of
hyperparameters), a model recipe (:class:`~fedkit.sim.factory.ModelSpec`) and a store recipe (a
``[data]`` table, see :func:`store_recipe`) — and rebuild the client data and the resident model
themselves; no tensor is serialised. Rendezvous is a ``FileStore`` in a temporary file; rank 0 fails
fast, naming the rank, when a worker dies before checking in or cannot build its data. The round
protocol itself is :class:`~fedkit.sim.distributed.DistributedExecutor`'s.
"""

from __future__ import annotations

import contextlib
import datetime
import functools
import multiprocessing
import multiprocessing.process
import os
import tempfile
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch._C._distributed_c10d import FileStore

from fedkit.algorithm import Algorithm, RoundInfo
from fedkit.data.store import ClientStore
from fedkit.evaluate import ClientEval
from fedkit.executor import RoundOutput
from fedkit.params import Params
from fedkit.sim.distributed import DistributedExecutor, RemoteRankError, startup_check
from fedkit.sim.serial import Participation, SerialExecutor, full_participation

if TYPE_CHECKING:
    from fedkit.data.spec import DataSpec


def _store_from_table(table: dict[str, Any]) -> ClientStore:
    from fedkit.data.spec import DataSpec, build_federated

    return ClientStore.from_federated(build_federated(DataSpec.from_mapping(table)))


def store_recipe(
    *, data_spec: DataSpec | None = None, store_fn: Callable[[], ClientStore] | None = None
) -> Callable[[], ClientStore] | None:
    """A picklable zero-argument function that rebuilds the client store on another rank.

    A ``data_spec`` travels as its ``[data]`` table (plain scalars) and is validated again there.
    """
    if data_spec is not None and store_fn is not None:
        raise ValueError("give data_spec or store_fn, not both")
    if data_spec is not None:
        return functools.partial(_store_from_table, data_spec.to_mapping())
    return store_fn


def _worker(
    rank: int,
    world_size: int,
    init_file: str,
    threads: int,
    timeout_s: float,
    algorithm: Algorithm[Any, Any, Any, Any],
    model_fn: Callable[[], nn.Module],
    store_fn: Callable[[], ClientStore],
) -> None:
    """Entry point of a spawned rank: build store and model, then serve until shut down.

    A failure to build is reported to rank 0 (which raises it) and the process exits normally.
    """
    torch.set_num_threads(threads)
    store = FileStore(init_file, world_size)
    store.set(f"fedkit-up-{rank}", "1")
    dist.init_process_group(
        "gloo",
        store=store,
        rank=rank,
        world_size=world_size,
        timeout=datetime.timedelta(seconds=timeout_s),
    )
    try:
        error = ""
        ex: DistributedExecutor | None = None
        try:
            ex = DistributedExecutor(store_fn(), model_fn())
        except Exception as exc:
            error = f"{type(exc).__name__} while building rank {rank}: {exc}"
        try:
            startup_check(world_size, rank, error)
        except RemoteRankError:
            return  # rank 0 raises it with every rank's message
        if ex is not None:
            ex.serve(algorithm)
    finally:
        dist.destroy_process_group()


class ProcessExecutor:
    """``executor = "processes"``: this process is rank 0 of ``world_size`` local gloo ranks.

    The other ranks are spawned on the first :meth:`execute` (they need the algorithm, a small
    frozen dataclass) and rebuild the client store with ``store_fn`` and the model with
    ``model_fn`` — both must be picklable zero-argument callables (a ``functools.partial`` of a
    module-level function, a :class:`~fedkit.sim.factory.ModelSpec`). Call :meth:`close` (or use
    it as a context manager) to stop them.
    """

    def __init__(
        self,
        *,
        store: ClientStore,
        model_fn: Callable[[], nn.Module],
        store_fn: Callable[[], ClientStore] | None,
        world_size: int = 2,
        threads: int = 1,
        participation: Participation = full_participation,
        eval_batch_size: int = 1000,
        timeout_s: float = 600.0,
    ) -> None:
        if world_size < 1:
            raise ValueError(f"processes must be >= 1, got {world_size}")
        if threads < 1:
            raise ValueError(f"threads must be >= 1, got {threads}")
        if world_size > 1 and store_fn is None:
            raise ValueError(
                "executor 'processes' needs data_spec (or store_fn) so that each rank can "
                "rebuild the client data; tensors are not shipped between processes"
            )
        self.store = store
        self.model_fn = model_fn
        self.store_fn = store_fn
        self.world_size = world_size
        self.threads = threads
        self.participation = participation
        self.eval_batch_size = eval_batch_size
        self.timeout_s = timeout_s
        self._inner: DistributedExecutor | None = None
        self._procs: list[multiprocessing.process.BaseProcess] = []
        self._init_file: str | None = None
        self._pending_template: Any = None

    @property
    def num_clients(self) -> int:
        """Population size."""
        return self.store.num_clients

    def start(self, algorithm: Algorithm[Any, Any, Any, Any]) -> None:
        """Spawn and connect the ranks now (otherwise the first :meth:`execute` does it)."""
        self._start(algorithm)

    def _start(self, algorithm: Algorithm[Any, Any, Any, Any]) -> DistributedExecutor:
        if self._inner is not None:
            return self._inner
        if dist.is_initialized():
            raise RuntimeError(
                "a torch.distributed process group already exists in this process; under "
                "torchrun use DistributedExecutor instead of executor='processes'"
            )
        os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
        fd, path = tempfile.mkstemp(prefix="fedkit-dist-")
        os.close(fd)
        os.unlink(path)
        self._init_file = path
        if self.world_size > 1:
            ctx = multiprocessing.get_context("spawn")
            for rank in range(1, self.world_size):
                proc = ctx.Process(
                    target=_worker,
                    args=(
                        rank,
                        self.world_size,
                        path,
                        self.threads,
                        self.timeout_s,
                        algorithm,
                        self.model_fn,
                        self.store_fn,
                    ),
                    name=f"fedkit-rank-{rank}",
                    daemon=True,
                )
                proc.start()
                self._procs.append(proc)
        store = FileStore(path, self.world_size)
        self._await_workers(store)
        dist.init_process_group(
            "gloo",
            store=store,
            rank=0,
            world_size=self.world_size,
            timeout=datetime.timedelta(seconds=self.timeout_s),
        )
        error = ""
        inner: DistributedExecutor | None = None
        try:
            inner = DistributedExecutor(
                self.store,
                self.model_fn(),
                participation=self.participation,
                eval_batch_size=self.eval_batch_size,
            )
        except Exception as exc:
            error = f"{type(exc).__name__} while building rank 0: {exc}"
        try:
            startup_check(self.world_size, 0, error)
        except RemoteRankError:
            self._teardown(join=True)
            raise
        assert inner is not None
        self._inner = inner
        if self._pending_template is not None:
            inner.load_client_state_tensors(self.store.state_tensors(), self._pending_template)
            self._pending_template = None
        return inner

    @property
    def last_rank_cpu_seconds(self) -> list[float]:
        """CPU seconds each rank spent on its share of the last round."""
        return [] if self._inner is None else self._inner.last_rank_cpu_seconds

    def _await_workers(self, store: FileStore) -> None:
        """Wait until every spawned rank checked in, failing fast if one of them died."""
        keys = [f"fedkit-up-{r}" for r in range(1, self.world_size)]
        deadline = time.monotonic() + self.timeout_s
        while keys:
            try:
                store.wait(keys, datetime.timedelta(seconds=0.5))
                return
            except RuntimeError:
                pass
            dead = [(i + 1, p.exitcode) for i, p in enumerate(self._procs) if not p.is_alive()]
            if dead or time.monotonic() > deadline:
                self._teardown(join=True)
                what = ", ".join(f"rank {r} exited with code {c}" for r, c in dead)
                raise RemoteRankError(
                    f"worker ranks failed to start ({what or 'timed out'}); a script that uses "
                    "executor='processes' must guard its entry point with "
                    "`if __name__ == '__main__':` (ranks are spawned), see the rank's stderr"
                )

    def execute(
        self,
        algorithm: Algorithm[Any, Any, Any, Any],
        msg: Any,
        cohort: Sequence[int],
        info: RoundInfo,
    ) -> RoundOutput:
        """Run ``cohort`` on all ranks (spawning them the first time)."""
        inner = self._start(algorithm)
        before = torch.get_num_threads()
        torch.set_num_threads(self.threads)
        try:
            return inner.execute(algorithm, msg, cohort, info)
        finally:
            torch.set_num_threads(before)

    def evaluate(
        self,
        params: Params,
        clients: Sequence[int],
        algorithm: Algorithm[Any, Any, Any, Any] | None = None,
        info: RoundInfo | None = None,
    ) -> list[ClientEval]:
        """Federated evaluation over the ranks (in this process before the first round)."""
        if self._inner is None:
            return SerialExecutor(
                self.store, self.model_fn(), eval_batch_size=self.eval_batch_size
            ).evaluate(params, clients, algorithm, info)
        return self._inner.evaluate(params, clients, algorithm, info)

    def client_state_tensors(self) -> dict[str, Tensor]:
        """Client states gathered from their owner ranks."""
        if self._inner is None:
            return self.store.state_tensors()
        return self._inner.client_state_tensors()

    def load_client_state_tensors(self, flat: dict[str, Tensor], template: Any) -> None:
        """Restore client states; before the ranks start they are kept here and handed to the
        owner ranks when the ranks start."""
        if self._inner is None:
            self.store.load_state_tensors(flat, template)
            self._pending_template = template
            return
        self._inner.load_client_state_tensors(flat, template)

    def close(self) -> None:
        """Shut the worker ranks down and destroy the process group (idempotent)."""
        self._teardown(join=True)

    def _teardown(self, *, join: bool) -> None:
        if self._inner is not None:
            try:
                self._inner.shutdown()
            finally:
                self._inner = None
        if dist.is_initialized():
            dist.destroy_process_group()
        if self._procs and join:
            deadline = time.monotonic() + 30.0
            for p in self._procs:
                p.join(timeout=max(deadline - time.monotonic(), 0.1))
                if p.is_alive():
                    p.terminate()
                    p.join(timeout=5.0)
            self._procs = []
        if self._init_file is not None and os.path.exists(self._init_file):
            os.unlink(self._init_file)
        self._init_file = None

    def __enter__(self) -> ProcessExecutor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        if getattr(self, "_procs", None):
            with contextlib.suppress(Exception):  # best effort at interpreter exit
                self._teardown(join=True)

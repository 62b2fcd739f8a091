"""The process group of a ``torchrun`` launch: who is where, who is alive, and leaving together.

``torchrun --nnodes N --nproc-per-node K … -m fedkit run FILE`` starts ``N × K`` processes with
``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT`` in their environment
(:func:`torchrun_env` reads and checks them). :meth:`RankGroup.start` joins the gloo process group
(``env://``, with a timeout for every collective), publishes each rank's host name and the
address it reaches the rendezvous host from in the launcher's key-value store, and starts a
heartbeat: a daemon thread that increments ``fedkit/beat/<rank>`` in that store every
:data:`BEAT_SECONDS`.

When a collective fails — gloo raises ``RuntimeError: … Connection closed by peer [10.0.0.2]:…``
the moment a peer's process dies, or times out when a peer hangs — :meth:`RankGroup.lost` finds
the ranks whose heartbeat stopped (sampled twice, :data:`DEAD_AFTER` beats apart) and returns a
:class:`RankLostError` naming each by rank, host and address; when every heartbeat still moves
(a network fault rather than a dead process) the peer address in gloo's message names the
ranks on that host. After that the group is :attr:`RankGroup.broken`: no collective is tried
again, and every rank leaves with :func:`leave` (``os._exit``, no interpreter teardown, as the
data-parallel track does: gloo's threads can abort a finished process at exit).
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import os
import re
import signal
import socket
import sys
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any, NoReturn

import torch.distributed as dist
from torch import Tensor
from torch._C._distributed_c10d import TCPStore

from fedkit.algorithm import Algorithm, RoundInfo
from fedkit.evaluate import ClientEval
from fedkit.executor import Executor, ExecutorWrapper, RoundOutput
from fedkit.params import Params

__all__ = [
    "BEAT_SECONDS",
    "DEAD_AFTER",
    "GroupExecutor",
    "RankGroup",
    "RankHost",
    "RankLostError",
    "TorchrunEnv",
    "is_transport_error",
    "leave",
    "torchrun_env",
]

BEAT_SECONDS = 0.5
"""Heartbeat period of every rank."""

DEAD_AFTER = 4
"""A rank whose heartbeat did not move for this many periods is taken for dead."""

_MAX_HOST = 255  # a host name or address longer than this from a peer is cut
_ADDR = re.compile(r"\[([0-9A-Fa-f.:]+)\]:\d+")


class RankLostError(RuntimeError):
    """A rank of the group died or became unreachable; the group cannot be used again.

    Attributes:
        ranks: The ranks taken for lost (empty when none could be named).
    """

    def __init__(self, message: str, ranks: Sequence[int] = ()) -> None:
        super().__init__(message)
        self.ranks = tuple(ranks)


@dataclasses.dataclass(frozen=True, kw_only=True)
class TorchrunEnv:
    """The launcher's environment of one rank.

    Attributes:
        rank: Global rank, ``0 <= rank < world_size``.
        world_size: Number of ranks (>= 1).
        local_rank: Rank on this host.
        master_addr: Rendezvous host (where rank 0's launcher keeps the key-value store).
        master_port: Its port.
    """

    rank: int
    world_size: int
    local_rank: int
    master_addr: str
    master_port: int


def _int(env: Mapping[str, str], key: str, low: int, high: int) -> int:
    raw = env.get(key, "")
    try:
        value = int(raw)
    except ValueError:
        raise ValueError(f"{key} must be an integer, got {raw!r}") from None
    if not low <= value <= high:
        raise ValueError(f"{key} must be in [{low}, {high}], got {value}")
    return value


def torchrun_env(env: Mapping[str, str] | None = None) -> TorchrunEnv | None:
    """This process's rank, world size and rendezvous address, as ``torchrun`` sets them.

    Returns:
        ``None`` when ``RANK`` and ``WORLD_SIZE`` are not both set (not launched by torchrun).

    Raises:
        ValueError: A variable is missing or malformed (the message names it).
    """
    env = os.environ if env is None else env
    if "RANK" not in env or "WORLD_SIZE" not in env:
        return None
    world = _int(env, "WORLD_SIZE", 1, 1 << 20)
    addr = env.get("MASTER_ADDR", "")
    if not addr:
        raise ValueError("MASTER_ADDR is not set (torchrun sets it; so must a manual launch)")
    return TorchrunEnv(
        rank=_int(env, "RANK", 0, world - 1),
        world_size=world,
        local_rank=_int(env, "LOCAL_RANK", 0, world - 1) if "LOCAL_RANK" in env else 0,
        master_addr=addr,
        master_port=_int(env, "MASTER_PORT", 1, 65535),
    )


def is_transport_error(exc: BaseException) -> bool:
    """Whether ``exc`` came from the process group's transport (a dead or silent peer, a
    timeout) rather than from the code between collectives."""
    return isinstance(exc, dist.DistError) or (
        isinstance(exc, RuntimeError) and "/gloo/" in str(exc)
    )


@dataclasses.dataclass(frozen=True)
class RankHost:
    """Where a rank runs: its host name and the address it reaches the rendezvous host from."""

    host: str
    address: str


def _local_address(master_addr: str, master_port: int) -> str:
    """The local address of the route to the rendezvous host (no packet is sent)."""
    try:
        family = socket.getaddrinfo(master_addr, master_port, type=socket.SOCK_DGRAM)[0]
        with socket.socket(family[0], socket.SOCK_DGRAM) as s:
            s.connect(family[4])
            return str(s.getsockname()[0])
    except OSError:
        return "?"


def _parse_host(raw: bytes) -> RankHost:
    """A peer's published entry; anything malformed becomes ``?`` (it is only a label)."""
    try:
        data = json.loads(raw.decode("utf-8"))
        host, addr = data["host"], data["address"]
    except (UnicodeDecodeError, ValueError, KeyError, TypeError):
        return RankHost("?", "?")
    ok = isinstance(host, str) and isinstance(addr, str)
    return RankHost(host[:_MAX_HOST], addr[:_MAX_HOST]) if ok else RankHost("?", "?")


class RankGroup:
    """A joined gloo process group with its rank table and heartbeat (see the module docstring).

    Build it with :meth:`start`; it is one per process.
    """

    def __init__(self, env: TorchrunEnv, hosts: Sequence[RankHost], timeout_s: float) -> None:
        self.env = env
        self.hosts = tuple(hosts)
        self.timeout_s = timeout_s
        self.broken = False
        """Set once a collective failed: the group is not used again."""
        self._losing = False
        self._stop = threading.Event()
        self._beat: threading.Thread | None = None

    @property
    def rank(self) -> int:
        """This process's rank."""
        return self.env.rank

    @property
    def world_size(self) -> int:
        """Number of ranks."""
        return self.env.world_size

    @classmethod
    def start(cls, env: TorchrunEnv, *, timeout_s: float = 1800.0) -> RankGroup:
        """Join the gloo group of ``env`` (every rank calls), exchange hosts, start beating.

        Args:
            env: This rank's launcher environment.
            timeout_s: How long any collective (and the rendezvous) may wait for a peer.
        """
        if timeout_s <= 0:
            raise ValueError(f"timeout must be > 0 seconds, got {timeout_s}")
        timeout = datetime.timedelta(seconds=timeout_s)
        os.environ.setdefault("MASTER_ADDR", env.master_addr)
        os.environ.setdefault("MASTER_PORT", str(env.master_port))
        dist.init_process_group(
            "gloo", init_method="env://", rank=env.rank, world_size=env.world_size, timeout=timeout
        )
        store = cls._client(env, timeout)
        me = RankHost(socket.gethostname(), _local_address(env.master_addr, env.master_port))
        store.set(f"fedkit/host/{env.rank}", json.dumps(dataclasses.asdict(me)))
        hosts = [_parse_host(store.get(f"fedkit/host/{r}")) for r in range(env.world_size)]
        group = cls(env, hosts, timeout_s)
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, group._on_sigterm)
        group._beat = threading.Thread(
            target=group._beating, args=(store,), name="fedkit-heartbeat", daemon=True
        )
        group._beat.start()
        return group

    @staticmethod
    def _client(env: TorchrunEnv, timeout: datetime.timedelta) -> TCPStore:
        """A client of the launcher's store (the process group already created its server)."""
        return TCPStore(env.master_addr, env.master_port, is_master=False, timeout=timeout)

    def _beating(self, store: TCPStore) -> None:
        key = f"fedkit/beat/{self.rank}"
        while not self._stop.is_set():
            try:
                store.add(key, 1)
            except Exception:  # the store went away (its host ended): nothing left to tell
                return
            self._stop.wait(BEAT_SECONDS)

    def describe(self, rank: int) -> str:
        """``rank R (host H, address A)``."""
        h = self.hosts[rank] if 0 <= rank < len(self.hosts) else RankHost("?", "?")
        return f"rank {rank} (host {h.host}, address {h.address})"

    def silent_ranks(self) -> list[int]:
        """The other ranks whose heartbeat did not move over :data:`DEAD_AFTER` periods."""
        try:
            store = self._client(self.env, datetime.timedelta(seconds=10))
            keys = [f"fedkit/beat/{r}" for r in range(self.world_size)]
            before = [store.add(k, 0) for k in keys]
            time.sleep(DEAD_AFTER * BEAT_SECONDS)
            after = [store.add(k, 0) for k in keys]
        except Exception:  # the store is gone with its host: rank 0's launcher ended
            return [0] if self.rank != 0 else []
        return [r for r in range(self.world_size) if r != self.rank and after[r] == before[r]]

    def lost(self, exc: BaseException, during: str = "") -> RankLostError:
        """The error to raise for a failed collective: the group is marked broken, and the
        ranks that died (or, failing that, the ranks at the peer address in ``exc``) named."""
        self.broken = True
        self._losing = True
        ranks = self.silent_ranks()
        how = "stopped (no heartbeat)"
        if not ranks:
            addrs = set(_ADDR.findall(str(exc)))
            ranks = [r for r, h in enumerate(self.hosts) if r != self.rank and h.address in addrs]
            how = "unreachable"
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        where = f" during {during}" if during else ""
        if not ranks:
            return RankLostError(f"the process group broke{where} ({detail})")
        who = ", ".join(self.describe(r) for r in ranks)
        return RankLostError(f"{who} {how}{where} ({detail})", ranks)

    def _on_sigterm(self, signum: int, frame: object) -> None:
        """torchrun's agent sends SIGTERM to the other ranks of a host when one of its ranks
        fails (and on Ctrl-C): end this rank's work with the lost ranks named, so that rank 0
        records the run before the agent's SIGKILL (a second SIGTERM is ignored)."""
        del frame
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        if self._losing:  # already naming the lost ranks: let that finish and be recorded
            return
        raise self.lost(RuntimeError(f"signal {signum} (SIGTERM) from the launcher"))

    def finish(self) -> None:
        """Leave together after a clean end: a barrier, then the group is destroyed."""
        self._stop.set()
        if not self.broken:
            dist.barrier()
            dist.destroy_process_group()


class GroupExecutor(ExecutorWrapper):
    """Rank 0's executor over a :class:`RankGroup`: a transport failure in any call (a rank
    died, a peer timed out) is raised as the group's :class:`RankLostError`, naming the ranks."""

    def __init__(self, inner: Executor, group: RankGroup) -> None:
        super().__init__(inner)
        self.group = group

    @contextmanager
    def _guard(self, during: str) -> Iterator[None]:
        try:
            yield
        except Exception as e:
            if is_transport_error(e):
                raise self.group.lost(e, during) from e
            raise

    def execute(
        self,
        algorithm: Algorithm[Any, Any, Any, Any],
        msg: Any,
        cohort: Sequence[int],
        info: RoundInfo,
    ) -> RoundOutput:
        """Forwarded; a transport failure names the lost ranks."""
        with self._guard(f"round {info.round}"):
            return self.inner.execute(algorithm, msg, cohort, info)

    def evaluate(
        self,
        params: Params,
        clients: Sequence[int],
        algorithm: Algorithm[Any, Any, Any, Any] | None = None,
        info: RoundInfo | None = None,
    ) -> list[ClientEval]:
        """Forwarded; a transport failure names the lost ranks."""
        with self._guard("federated evaluation"):
            return self.inner.evaluate(params, clients, algorithm, info)

    def client_state_tensors(self) -> dict[str, Tensor]:
        """Forwarded; a transport failure names the lost ranks."""
        with self._guard("the checkpoint's client-state gather"):
            return self.inner.client_state_tensors()

    def load_client_state_tensors(self, flat: dict[str, Tensor], template: Any) -> None:
        """Forwarded; a transport failure names the lost ranks."""
        with self._guard("restoring client states"):
            self.inner.load_client_state_tensors(flat, template)

    def close(self) -> None:
        """Send the other ranks out of ``serve`` (the innermost executor's ``shutdown``), unless
        the group is broken (then no collective is tried)."""
        if self.group.broken:
            return
        inner: Any = self.inner
        while not hasattr(inner, "shutdown") and hasattr(inner, "inner"):
            inner = inner.inner
        with self._guard("shutdown"):
            inner.shutdown()


def leave(code: int) -> NoReturn:
    """End a rank's process now with ``code`` (flushing output first; no teardown)."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)

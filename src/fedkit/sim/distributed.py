"""Simulation on ``torch.distributed`` ranks: one resident model per rank, an all-reduce per round.

Design (pfl-research / FLUTE style): K ranks each hold one resident model and the client store
(rebuilt on every rank from the same small recipe, never shipped as tensors). Rank 0 runs the one
run loop; for each round it broadcasts a fixed-size header, the cohort with each client's work
fraction (decided on rank 0 by the ``participation`` hook, so system-heterogeneity draws happen
once), and the broadcast message as one flat buffer per dtype (its structure is known on every
rank from ``algorithm.broadcast(algorithm.init_state(params))``). Each rank runs its share of the
cohort with :func:`fedkit.client.run_client` — the same code path as the serial executor — adds
the updates in ascending client order into a local accumulator, and the partial accumulators
meet through the aggregator's own ``reduce`` over this module's :class:`RankCollective`: one
``all_reduce(SUM)`` over the leaves for sums (:class:`~fedkit.aggregate.WeightedMean`), a gather
to rank 0 and ``merge`` in rank order for buffering rules. The executor never looks at the
accumulator's type.

Work split: stateless algorithms balance each cohort greedily by ``num_examples × work`` (longest
job first onto the least-loaded rank). Algorithms with client state (SCAFFOLD) run every client on
its fixed owner rank (population balanced greedily by ``num_examples`` once), so a client's state
stays with the rank that owns it. Errors on any rank surface on rank 0 as
:class:`RemoteRankError` naming the rank and its message; the ranks stay in step and can be shut
down cleanly.

Communication uses CPU tensors, so the process group must be gloo (clients train on CPU); an
NCCL group is refused with a clear error.

Two ways to start it:

* ``executor = "processes"`` (:class:`fedkit.sim.processes.ProcessExecutor`): this process is
  rank 0; ``K - 1`` worker processes are spawned on first use over gloo on loopback.
* ``torchrun`` (multi-node the same way): every rank builds the same store, model and algorithm
  and a :class:`DistributedExecutor`; rank 0 calls :func:`fedkit.run.run` with it and then
  :meth:`DistributedExecutor.shutdown`; the other ranks call :meth:`DistributedExecutor.serve`.
"""

from __future__ import annotations

import dataclasses
import math
import time
import traceback
from collections.abc import Sequence
from typing import Any

import torch
import torch.distributed as dist
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save
from torch import Tensor, nn

from fedkit.aggregate import client_value_names, client_values, fold, init_state, with_client_values
from fedkit.algorithm import Algorithm, RoundInfo
from fedkit.client import evaluate_clients, prepared_template
from fedkit.data.store import ClientStore
from fedkit.evaluate import ClientEval, EvalResult
from fedkit.executor import ClientMetrics, RoundOutput
from fedkit.params import (
    Params,
    model_params,
    tree_flatten,
    tree_leaves,
    tree_map,
    tree_nbytes,
    tree_unflatten,
)
from fedkit.sim.serial import Participation, SerialExecutor, full_participation

_HEADER = 8
_INLINE = 2048  # cohorts up to this size travel inside the header (one broadcast per round)
_MSG_LEN = 2000
_CMD_EXECUTE, _CMD_EVALUATE, _CMD_STATE_GET, _CMD_STATE_LOAD, _CMD_SHUTDOWN = 1, 2, 3, 4, 5
_METRIC_COLS = 7  # done, num_examples, steps, loss, work_fraction, seconds, bytes_up
_EVAL_COLS = 8  # (done, loss, accuracy, examples) for the global and the personal model


def _eval_row(r: EvalResult) -> list[float]:
    return [1.0, r.loss, r.accuracy, float(r.num_examples)]


def _eval_result(row: Tensor) -> EvalResult:
    return EvalResult(loss=float(row[0]), accuracy=float(row[1]), num_examples=int(row[2]))


class RemoteRankError(RuntimeError):
    """A rank failed while running its share; the message names the rank and its error."""


# ---------------------------------------------------------------------------------------------
# Work assignment (identical on every rank: pure functions of the cohort and client sizes).


def greedy_assign(work: Sequence[tuple[int, float]], ranks: int) -> list[list[int]]:
    """Longest-processing-time-first assignment of ``(client_id, work)`` onto ``ranks`` bins.

    Ties break by client id and then by rank index, so every rank computes the same answer. Each
    bin is returned in ascending client order.
    """
    bins: list[list[int]] = [[] for _ in range(ranks)]
    load = [0.0] * ranks
    for cid, w in sorted(work, key=lambda t: (-t[1], t[0])):
        r = min(range(ranks), key=lambda i: (load[i], i))
        bins[r].append(cid)
        load[r] += w
    return [sorted(b) for b in bins]


def owner_table(sizes: Sequence[int], ranks: int) -> Tensor:
    """Fixed client → rank ownership for the whole population, balanced by ``sizes``."""
    owner = torch.empty(len(sizes), dtype=torch.int64)
    for r, b in enumerate(greedy_assign([(i, float(s)) for i, s in enumerate(sizes)], ranks)):
        owner[b] = r
    return owner


# ---------------------------------------------------------------------------------------------
# Flat per-dtype buffers of a tree's leaves (one collective per dtype, not per tensor).


def _pack(leaves: Sequence[Tensor]) -> dict[torch.dtype, Tensor]:
    groups: dict[torch.dtype, list[Tensor]] = {}
    for t in leaves:
        groups.setdefault(t.dtype, []).append(t.reshape(-1))
    return {d: torch.cat(ts) if len(ts) > 1 else ts[0].clone() for d, ts in groups.items()}


def _unpack(like: Sequence[Tensor], bufs: dict[torch.dtype, Tensor]) -> list[Tensor]:
    offsets = dict.fromkeys(bufs, 0)
    out: list[Tensor] = []
    for t in like:
        o = offsets[t.dtype]
        out.append(bufs[t.dtype][o : o + t.numel()].view(t.shape))
        offsets[t.dtype] = o + t.numel()
    return out


def _gather_bytes(payload: bytes, world_size: int, rank: int) -> list[bytes] | None:
    """Every rank's ``payload`` (any length) at rank 0, in rank order; ``None`` elsewhere."""
    sizes = torch.zeros(world_size, dtype=torch.int64)
    sizes[rank] = len(payload)
    dist.all_reduce(sizes)
    width = max(int(sizes.max()), 1)
    buf = torch.zeros(width, dtype=torch.uint8)
    if payload:
        buf[: len(payload)] = torch.frombuffer(bytearray(payload), dtype=torch.uint8)
    out = [torch.empty_like(buf) for _ in range(world_size)] if rank == 0 else None
    dist.gather(buf, out, dst=0)
    if out is None:
        return None
    return [out[r][: int(sizes[r])].numpy().tobytes() for r in range(world_size)]


class RankCollective:
    """The :class:`~fedkit.aggregate.Collective` of a gloo process group (every rank calls)."""

    def __init__(self, world_size: int, rank: int) -> None:
        self.world_size = world_size
        self.rank = rank

    def all_sum(self, tree: Any) -> Any:
        """All-reduce SUM of every leaf: one float64 buffer when the leaves are float64 sums and
        int64 counts (exact below 2**53), else one buffer per dtype."""
        paths = [p for p, _ in tree_leaves(tree)]
        leaves = [t for _, t in tree_leaves(tree)]
        if all(t.dtype in (torch.float64, torch.int64) for t in leaves):
            buf = torch.cat([t.reshape(-1).to(torch.float64) for t in leaves])
            dist.all_reduce(buf)
            parts, offset = [], 0
            for t in leaves:
                parts.append(buf[offset : offset + t.numel()].view(t.shape).to(t.dtype))
                offset += t.numel()
        else:
            bufs = _pack(leaves)
            for _, b in sorted(bufs.items(), key=str):
                dist.all_reduce(b)
            parts = _unpack(leaves, bufs)
        return tree_unflatten(tree, dict(zip(paths, parts, strict=True)))

    def gather(self, tree: Any) -> list[Any] | None:
        """Every rank's tree at rank 0 (leading sizes may differ; names and dtypes may not)."""
        flat = {k: v.contiguous() for k, v in tree_flatten(tree).items()}
        got = _gather_bytes(st_save(flat) if flat else b"", self.world_size, self.rank)
        if got is None:
            return None
        return [tree_unflatten(tree, st_load(b) if b else {}, same_shapes=False) for b in got]


def _encode(text: str) -> Tensor:
    raw = text.encode("utf-8", "replace")[:_MSG_LEN]
    out = torch.zeros(_MSG_LEN + 2, dtype=torch.int32)
    out[0], out[1] = 1, len(raw)
    if raw:
        out[2 : 2 + len(raw)] = torch.tensor(list(raw), dtype=torch.int32)
    return out


def _decode(row: Tensor) -> str:
    n = int(row[1])
    return bytes(row[2 : 2 + n].tolist()).decode("utf-8", "replace")


class DistributedExecutor:
    """An executor whose cohort runs on all ranks of an initialised process group.

    Every rank constructs one with the same store contents and an equivalent model. Rank 0 is the
    executor the run loop uses; other ranks call :meth:`serve`. See the module docstring.
    """

    def __init__(
        self,
        store: ClientStore,
        model: nn.Module,
        *,
        participation: Participation = full_participation,
        eval_batch_size: int = 1000,
    ) -> None:
        if not dist.is_initialized():
            raise RuntimeError(
                "DistributedExecutor needs an initialised torch.distributed process group "
                "(launch with torchrun, or use executor='processes' to spawn ranks locally)"
            )
        if dist.get_backend() == "nccl":
            raise ValueError(
                "DistributedExecutor exchanges CPU tensors and needs a process group that "
                "supports them: initialise it with backend 'gloo' (NCCL is not supported yet)"
            )
        self.rank = dist.get_rank()
        self.world_size = dist.get_world_size()
        self.store = store
        self.model = model
        self.participation = participation
        self._serial = SerialExecutor(store, model, eval_batch_size=eval_batch_size)
        self._owner = owner_table(
            [store.num_examples(c) for c in range(store.num_clients)], self.world_size
        )
        self._algorithm: Algorithm[Any, Any, Any, Any] | None = None
        self._msg_template: Any = None
        self._acc_template: Any = None
        self._stateful = False
        self._state_names: tuple[str, ...] = ()  # the aggregator state's names, on every rank
        self._value_names: tuple[str, ...] = ()  # the chain's per-client value names, likewise
        self._closed = False
        self.last_rank_cpu_seconds: list[float] = []
        """CPU seconds each rank spent on its share of the last round (rank 0 only)."""

    @property
    def num_clients(self) -> int:
        """Population size."""
        return self.store.num_clients

    # -- rank 0 API (the Executor protocol) ----------------------------------------------------

    def execute(
        self,
        algorithm: Algorithm[Any, Any, Any, Any],
        msg: Any,
        cohort: Sequence[int],
        info: RoundInfo,
    ) -> RoundOutput:
        """Run ``cohort`` over all ranks and return the merged accumulator (rank 0 only)."""
        self._require_rank0()
        self._bind(algorithm)
        ids = sorted(cohort)
        state_t = self._state_values(info)
        fracs = []
        for cid in ids:
            f = self.participation(cid, info)
            fracs.append(math.nan if f is None else float(f))
        header = [_CMD_EXECUTE, info.round, info.seed, info.num_clients, info.cohort_size, len(ids)]
        cohort_t = torch.tensor(ids, dtype=torch.int64)
        frac_t = torch.tensor(fracs, dtype=torch.float64)
        self._bcast_header(header, cohort_t, frac_t)
        self._bcast_tree(msg)
        if state_t is not None:
            self._bcast_tree(state_t)
        values_t = self._client_values(algorithm, ids)
        if values_t is not None:
            self._bcast_tree(values_t)
        acc, metrics, bytes_up = self._run_share(algorithm, msg, cohort_t, frac_t, info, values_t)
        done: list[ClientMetrics] = []
        dropped: list[int] = []
        for i, cid in enumerate(ids):
            row = metrics[i]
            if row[0] < 0.5:
                dropped.append(cid)
                continue
            done.append(
                ClientMetrics(
                    client_id=cid,
                    num_examples=int(row[1]),
                    steps=int(row[2]),
                    train_loss=float(row[3]),
                    work_fraction=float(row[4]),
                    seconds=float(row[5]),
                )
            )
        return RoundOutput(
            accumulator=acc,
            clients=tuple(done),
            dropped=tuple(dropped),
            bytes_down=tree_nbytes(msg) * len(ids),
            bytes_up=bytes_up,
        )

    def evaluate(
        self,
        params: Params,
        clients: Sequence[int],
        algorithm: Algorithm[Any, Any, Any, Any] | None = None,
        info: RoundInfo | None = None,
    ) -> list[ClientEval]:
        """Evaluate ``params`` (and, with ``algorithm``, each client's personal model, on the
        rank that holds its state) on the listed clients' local test data, over the ranks."""
        self._require_rank0()
        if algorithm is not None:
            self._bind(algorithm)
        personal = int(algorithm is not None)
        ids = list(clients)
        known = info is not None  # the round a personal model may be trained in
        rnd, seed = (info.round, info.seed) if info is not None else (0, 0)
        self._bcast_header([_CMD_EVALUATE, personal, rnd, seed, int(known), len(ids)])
        ids_t = torch.tensor(ids, dtype=torch.int64)
        dist.broadcast(ids_t, 0)
        self._bcast_tree(params)
        at = None if info is None else self._eval_info(info.round, info.seed)  # as ranks > 0 see it
        rows = self._eval_share(params, ids_t, bool(personal), at)
        return [
            ClientEval(
                client_id=cid,
                result=_eval_result(rows[i, 1:4]),
                personal=_eval_result(rows[i, 5:8]) if rows[i, 4] > 0.5 else None,
            )
            for i, cid in enumerate(ids)
            if rows[i, 0] > 0.5
        ]

    def client_state_tensors(self) -> dict[str, Tensor]:
        """Every client's state, gathered from the ranks that own it."""
        self._require_rank0()
        self._bcast_header([_CMD_STATE_GET, 0, 0, 0, 0, 0])
        return self._gather_states()

    def load_client_state_tensors(self, flat: dict[str, Tensor], template: Any) -> None:
        """Restore client states from a checkpoint; each rank keeps the clients it owns."""
        self._require_rank0()
        self._bcast_header([_CMD_STATE_LOAD, 0, 0, 0, 0, 0])
        payload = st_save(dict(flat)) if flat else b""
        size = torch.tensor([len(payload)], dtype=torch.int64)
        dist.broadcast(size, 0)
        buf = torch.frombuffer(bytearray(payload), dtype=torch.uint8) if payload else None
        if buf is not None:
            dist.broadcast(buf, 0)
        self._load_states(payload, template)

    def shutdown(self) -> None:
        """Tell the other ranks to leave :meth:`serve` (rank 0; idempotent)."""
        if self._closed or self.rank != 0:
            return
        self._closed = True
        self._bcast_header([_CMD_SHUTDOWN, 0, 0, 0, 0, 0])

    # -- other ranks ----------------------------------------------------------------------------

    def serve(self, algorithm: Algorithm[Any, Any, Any, Any]) -> None:
        """Worker loop of ranks ``> 0``: follow rank 0's commands until it shuts down."""
        if self.rank == 0:
            raise RuntimeError("serve() is for ranks > 0; rank 0 drives the run loop")
        self._bind(algorithm)
        while True:
            header = torch.zeros(_HEADER + 2 * _INLINE, dtype=torch.int64)
            dist.broadcast(header, 0)
            cmd, n = int(header[0]), int(header[5])
            if cmd == _CMD_SHUTDOWN:
                return
            if cmd == _CMD_EXECUTE:
                info = RoundInfo(
                    round=int(header[1]),
                    seed=int(header[2]),
                    num_clients=int(header[3]),
                    cohort_size=int(header[4]),
                )
                if n <= _INLINE:
                    cohort_t = header[_HEADER : _HEADER + n].clone()
                    frac_t = header[_HEADER + _INLINE : _HEADER + _INLINE + n].clone()
                    frac_t = frac_t.view(torch.float64)
                else:
                    cohort_t = torch.zeros(n, dtype=torch.int64)
                    frac_t = torch.zeros(n, dtype=torch.float64)
                    dist.broadcast(cohort_t, 0)
                    dist.broadcast(frac_t, 0)
                msg = self._recv_tree(self._msg_template)
                info = self._recv_state(info)
                values_t = self._recv_values(n)
                try:
                    self._run_share(algorithm, msg, cohort_t, frac_t, info, values_t)
                except RemoteRankError:
                    continue  # rank 0 raises it; stay in step for the next command
            elif cmd == _CMD_EVALUATE:
                ids_t = torch.zeros(n, dtype=torch.int64)
                dist.broadcast(ids_t, 0)
                params = self._recv_tree(model_params(self.model))
                try:
                    known = int(header[4]) == 1
                    at = self._eval_info(int(header[2]), int(header[3])) if known else None
                    self._eval_share(params, ids_t, int(header[1]) == 1, at)
                except RemoteRankError:
                    continue
            elif cmd == _CMD_STATE_GET:
                self._gather_states()
            elif cmd == _CMD_STATE_LOAD:
                size = torch.zeros(1, dtype=torch.int64)
                dist.broadcast(size, 0)
                payload = b""
                if int(size[0]) > 0:
                    buf = torch.zeros(int(size[0]), dtype=torch.uint8)
                    dist.broadcast(buf, 0)
                    payload = buf.numpy().tobytes()
                template = algorithm.client_state_template(model_params(self.model))
                self._load_states(payload, template)
            else:
                raise RuntimeError(f"rank {self.rank}: unknown command {cmd} from rank 0")

    # -- shared by all ranks ------------------------------------------------------------------

    def _require_rank0(self) -> None:
        if self.rank != 0:
            raise RuntimeError(f"only rank 0 drives the executor (this is rank {self.rank})")
        if self._closed:
            raise RuntimeError("the distributed executor has been shut down")

    def _bind(self, algorithm: Algorithm[Any, Any, Any, Any]) -> None:
        if self._algorithm is not None:
            if algorithm is not self._algorithm and algorithm != self._algorithm:
                raise ValueError(
                    "a distributed executor runs one algorithm (the other ranks were started "
                    f"with {self._algorithm!r}); build a new executor for {algorithm!r}"
                )
            return
        self._algorithm = algorithm
        params = model_params(self.model)
        info0 = RoundInfo(round=0, seed=0, num_clients=self.num_clients, cohort_size=1)
        self._msg_template = algorithm.broadcast(algorithm.init_state(params), info0)
        self._stateful = algorithm.client_state_template(params) is not None
        self._state_names = tuple(name for name, _ in init_state(algorithm.aggregator))
        self._value_names = client_value_names(algorithm.aggregator)

    def _state_values(self, info: RoundInfo) -> Tensor | None:
        """The round's aggregator state values (float64, exact) in the names' order, or
        ``None`` for a stateless aggregator (nothing is sent)."""
        if not self._state_names:
            return None
        names = tuple(name for name, _ in info.agg_state)
        if names != self._state_names:
            raise ValueError(f"aggregator state {names} does not match {self._state_names}")
        return torch.tensor([v for _, v in info.agg_state], dtype=torch.float64)

    def _client_values(
        self, algorithm: Algorithm[Any, Any, Any, Any], ids: Sequence[int]
    ) -> Tensor | None:
        """Each cohort client's per-client aggregator values (``(len(ids), k)`` float64, exact;
        :func:`fedkit.aggregate.client_values` of rank 0's resolved chain), or ``None`` when the
        chain takes none (nothing is sent). Ranks started apart (torchrun) hold an unresolved
        chain and resolve it per client from these, as a deployment worker does."""
        if not self._value_names:
            return None
        rows = [[v for _, v in client_values(algorithm.aggregator, c)] for c in ids]
        return torch.tensor(rows, dtype=torch.float64).reshape(len(ids), len(self._value_names))

    def _recv_values(self, n: int) -> Tensor | None:
        """The cohort's per-client values rank 0 sent (after the aggregator state)."""
        if not self._value_names:
            return None
        values: Tensor = self._recv_tree(
            torch.zeros(n, len(self._value_names), dtype=torch.float64)
        )
        return values

    def _for_client(
        self, algorithm: Algorithm[Any, Any, Any, Any], cid: int, row: Tensor | None
    ) -> Algorithm[Any, Any, Any, Any]:
        """``algorithm`` with its chain resolved for ``cid`` from its row of per-client values."""
        if row is None:
            return algorithm
        values = tuple(zip(self._value_names, row.tolist(), strict=True))
        agg = with_client_values(algorithm.aggregator, cid, values)
        return dataclasses.replace(algorithm, aggregator=agg)  # type: ignore[type-var]

    def _recv_state(self, info: RoundInfo) -> RoundInfo:
        """``info`` with the aggregator state rank 0 sent (after the message)."""
        if not self._state_names:
            return info
        values = self._recv_tree(torch.zeros(len(self._state_names), dtype=torch.float64))
        state = tuple(zip(self._state_names, values.tolist(), strict=True))
        return dataclasses.replace(info, agg_state=state)

    def _bcast_header(
        self, values: Sequence[int], ids: Tensor | None = None, fracs: Tensor | None = None
    ) -> None:
        """One broadcast: the command, and a cohort with its work fractions (bit-exact, as int64
        views) when it fits; larger cohorts follow in two more broadcasts."""
        header = torch.zeros(_HEADER + 2 * _INLINE, dtype=torch.int64)
        header[: len(values)] = torch.tensor(list(values), dtype=torch.int64)
        n = 0 if ids is None else int(ids.numel())
        if ids is not None and fracs is not None and n <= _INLINE:
            header[_HEADER : _HEADER + n] = ids
            header[_HEADER + _INLINE : _HEADER + _INLINE + n] = fracs.view(torch.int64)
        dist.broadcast(header, 0)
        if ids is not None and fracs is not None and n > _INLINE:
            dist.broadcast(ids, 0)
            dist.broadcast(fracs, 0)

    def _bcast_tree(self, tree: Any) -> None:
        for _, buf in sorted(_pack([t for _, t in tree_leaves(tree)]).items(), key=str):
            dist.broadcast(buf, 0)

    def _recv_tree(self, template: Any) -> Any:
        paths_like = list(tree_leaves(template))
        like = [t for _, t in paths_like]
        bufs = {d: torch.empty_like(b) for d, b in _pack(like).items()}
        for _, buf in sorted(bufs.items(), key=str):
            dist.broadcast(buf, 0)
        flat = {p: t for (p, _), t in zip(paths_like, _unpack(like, bufs), strict=True)}
        return tree_unflatten(template, flat)

    def _my_clients(self, ids: list[int], fracs: list[float]) -> list[int]:
        live = [(c, f) for c, f in zip(ids, fracs, strict=True) if not math.isnan(f)]
        if self._stateful:
            return [c for c, _ in live if int(self._owner[c]) == self.rank]
        work = [(c, float(max(self.store.num_examples(c), 1)) * f) for c, f in live]
        return greedy_assign(work, self.world_size)[self.rank]

    def _zero_acc(self, algorithm: Algorithm[Any, Any, Any, Any], info: RoundInfo) -> Any:
        """A zero accumulator shaped like this algorithm's (for ranks that ran no client),
        from the algorithm's ``update_template``: no client is trained to learn the shapes."""
        if self._acc_template is None:
            like = prepared_template(algorithm, model_params(self.model), info.seed)
            self._acc_template = algorithm.aggregator.zero(like)
        return tree_map(torch.zeros_like, self._acc_template)

    def _run_share(
        self,
        algorithm: Algorithm[Any, Any, Any, Any],
        msg: Any,
        cohort_t: Tensor,
        frac_t: Tensor,
        info: RoundInfo,
        values_t: Tensor | None = None,
    ) -> tuple[Any, Tensor, int]:
        ids = cohort_t.tolist()
        fracs = frac_t.tolist()
        index = {c: i for i, c in enumerate(ids)}
        cpu0 = time.process_time()
        metrics = torch.zeros(len(ids), _METRIC_COLS, dtype=torch.float64)
        agg = algorithm.aggregator
        acc: Any = None
        error = ""
        try:
            for cid in self._my_clients(ids, fracs):
                row = None if values_t is None else values_t[index[cid]]
                mine = self._for_client(algorithm, cid, row)
                prepared = self._serial.run_client(mine, msg, cid, info, fracs[index[cid]])
                if prepared is None:  # refused: the client counts as dropped
                    continue
                update, m = prepared.update, prepared.metrics
                acc = fold(agg, acc, update, prepared.weight)
                metrics[index[cid]] = torch.tensor(
                    [
                        1.0,
                        m.num_examples,
                        m.steps,
                        m.train_loss,
                        m.work_fraction,
                        m.seconds,
                        tree_nbytes(update),
                    ],
                    dtype=torch.float64,
                )
            if acc is None:
                acc = self._zero_acc(algorithm, info)
                has = 0
            else:
                has = 1
        except Exception as exc:
            error = f"{type(exc).__name__}: {exc}\n{traceback.format_exc(limit=4)}"
            has = 0
        # One all-reduce carries every rank's error message, accumulator flag, CPU time and
        # client metrics; a second one (below) the accumulators.
        w = self.world_size
        width = _MSG_LEN + 2
        status = torch.zeros(w * width + 2 * w + metrics.numel(), dtype=torch.float64)
        if error:
            status[self.rank * width : (self.rank + 1) * width] = _encode(error).double()
        status[w * width + self.rank] = has
        status[w * width + w + self.rank] = time.process_time() - cpu0
        status[w * width + 2 * w :] = metrics.reshape(-1)
        dist.all_reduce(status)
        rows = status[: w * width].view(w, width).to(torch.int32)
        failed = [(r, _decode(rows[r])) for r in range(w) if rows[r, 0] > 0]
        if failed:
            text = "; ".join(f"rank {r}: {m}" for r, m in failed)
            raise RemoteRankError(f"{len(failed)} rank(s) failed — {text}")
        flags = status[w * width : w * width + w].to(torch.int64)
        self.last_rank_cpu_seconds = status[w * width + w : w * width + 2 * w].tolist()
        metrics = status[w * width + 2 * w :].view(len(ids), _METRIC_COLS)
        merged = agg.reduce(acc, RankCollective(self.world_size, self.rank))
        bytes_up = int(metrics[:, 6].sum())
        return (merged if int(flags.sum()) > 0 else None), metrics, bytes_up

    def _check_errors(self, error: str) -> None:
        rows = torch.zeros(self.world_size, _MSG_LEN + 2, dtype=torch.int32)
        if error:
            rows[self.rank] = _encode(error)
        dist.all_reduce(rows)
        failed = [(r, _decode(rows[r])) for r in range(self.world_size) if rows[r, 0] > 0]
        if failed:
            text = "; ".join(f"rank {r}: {m}" for r, m in failed)
            raise RemoteRankError(f"{len(failed)} rank(s) failed — {text}")

    def _eval_info(self, rnd: int, seed: int) -> RoundInfo:
        """The evaluated round as the other ranks know it (its round and seed name the
        personal-evaluation stream; nothing else of it is read there)."""
        return RoundInfo(round=rnd, seed=seed, num_clients=self.num_clients, cohort_size=0)

    def _eval_share(
        self, params: Params, ids_t: Tensor, personal: bool, info: RoundInfo | None = None
    ) -> Tensor:
        ids = ids_t.tolist()
        rows = torch.zeros(len(ids), _EVAL_COLS, dtype=torch.float64)
        error = ""
        algorithm = self._algorithm if personal else None
        try:
            for i, e in evaluate_clients(
                self.model,
                self.store,
                ids,
                params,
                algorithm,
                batch_size=self._serial.eval_batch_size,
                mine=lambda i, cid: self._eval_owner(i, cid, personal) == self.rank,
                info=info,
            ):
                rows[i, :4] = torch.tensor(_eval_row(e.result))
                if e.personal is not None:
                    rows[i, 4:] = torch.tensor(_eval_row(e.personal))
        except Exception as exc:
            error = f"{type(exc).__name__}: {exc}"
        self._check_errors(error)
        dist.all_reduce(rows)
        return rows

    def _eval_owner(self, index: int, client_id: int, personal: bool) -> int:
        """The rank that scores a client: its state's owner for personal models, else spread."""
        if personal and self._stateful:
            return int(self._owner[client_id])
        return index % self.world_size

    def _gather_states(self) -> dict[str, Tensor]:
        mine = self.store.state_tensors()
        got = _gather_bytes(st_save(mine) if mine else b"", self.world_size, self.rank)
        merged: dict[str, Tensor] = {}
        for payload in got or []:
            if payload:
                merged.update(st_load(payload))
        return merged

    def _load_states(self, payload: bytes, template: Any) -> None:
        flat = st_load(payload) if payload else {}
        mine = {
            k: v for k, v in flat.items() if int(self._owner[int(k.partition("/")[0])]) == self.rank
        }
        if template is not None:
            self.store.load_state_tensors(mine, template)


def startup_check(world_size: int, rank: int, error: str) -> None:
    """All ranks exchange start-up errors; every rank raises :class:`RemoteRankError` if any."""
    rows = torch.zeros(world_size, _MSG_LEN + 2, dtype=torch.int32)
    if error:
        rows[rank] = _encode(error)
    dist.all_reduce(rows)
    failed = [(r, _decode(rows[r])) for r in range(world_size) if rows[r, 0] > 0]
    if failed:
        raise RemoteRankError("; ".join(f"rank {r}: {m}" for r, m in failed))

"""A worker: runs the algorithm's client half on its own data for a remote coordinator.

The worker runs the same :class:`~fedkit.net.deployment.Deployment` as the coordinator (built
by the edge from the same experiment file), builds the model,
loads *its own* partitions (by client id; one worker may serve many clients, ``fedkit worker
--clients 0-99``) from its own data directory, and keeps each client's state (optionally
persisted in ``state_dir``). Tasks for several clients run one at a time on one resident model,
as the serial simulator runs them. It registers, long-polls for tasks, decodes the
broadcast against the template it built itself, trains, and pushes the prepared update. A
heartbeat thread keeps its lease. When the coordinator restarts the worker re-registers (the run
id is kept in the coordinator's database, so the worker rejoins the same run); transient network
errors are retried with backoff; a TLS handshake failure stops it at once.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import torch
from safetensors.torch import save as st_save

from fedkit.algorithm import Algorithm, ClientData, RoundInfo
from fedkit.checkpoint import CheckpointError, load_sealed, sealed, write_atomic
from fedkit.client import evaluate_client, run_client
from fedkit.data.spec import build_federated
from fedkit.data.store import ClientStore
from fedkit.net.client import CoordinatorClient, Task
from fedkit.net.deployment import DeployError, Deployment
from fedkit.net.errors import ErrorCode, NetError
from fedkit.net.payload import (
    EvalMeta,
    ResultMeta,
    decode_tree,
    encode_tree,
    info_from_metadata,
    task_aggregator,
)
from fedkit.net.proto import fedkit_pb2 as pb
from fedkit.net.secagg_worker import bind_worker
from fedkit.net.transport import Security
from fedkit.params import tree_flatten, tree_unflatten
from fedkit.privacy.secagg.errors import SecAggError
from fedkit.privacy.secagg.stage import find_secure_sum

log = logging.getLogger("fedkit.worker")


class _PendingState:
    """One of the worker's clients as a :class:`fedkit.client.ClientHost`: the new state is
    held back until the coordinator accepts the update."""

    def __init__(self, data: ClientData, state: Any) -> None:
        self._data = data
        self._state = state
        self.new_state: Any = None

    def data(self, client_id: int) -> ClientData:
        return self._data

    def get_state(self, client_id: int) -> Any:
        return self._state

    def set_state(self, client_id: int, state: Any) -> None:
        self.new_state = state


_REREGISTER = {ErrorCode.UNKNOWN_WORKER, ErrorCode.UNAUTHENTICATED, ErrorCode.RUN_MISMATCH}


@dataclass(frozen=True, kw_only=True)
class LocalData:
    """The worker's clients' data and what the model needs to know about the dataset."""

    clients: Mapping[int, ClientData]
    num_classes: int
    input_shape: tuple[int, ...]
    num_clients: int


def load_local_data(exp: Deployment, client_ids: Sequence[int], root: Path | None) -> LocalData:
    """Load this worker's partitions (deterministic from the experiment's data seed)."""
    fd = build_federated(exp.data, root)
    store = ClientStore.from_federated(fd)
    outside = [c for c in client_ids if not 0 <= c < store.num_clients]
    if outside or not client_ids:
        raise ValueError(f"client ids {outside or '(none)'} not in 0..{store.num_clients - 1}")
    return LocalData(
        clients={c: store.data(c) for c in client_ids},
        num_classes=fd.dataset.num_classes,
        input_shape=tuple(fd.dataset.input_shape),
        num_clients=store.num_clients,
    )


class Worker:
    """The worker loop (see module docstring).

    Args:
        exp: The experiment (same file as the coordinator's).
        local: Its clients' data (the clients it serves are the keys).
        client: Connection to the coordinator.
        state_dir: Where to persist client state across worker restarts (None: memory only).
        poll_s: Long-poll duration.
        give_up_s: Stop after the coordinator has been unreachable this long.
    """

    def __init__(
        self,
        exp: Deployment,
        *,
        local: LocalData,
        client: CoordinatorClient,
        state_dir: Path | None = None,
        poll_s: float = 2.0,
        give_up_s: float = 120.0,
    ) -> None:
        self.exp = exp
        self.local = local
        self.client = client
        self.state_dir = state_dir
        self.poll_s = poll_s
        self.give_up_s = give_up_s
        try:
            self.model = exp.build_model(
                num_classes=local.num_classes, input_shape=local.input_shape
            )
        except (ValueError, TypeError) as exc:
            raise DeployError(f"model: {exc}") from None
        self.algorithm = exp.algorithm
        init = exp.initial_params(self.model)
        # secure aggregation: each client plays its half of the protocol with OS-random secrets
        self.algorithm, self.secagg = bind_worker(self.algorithm, init, exp.seed, local.num_clients)
        info0 = RoundInfo(
            round=0,
            seed=exp.seed,
            num_clients=local.num_clients,
            cohort_size=exp.cohort_size(local.num_clients),
        )
        self.msg_template = self.algorithm.broadcast(self.algorithm.init_state(init), info0)
        self.params_template = init
        self.state_template = self.algorithm.client_state_template(init)
        self.client_state: dict[int, Any] = {c: self._load_state(c) for c in local.clients}
        self._before: dict[int, tuple[int, Any]] = {}  # (round, client state before that round)
        # secure aggregation: (round, new state) held until the coordinator says it committed
        self._pending: dict[int, tuple[int, Any]] = {}
        self.rounds_done = 0
        self._stop = threading.Event()
        self._need_register = threading.Event()

    # ---------------------------------------------------------------- client state on disk
    def _state_path(self, cid: int) -> Path | None:
        return None if self.state_dir is None else self.state_dir / f"client-{cid}.safetensors"

    def _load_state(self, cid: int) -> Any:
        path = self._state_path(cid)
        if path is None or self.state_template is None or not path.exists():
            return None
        try:
            raw = path.read_bytes()
        except OSError as exc:
            raise CheckpointError(f"client state {path} cannot be read: {exc}") from None
        flat = load_sealed(raw, where=f"client state {path}")
        try:
            return tree_unflatten(self.state_template, flat)
        except ValueError as exc:
            raise CheckpointError(
                f"client state {path} does not match this experiment's model: {exc}; move it away"
            ) from None

    def _save_state(self, cid: int) -> None:
        path = self._state_path(cid)
        state = self.client_state[cid]
        if path is None or state is None:
            return
        flat = {k: v.contiguous() for k, v in tree_flatten(state).items()}
        write_atomic(path, st_save(flat, metadata=sealed(flat, {"client_id": str(cid)})))

    # ---------------------------------------------------------------- the loop
    def _heartbeat_loop(self) -> None:
        while not self._stop.wait(self.client.heartbeat_interval_s):
            try:
                self.client.heartbeat()
            except NetError as err:
                if err.code in _REREGISTER:
                    self._need_register.set()
            except grpc.RpcError:
                pass  # the main loop handles an unreachable coordinator

    def _register(self) -> None:
        """Register, retrying until the coordinator answers or ``give_up_s`` passes."""
        start = time.monotonic()
        while True:
            try:
                self.client.register()
                self._need_register.clear()
                log.info(
                    "clients %s registered as %s", _ids(self.local.clients), self.client.worker_id
                )
                return
            except grpc.RpcError as err:
                if time.monotonic() - start > self.give_up_s:
                    raise ConnectionError(
                        f"coordinator {self.client.address} unreachable for {self.give_up_s:.0f} s"
                    ) from err
                time.sleep(0.5)
            except NetError as err:
                if err.code != ErrorCode.CLIENT_TAKEN or time.monotonic() - start > self.give_up_s:
                    raise
                log.warning("%s; retrying", err)
                time.sleep(1.0)

    def run(self) -> int:
        """Serve tasks until the coordinator says the run is over; returns rounds completed."""
        self._register()
        hb = threading.Thread(target=self._heartbeat_loop, name="fedkit-heartbeat", daemon=True)
        hb.start()
        unreachable_since: float | None = None
        try:
            while True:
                if self._need_register.is_set():
                    self._register()
                try:
                    task = self.client.get_task(wait_s=self.poll_s)
                    unreachable_since = None
                except NetError as err:
                    if err.code in _REREGISTER:
                        self._need_register.set()
                        continue
                    raise
                except grpc.RpcError:
                    now = time.monotonic()
                    unreachable_since = unreachable_since or now
                    if now - unreachable_since > self.give_up_s:
                        raise
                    self._need_register.set()  # a restarted coordinator forgot this worker
                    time.sleep(0.5)
                    continue
                if task.kind == pb.SHUTDOWN:
                    log.info("run over after %d rounds", self.rounds_done)
                    return self.rounds_done
                if task.kind == pb.TRAIN:
                    self._train(task)
                elif task.kind == pb.EVALUATE:
                    self._evaluate(task)
                elif task.kind == pb.SECAGG:
                    self._secagg_step(task)
        finally:
            self._stop.set()
            hb.join(timeout=5.0)

    def _client(self, task: Task) -> int:
        """The task's client, which must be one this worker serves."""
        cid = task.client_id
        if not (
            cid.isascii() and cid.isdigit() and len(cid) < 12 and int(cid) in self.local.clients
        ):
            raise NetError(ErrorCode.MALFORMED, f"task for client {cid[:32]!r}, not served here")
        return int(cid)

    def _train(self, task: Task) -> None:
        t0 = time.perf_counter()
        cid = self._client(task)
        try:  # the client's own aggregator values (importance: its π_k and W), checked first
            agg = task_aggregator(self.algorithm.aggregator, cid, task.client_values)
        except NetError as err:  # refused: this client sits the round out, the worker serves on
            log.warning("round %d, client %d: task refused: %s", task.round, cid, err)
            return
        algorithm = self.algorithm
        if agg is not algorithm.aggregator:
            algorithm = dataclasses.replace(algorithm, aggregator=agg)  # type: ignore[type-var]
        msg, meta = decode_tree(task.payload, self.msg_template)
        info = info_from_metadata(meta)
        if info.round != task.round:
            raise NetError(ErrorCode.MALFORMED, "task header and payload disagree")
        # A round retried after an aborted attempt starts again from the state before that round.
        before = self._before.get(cid)
        retry = before is not None and before[0] == info.round
        start_state = before[1] if before is not None and retry else self.client_state[cid]
        host = _PendingState(self.local.clients[cid], start_state)
        try:
            p = run_client(algorithm, host, self.model, msg, cid, info, task.work_fraction)
        except SecAggError as err:  # no key setup reached this client: it sits the round out
            log.warning("round %d, client %d: %s", task.round, cid, err)
            return
        if p is None:  # refused (NaN or infinite values): nothing is sent; the state stays
            return
        compute_s = time.perf_counter() - t0
        m = p.metrics
        # Under secure aggregation the weight travels masked inside the update: the metadata
        # says weight 1 and one example, so the coordinator learns neither.
        hidden = self.secagg is not None
        rmeta = ResultMeta(
            weight=1.0 if hidden else float(p.weight),
            num_examples=1 if hidden else m.num_examples,
            steps=m.steps,
            train_loss=float(m.train_loss),
            work_fraction=task.work_fraction,
            compute_s=compute_s,
        )
        if not self._push(task, encode_tree(p.update, rmeta.to_metadata()), compute_s):
            return
        self.rounds_done += 1
        if self.secagg is not None:  # the round may still be refused at its unmasking
            self._pending[cid] = (info.round, host.new_state)
            return
        # The client state advances only when the coordinator accepted the update.
        self._before[cid] = (info.round, start_state)
        self.client_state[cid] = host.new_state
        self._save_state(cid)

    def _secagg_step(self, task: Task) -> None:
        """Answer a step of secure aggregation (:mod:`fedkit.net.secagg_worker`); a step that
        fails its checks is answered with nothing (the client drops from that round)."""
        t0 = time.perf_counter()
        cid = self._client(task)
        if self.secagg is None:
            log.warning("round %d: a secure-aggregation step, but no secagg stage", task.round)
            return
        try:
            payload = self.secagg.handle(cid, task.round, task.payload)
        except SecAggError as err:
            log.warning("round %d, client %d: secure aggregation: %s", task.round, cid, err)
            return
        self._push(task, payload, time.perf_counter() - t0)
        self._settle(self.secagg.committed, self.secagg.round)

    def _settle(self, committed: int, current: int) -> None:
        """Keep the pending new states of rounds the coordinator says committed (below
        ``committed``); drop those of earlier rounds that did not (a later round has begun)."""
        for c, (r, state) in list(self._pending.items()):
            if r < committed:
                self.client_state[c] = state
                self._save_state(c)
            elif r >= current:
                continue  # its round is still open (or retried): wait
            del self._pending[c]

    def _evaluate(self, task: Task) -> None:
        """Score the broadcast parameters (and this client's personal model, for personalised
        algorithms) on this client's local test data."""
        t0 = time.perf_counter()
        cid = self._client(task)
        params, round_meta = decode_tree(task.payload, self.params_template)
        info = info_from_metadata(round_meta)
        if info.round != task.round:
            raise NetError(ErrorCode.MALFORMED, "task header and payload disagree")
        e = evaluate_client(
            self.model,
            cid,
            self.local.clients[cid],
            params,
            self.algorithm,
            self.client_state[cid],
            info=info,
        )
        if e is None:
            meta = EvalMeta(loss=math.nan, accuracy=math.nan, num_examples=0)
        else:
            r, own = e.result, e.personal
            meta = EvalMeta(
                loss=r.loss,
                accuracy=r.accuracy,
                num_examples=r.num_examples,
                personal_loss=None if own is None else own.loss,
                personal_accuracy=None if own is None else own.accuracy,
            )
        self._push(task, encode_tree({}, meta.to_metadata()), time.perf_counter() - t0)

    def _push(self, task: Task, payload: bytes, compute_s: float) -> bool:
        """Send a result; False when the coordinator refused it in a way to shrug off."""
        try:
            self.client.push_result(task, payload, compute_s=compute_s)
        except grpc.RpcError as err:  # unreachable past the outage window, or the stream was cut
            code = err.code() if isinstance(err, grpc.Call) else None
            log.warning("round %d result not delivered (%s); staying in the run", task.round, code)
            self._need_register.set()  # the coordinator may have restarted meanwhile
            return False
        except NetError as err:
            if err.code in _REREGISTER:
                self._need_register.set()
            # any other refusal (stale, late, duplicate, or its values refused) costs this
            # round only: the worker stays in the run
            log.warning("round %d result refused: %s", task.round, err)
            return False
        return True


def run_worker(
    *,
    coordinator: str,
    exp: Deployment,
    client_ids: Sequence[int],
    data_root: Path | None = None,
    security: Security | None = None,
    tls_name: str | None = None,
    state_dir: Path | None = None,
    threads: int = 1,
    give_up_s: float = 120.0,
    enrolment_secrets: Sequence[str] = (),
    adapt: Callable[[Algorithm[Any, Any, Any, Any], LocalData], Algorithm[Any, Any, Any, Any]]
    | None = None,
) -> int:
    """Load these clients' data, then serve ``exp`` for them until the run ends.

    ``adapt`` changes the algorithm's client half once the data is known (e.g. an attack this
    worker runs, :mod:`fedkit.attacks`); the server half must stay the file's.
    ``enrolment_secrets`` are the client ids' secrets (same order) when the coordinator requires
    enrolment.

    Returns the number of client tasks whose result the coordinator accepted.

    Raises:
        DeployError: this client's data or the model cannot be built from the experiment.
    """
    set_threads(threads)
    try:
        local = load_local_data(exp, client_ids, data_root)
    except ValueError as exc:
        raise DeployError(f"data: {exc}") from None
    if adapt is not None:
        exp = dataclasses.replace(exp, algorithm=adapt(exp.algorithm, local))
    # Pay torch's one-time lazy import (the first optimiser imports torch._dynamo, seconds on a
    # small machine) before registering, not inside the first round's deadline.
    torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)
    client = CoordinatorClient(
        coordinator,
        client_ids=[str(c) for c in client_ids],
        security=security or Security(),
        tls_identity=tls_name or f"worker-{client_ids[0]}",
        experiment_digest=exp.digest,
        enrolment_secrets=enrolment_secrets,
        num_examples=reported_sizes(exp, local, client_ids),
    )
    try:
        worker = Worker(
            exp,
            local=local,
            client=client,
            state_dir=state_dir,
            give_up_s=give_up_s,
        )
        return worker.run()
    finally:
        client.close()


def reported_sizes(exp: Deployment, local: LocalData, client_ids: Sequence[int]) -> list[int]:
    """The clients' training-example counts to report when registering (for samplers that weigh
    clients by data size), or none under secure aggregation: there a client's count can be its
    aggregation weight, which the masked update hides from the coordinator."""
    if find_secure_sum(exp.algorithm.aggregator) is not None:
        return []
    return [local.clients[c].num_examples for c in client_ids]


def _ids(clients: Mapping[int, Any]) -> str:
    ids = sorted(clients)
    return str(ids) if len(ids) <= 8 else f"{ids[:4]} … {ids[-2:]} ({len(ids)})"


def set_threads(n: int) -> None:
    """Limit torch's intra-op threads (1 keeps results independent of the core count)."""
    torch.set_num_threads(max(1, n))

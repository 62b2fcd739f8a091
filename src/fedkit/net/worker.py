"""A worker: runs the algorithm's client half on its own data for a remote coordinator.

The worker runs the same :class:`~fedkit.net.deployment.Deployment` as the coordinator (built
by the edge from the same experiment file), builds the model,
loads *its own* partition (by client id) from its own data directory, and keeps its own client
state (optionally persisted in ``state_dir``). It registers, long-polls for tasks, decodes the
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
from collections.abc import Callable
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
from fedkit.net.payload import EvalMeta, ResultMeta, decode_tree, encode_tree, info_from_metadata
from fedkit.net.proto import fedkit_pb2 as pb
from fedkit.net.transport import Security
from fedkit.params import tree_flatten, tree_unflatten

log = logging.getLogger("fedkit.worker")


class _PendingState:
    """The worker's one client as a :class:`fedkit.client.ClientHost`: the new state is held
    back until the coordinator accepts the update."""

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
    """One client's data and what the model needs to know about the dataset."""

    data: ClientData
    num_classes: int
    input_shape: tuple[int, ...]
    num_clients: int


def load_local_data(exp: Deployment, client_id: int, root: Path | None) -> LocalData:
    """Load this worker's partition (deterministic from the experiment's data seed)."""
    fd = build_federated(exp.data, root)
    store = ClientStore.from_federated(fd)
    if not 0 <= client_id < store.num_clients:
        raise ValueError(f"client id {client_id} not in 0..{store.num_clients - 1}")
    return LocalData(
        data=store.data(client_id),
        num_classes=fd.dataset.num_classes,
        input_shape=tuple(fd.dataset.input_shape),
        num_clients=store.num_clients,
    )


class Worker:
    """The worker loop (see module docstring).

    Args:
        exp: The experiment (same file as the coordinator's).
        client_id: The client this worker serves.
        local: Its data.
        client: Connection to the coordinator.
        state_dir: Where to persist client state across worker restarts (None: memory only).
        poll_s: Long-poll duration.
        give_up_s: Stop after the coordinator has been unreachable this long.
    """

    def __init__(
        self,
        exp: Deployment,
        *,
        client_id: int,
        local: LocalData,
        client: CoordinatorClient,
        state_dir: Path | None = None,
        poll_s: float = 2.0,
        give_up_s: float = 120.0,
    ) -> None:
        self.exp = exp
        self.client_id = client_id
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
        info0 = RoundInfo(
            round=0,
            seed=exp.seed,
            num_clients=local.num_clients,
            cohort_size=exp.cohort_size(local.num_clients),
        )
        self.msg_template = self.algorithm.broadcast(self.algorithm.init_state(init), info0)
        self.params_template = init
        self.state_template = self.algorithm.client_state_template(init)
        self.client_state: Any = self._load_state()
        self._before: tuple[int, Any] | None = None  # (round, client state before that round)
        self.rounds_done = 0
        self._stop = threading.Event()
        self._need_register = threading.Event()

    # ---------------------------------------------------------------- client state on disk
    def _state_path(self) -> Path | None:
        return (
            None
            if self.state_dir is None
            else self.state_dir / f"client-{self.client_id}.safetensors"
        )

    def _load_state(self) -> Any:
        path = self._state_path()
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

    def _save_state(self) -> None:
        path = self._state_path()
        if path is None or self.client_state is None:
            return
        flat = {k: v.contiguous() for k, v in tree_flatten(self.client_state).items()}
        write_atomic(path, st_save(flat, metadata=sealed(flat, {"client_id": str(self.client_id)})))

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
                log.info("client %d registered as %s", self.client_id, self.client.worker_id)
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
        finally:
            self._stop.set()
            hb.join(timeout=5.0)

    def _train(self, task: Task) -> None:
        t0 = time.perf_counter()
        msg, meta = decode_tree(task.payload, self.msg_template)
        info = info_from_metadata(meta)
        if info.round != task.round or task.client_id != str(self.client_id):
            raise NetError(ErrorCode.MALFORMED, "task header and payload disagree")
        # A round retried after an aborted attempt starts again from the state before that round.
        retry = self._before is not None and self._before[0] == info.round
        start_state = self._before[1] if self._before is not None and retry else self.client_state
        host = _PendingState(self.local.data, start_state)
        p = run_client(
            self.algorithm, host, self.model, msg, self.client_id, info, task.work_fraction
        )
        if p is None:  # refused (NaN or infinite values): nothing is sent; the state stays
            return
        compute_s = time.perf_counter() - t0
        m = p.metrics
        rmeta = ResultMeta(
            weight=float(p.weight),
            num_examples=m.num_examples,
            steps=m.steps,
            train_loss=float(m.train_loss),
            work_fraction=task.work_fraction,
            compute_s=compute_s,
        )
        if not self._push(task, encode_tree(p.update, rmeta.to_metadata()), compute_s):
            return
        # The client state advances only when the coordinator accepted the update.
        self._before = (info.round, start_state)
        self.client_state = host.new_state
        self._save_state()
        self.rounds_done += 1

    def _evaluate(self, task: Task) -> None:
        """Score the broadcast parameters (and this client's personal model, for personalised
        algorithms) on this client's local test data."""
        t0 = time.perf_counter()
        params, _ = decode_tree(task.payload, self.params_template)
        e = evaluate_client(
            self.model, self.client_id, self.local.data, params, self.algorithm, self.client_state
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
    client_id: int,
    data_root: Path | None = None,
    security: Security | None = None,
    tls_name: str | None = None,
    state_dir: Path | None = None,
    threads: int = 1,
    give_up_s: float = 120.0,
    enrolment_secret: str = "",
    adapt: Callable[[Algorithm[Any, Any, Any, Any], LocalData], Algorithm[Any, Any, Any, Any]]
    | None = None,
) -> int:
    """Load this client's data, then serve ``exp`` until the run ends.

    ``adapt`` changes the algorithm's client half once the data is known (e.g. an attack this
    worker runs, :mod:`fedkit.attacks`); the server half must stay the file's.
    ``enrolment_secret`` is this client id's secret when the coordinator requires enrolment.

    Returns the number of rounds whose result the coordinator accepted.

    Raises:
        DeployError: this client's data or the model cannot be built from the experiment.
    """
    set_threads(threads)
    try:
        local = load_local_data(exp, client_id, data_root)
    except ValueError as exc:
        raise DeployError(f"data: {exc}") from None
    if adapt is not None:
        exp = dataclasses.replace(exp, algorithm=adapt(exp.algorithm, local))
    # Pay torch's one-time lazy import (the first optimiser imports torch._dynamo, seconds on a
    # small machine) before registering, not inside the first round's deadline.
    torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)
    client = CoordinatorClient(
        coordinator,
        client_id=str(client_id),
        security=security or Security(),
        tls_identity=tls_name or f"worker-{client_id}",
        experiment_digest=exp.digest,
        enrolment_secret=enrolment_secret,
    )
    try:
        worker = Worker(
            exp,
            client_id=client_id,
            local=local,
            client=client,
            state_dir=state_dir,
            give_up_s=give_up_s,
        )
        return worker.run()
    finally:
        client.close()


def set_threads(n: int) -> None:
    """Limit torch's intra-op threads (1 keeps results independent of the core count)."""
    torch.set_num_threads(max(1, n))

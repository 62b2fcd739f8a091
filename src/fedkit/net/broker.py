"""The coordinator's task board: registered workers, the open round, and arriving results.

The gRPC servicer (:mod:`fedkit.net.service`) calls into a :class:`Broker` from many threads;
the remote executor calls :meth:`Broker.open_round` / :meth:`Broker.collect` from the run loop.
Tasks are keyed by client id: whichever authenticated worker serves that client (a restarted
worker re-registers and takes over) gets the task. One worker may serve several client ids (one
registration names them all): it is handed its clients' tasks one at a time, each task naming
its client, and every client keeps its own selection, deadline, quorum and suspension record.
Results are refused with a typed error when they are unauthenticated, for another run, stale,
duplicate (first wins), late, oversized (checked against the declared size before anything is
buffered), corrupted or of the wrong schema.

Client ids are bound to identities (:mod:`fedkit.net.identity`): under mutual TLS a call is
accepted only for a client id the peer's certificate names; in plaintext mode with an
:class:`~fedkit.net.identity.Enrolment` a registration must carry the client id's enrolment
secret. A worker that keeps missing its tasks — ``max_missed_tasks`` rounds in a row closed
without its result while it still heartbeats — is *suspended*: no round waits for it, and
over-selection and federated evaluation pass it by, until it pushes a result again (even a late
one) or registers again.
"""

from __future__ import annotations

import dataclasses
import hmac
import logging
import math
import secrets
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from fedkit.net.codec import Buffer, Reassembler, Upload, payload_digest
from fedkit.net.errors import ErrorCode, NetError
from fedkit.net.identity import Enrolment, PeerIdentity
from fedkit.net.proto import PROTOCOL_VERSION
from fedkit.net.proto import fedkit_pb2 as pb

log = logging.getLogger("fedkit.coordinator")


MAX_CLIENTS_PER_WORKER = 1_000_000
"""Most client ids one registration may name (the population size caps it further)."""


@dataclass(kw_only=True)
class WorkerRecord:
    """One registered worker and the client ids it serves."""

    worker_id: str
    clients: tuple[str, ...]
    token: str
    identity: PeerIdentity | None
    last_seen: float
    missed: dict[str, int] = field(default_factory=dict)
    """Per client: rounds in a row that closed without its result."""

    def client_for(self, claimed: str) -> str:
        """The client a task or result message names: ``claimed`` must be one of this worker's
        (an empty claim means the only one, for a single-client worker)."""
        if not claimed and len(self.clients) == 1:
            return self.clients[0]
        if claimed not in self.clients:
            raise NetError(ErrorCode.UNAUTHENTICATED, "worker pushes for another client id")
        return claimed


@dataclass(frozen=True, kw_only=True)
class Assignment:
    """What one client is asked to do this round: a shared payload and its share of the work.

    ``wire`` holds the payload's ``TaskPart`` chunk messages already serialised, so that the same
    bytes go to every worker without being serialised again per worker.
    """

    wire: list[bytes]
    payload_bytes: int
    work_fraction: float = 1.0
    kind: int = pb.TRAIN
    digest: bytes = b""
    """:func:`~fedkit.net.codec.payload_digest` of the payload: a worker that names it in
    ``held_payload`` is sent the task without the chunks (``payload_held``)."""
    client_values: tuple[tuple[str, float], ...] = ()
    """The client's per-client aggregator values (``TaskInfo.client_values``; see
    :func:`fedkit.aggregate.client_values`)."""

    @classmethod
    def of(cls, chunks: list[pb.Chunk], payload_bytes: int, *, kind: int = pb.TRAIN) -> Assignment:
        """Serialise ``chunks`` once."""
        wire = [pb.TaskPart(chunk=c).SerializeToString() for c in chunks]
        digest = payload_digest(chunks, payload_bytes)
        return cls(wire=wire, payload_bytes=payload_bytes, kind=kind, digest=digest)

    def with_fraction(
        self, work_fraction: float, client_values: tuple[tuple[str, float], ...] = ()
    ) -> Assignment:
        """The same payload with another work fraction and the client's per-client values (the
        bytes are shared, not copied)."""
        return dataclasses.replace(self, work_fraction=work_fraction, client_values=client_values)


@dataclass(frozen=True, kw_only=True)
class Result:
    """An accepted result: the validated payload bytes and timings."""

    client_id: str
    worker_id: str
    round: int
    task_id: str
    payload: Buffer
    rtt_s: float
    compute_s: float
    arrival: float
    decoded: Any = None
    """What the round's result check returned for this payload (None without a check)."""


@dataclass(kw_only=True)
class _Task:
    task_id: str
    client_id: str
    assignment: Assignment
    sent_at: float | None = None
    done: bool = False


@dataclass(kw_only=True)
class _Round:
    round: int
    deadline: float
    tasks: dict[str, _Task]  # by client id
    results: dict[str, Result] = field(default_factory=dict)
    arrivals: list[str] = field(default_factory=list)  # client ids in arrival order
    refused: set[str] = field(default_factory=set)  # clients whose result was refused
    closed: bool = False
    streaming: bool = False  # a collect() hands results over as they arrive
    handed: int = 0  # arrivals handed over so far
    receiving: int = 0  # uploads admitted and still arriving

    def held(self) -> int:
        """Results the broker holds in memory for this round's streaming collect: received
        and not handed over, or being received."""
        return len(self.arrivals) - self.handed + self.receiving


ResultCheck = Callable[[Buffer, bool], Any]
"""Validates a result: ``(payload, complete)``; with ``complete`` False only the header has
arrived (the rest of the buffer is zeros) and only the header may be judged. What it returns for
the complete payload (e.g. the tensors it decoded to check them) is kept as
:attr:`Result.decoded`, so that the consumer need not decode the payload again."""


class Broker:
    """Thread-safe coordinator state shared by the gRPC servicer and the remote executor.

    Args:
        run_id: Identifier of this run (persisted by the coordinator so it survives restarts).
        max_result_bytes: Cap on one result payload; larger declarations are refused unread.
        heartbeat_interval_s: How often workers should heartbeat.
        liveness_s: A worker not heard from for this long is not considered live.
        require_tls_identity: Whether every call must carry a client certificate (mutual TLS).
        experiment_digest: SHA-256 of the experiment file; workers with another digest are refused.
        num_clients: Size of the client population; client ids must be ``0..num_clients-1``.
        enrolment: When set, a registration must carry the client id's enrolment secret.
        max_missed_tasks: Suspend a worker after this many rounds in a row closed without its
            result (0: never).
        max_backlog: While :meth:`collect` hands results over as they arrive, at most this many
            may be arriving or received and not yet handed over; a further upload waits before
            any of its payload is read, so memory stays ``max_backlog`` results' worth whatever
            the cohort, also when the fold lags.
    """

    def __init__(
        self,
        *,
        run_id: str,
        max_result_bytes: int,
        heartbeat_interval_s: float = 2.0,
        liveness_s: float = 10.0,
        require_tls_identity: bool = False,
        experiment_digest: str = "",
        num_clients: int | None = None,
        enrolment: Enrolment | None = None,
        max_missed_tasks: int = 0,
        max_client_examples: int = 1 << 53,
        max_backlog: int = 8,
    ) -> None:
        self.run_id = run_id
        self.max_backlog = max_backlog
        self.max_client_examples = max_client_examples
        self._sizes: dict[str, int] = {}  # client id -> training examples its worker reported
        self.enrolment = enrolment
        self.max_missed_tasks = max_missed_tasks
        self.num_clients = num_clients
        self.max_result_bytes = max_result_bytes
        self.heartbeat_interval_s = heartbeat_interval_s
        self.liveness_s = liveness_s
        self.require_tls_identity = require_tls_identity
        self.experiment_digest = experiment_digest
        self._lock = threading.Condition()
        self._workers: dict[str, WorkerRecord] = {}
        self._by_client: dict[str, str] = {}
        self._round: _Round | None = None
        self._last_round = -1
        self._shutdown = False
        self._told_to_stop: set[str] = set()
        self._result_check: ResultCheck | None = None
        self._counter = 0
        self.rejections: deque[tuple[str, ErrorCode]] = deque(maxlen=10_000)
        self.bulk_port = 0
        """Port of the bulk result channel, told to every registering worker (0: none)."""
        self._uploading: set[tuple[str, str]] = set()  # (client id, task id) arriving now
        """Recent refusals (who, code), for logs and tests."""

    # ----------------------------------------------------------------- authentication
    def _authenticate(self, header: pb.Header, identity: PeerIdentity | None) -> WorkerRecord:
        if self.require_tls_identity and identity is None:
            raise NetError(ErrorCode.UNAUTHENTICATED, "no client certificate on this call")
        rec = self._workers.get(header.worker_id)
        if rec is None:
            raise NetError(
                ErrorCode.UNKNOWN_WORKER, f"worker {header.worker_id!r} is not registered"
            )
        if not hmac.compare_digest(rec.token.encode(), header.token.encode()):
            raise NetError(ErrorCode.UNAUTHENTICATED, "wrong or missing token")
        if _fingerprint(rec.identity) != _fingerprint(identity):
            raise NetError(ErrorCode.UNAUTHENTICATED, "TLS identity differs from registration")
        if identity is not None and not all(c in identity.clients for c in rec.clients):
            raise NetError(
                ErrorCode.UNAUTHENTICATED,
                f"certificate {identity.name!r} does not name clients {rec.clients}",
            )
        if header.run_id != self.run_id:
            raise NetError(ErrorCode.RUN_MISMATCH, f"run {header.run_id!r} is not {self.run_id!r}")
        rec.last_seen = time.monotonic()
        return rec

    def _reject(self, who: str, err: NetError) -> NetError:
        self.rejections.append((who, err.code))
        return err

    # ----------------------------------------------------------------- servicer side
    def register(self, req: pb.RegisterRequest, identity: PeerIdentity | None) -> pb.RegisterReply:
        """Admit a worker serving ``req.client_id`` (or every id of ``req.client_ids``).

        The worker must speak this coordinator's protocol version (else
        ``UNSUPPORTED_VERSION``). Every client id must be one the peer's certificate names
        (mutual TLS) and, with an enrolment, come with its enrolment secret; otherwise
        ``UNAUTHENTICATED``. An earlier worker of a client is replaced when it has gone silent
        (or, under mutual TLS, when the same certificate registers again: the worker restarted);
        while it is live the newcomer is refused with ``CLIENT_TAKEN``.
        """
        with self._lock:
            try:
                return self._register(req, identity)
            except NetError as err:
                raise self._reject("register", err) from None

    def _register(self, req: pb.RegisterRequest, identity: PeerIdentity | None) -> pb.RegisterReply:
        if req.protocol_version != PROTOCOL_VERSION:
            raise NetError(
                ErrorCode.UNSUPPORTED_VERSION,
                f"the worker speaks protocol version {req.protocol_version}, this coordinator "
                f"speaks {PROTOCOL_VERSION}: run the same fedkit protocol version on both",
            )
        if self.require_tls_identity and identity is None:
            raise NetError(ErrorCode.UNAUTHENTICATED, "no client cert")
        if req.header.run_id and req.header.run_id != self.run_id:
            # A worker of a previous coordinator incarnation keeps the run id; anything else is
            # another run.
            raise NetError(ErrorCode.RUN_MISMATCH, f"run {req.header.run_id!r} is not served")
        if self.experiment_digest and req.experiment_digest != self.experiment_digest:
            raise NetError(
                ErrorCode.RUN_MISMATCH,
                "the worker's experiment file differs from the coordinator's",
            )
        clients, secrets_ = self._served(req)
        for cid, secret in zip(clients, secrets_, strict=True):
            self._admit(cid, secret, identity)
        sizes = self._reported_sizes(req, len(clients))
        now = time.monotonic()
        for cid in clients:
            old = self._workers.get(self._by_client.get(cid, ""))
            if old is None:
                continue
            same_cert = identity is not None and _fingerprint(old.identity) == _fingerprint(
                identity
            )
            same_worker = old.worker_id == req.header.worker_id and hmac.compare_digest(
                old.token.encode(), req.header.token.encode()
            )  # the same worker registering again (e.g. after a lost reply)
            if not (same_cert or same_worker) and now - old.last_seen <= self.liveness_s:
                raise NetError(
                    ErrorCode.CLIENT_TAKEN,
                    f"client {cid} is served by a live worker; retry after "
                    f"{self.liveness_s:.0f} s without its heartbeat",
                )
        for cid in clients:  # a restarted worker takes over (from every earlier holder)
            old = self._workers.get(self._by_client.pop(cid, ""))
            if old is not None:
                old.clients = tuple(c for c in old.clients if c != cid)
                if not old.clients:
                    self._workers.pop(old.worker_id, None)
        self._counter += 1
        label = clients[0] if len(clients) == 1 else f"{clients[0]}+{len(clients) - 1}"
        worker_id = f"{label}#{self._counter}-{secrets.token_hex(4)}"
        token = secrets.token_urlsafe(32)
        self._workers[worker_id] = WorkerRecord(
            worker_id=worker_id,
            clients=clients,
            token=token,
            identity=identity,
            last_seen=now,
        )
        for cid in clients:
            self._by_client[cid] = worker_id
        self._sizes.update(zip(clients, sizes, strict=False))  # none reported: none stored
        self._lock.notify_all()
        return pb.RegisterReply(
            error=pb.Error(code=pb.OK),
            run_id=self.run_id,
            worker_id=worker_id,
            token=token,
            heartbeat_interval_s=self.heartbeat_interval_s,
            max_payload_bytes=self.max_result_bytes,
            protocol_version=PROTOCOL_VERSION,
            bulk_port=self.bulk_port,
        )

    def _served(self, req: pb.RegisterRequest) -> tuple[tuple[str, ...], tuple[str, ...]]:
        """The client ids a registration names, with their enrolment secrets (same order)."""
        if req.client_ids:
            if req.client_id:
                raise NetError(ErrorCode.MALFORMED, "give client_id or client_ids, not both")
            clients = tuple(req.client_ids)
            cap = MAX_CLIENTS_PER_WORKER if self.num_clients is None else self.num_clients
            if len(clients) > cap:
                raise NetError(
                    ErrorCode.MALFORMED, f"{len(clients)} client ids; at most {cap} per worker"
                )
            if len(set(clients)) != len(clients):
                raise NetError(ErrorCode.MALFORMED, "a client id is named twice")
            given = tuple(req.enrolment_secrets)
            if given and len(given) != len(clients):
                raise NetError(
                    ErrorCode.MALFORMED,
                    f"{len(given)} enrolment secrets for {len(clients)} client ids",
                )
            return clients, given or ("",) * len(clients)
        return (req.client_id,), (req.enrolment_secret,)

    def _reported_sizes(self, req: pb.RegisterRequest, n: int) -> tuple[int, ...]:
        """The data sizes a registration reports: none, or one per client id, each at most
        ``max_client_examples`` (a worker inflating its size would be drawn more often)."""
        if req.num_examples and len(req.num_examples) != n:  # checked before anything is copied
            raise NetError(
                ErrorCode.MALFORMED, f"{len(req.num_examples)} data sizes for {n} client ids"
            )
        sizes = tuple(int(s) for s in req.num_examples)
        if any(s > self.max_client_examples for s in sizes):
            raise NetError(
                ErrorCode.MALFORMED,
                f"a data size above deploy.max_client_examples = {self.max_client_examples}",
            )
        return sizes

    def data_sizes(self, num_clients: int) -> tuple[int, ...]:
        """Every client's reported training-example count (index = client id), or ``()`` while
        any of ``0..num_clients-1`` has not reported one (then samplers that need sizes refuse)."""
        with self._lock:
            sizes = [self._sizes.get(str(c)) for c in range(num_clients)]
        return () if any(s is None for s in sizes) else tuple(s for s in sizes if s is not None)

    def _admit(self, cid: str, secret: str, identity: PeerIdentity | None) -> None:
        """Refuse a client id that is malformed, outside the population, not named by the
        peer's certificate, or without its enrolment secret."""
        n = self.num_clients
        canonical = cid.isascii() and cid.isdigit() and len(cid) < 12 and str(int(cid)) == cid
        if not (canonical and (n is None or int(cid) < n)):
            allowed = "a non-negative integer" if n is None else f"0..{n - 1}"
            raise NetError(ErrorCode.MALFORMED, f"client id {cid[:32]!r} is not {allowed}")
        if identity is not None and cid not in identity.clients:
            raise NetError(
                ErrorCode.UNAUTHENTICATED,
                f"certificate {identity.name!r} may serve clients {identity.clients}, "
                f"not client {cid}",
            )
        if self.enrolment is not None and not self.enrolment.admits(cid, secret):
            raise NetError(
                ErrorCode.UNAUTHENTICATED,
                f"client {cid}: enrolment secret missing or wrong (give the worker "
                f"client-{cid}.secret with --secret-file)",
            )

    def heartbeat(
        self, req: pb.HeartbeatRequest, identity: PeerIdentity | None
    ) -> pb.HeartbeatReply:
        """Refresh a worker's liveness."""
        with self._lock:
            try:
                self._authenticate(req.header, identity)
            except NetError as err:
                raise self._reject("heartbeat", err) from None
            rnd = self._round.round if self._round is not None else max(self._last_round, 0)
            return pb.HeartbeatReply(error=pb.Error(code=pb.OK), round=rnd)

    def next_task(
        self, req: pb.GetTaskRequest, identity: PeerIdentity | None, *, max_wait_s: float = 5.0
    ) -> tuple[pb.TaskInfo, list[bytes]]:
        """The worker's task for the open round, waiting up to ``wait_s`` for one to appear.

        Returns the task info and the payload as serialised ``TaskPart`` chunk messages, or no
        chunks when the request's ``held_payload`` names this task's payload (a multi-client
        worker is then sent a round's broadcast once, not once per client).
        """
        end = time.monotonic() + min(max(req.wait_s, 0.0), max_wait_s)
        with self._lock:
            while True:
                try:
                    rec = self._authenticate(req.header, identity)
                except NetError as err:
                    raise self._reject("get_task", err) from None
                if self._shutdown:
                    self._told_to_stop.add(rec.worker_id)
                    self._lock.notify_all()
                    return pb.TaskInfo(error=pb.Error(code=pb.OK), kind=pb.SHUTDOWN), []
                rnd = self._round
                task = None if rnd is None or rnd.closed else _next_of(rnd, rec.clients)
                if rnd is not None and task is not None:
                    if task.sent_at is None:
                        task.sent_at = time.monotonic()
                    a = task.assignment
                    held = bool(a.digest) and req.held_payload == a.digest
                    info = pb.TaskInfo(
                        error=pb.Error(code=pb.OK),
                        kind=pb.TaskKind.ValueType(a.kind),
                        header=pb.Header(
                            run_id=self.run_id,
                            round=rnd.round,
                            task_id=task.task_id,
                            worker_id=rec.worker_id,
                        ),
                        client_id=task.client_id,
                        work_fraction=a.work_fraction,
                        deadline_s=max(rnd.deadline - time.monotonic(), 0.0),
                        payload_bytes=a.payload_bytes,
                        num_chunks=len(a.wire),
                        payload_digest=a.digest,
                        payload_held=held,
                        client_values=[pb.NamedValue(name=n, value=v) for n, v in a.client_values],
                    )
                    return info, [] if held else a.wire
                left = end - time.monotonic()
                if left <= 0:
                    return pb.TaskInfo(error=pb.Error(code=pb.OK), kind=pb.WAIT), []
                self._lock.wait(left)

    def accept_result(
        self,
        info: pb.ResultInfo,
        chunks: Iterator[pb.Chunk],
        identity: PeerIdentity | None,
        *,
        limit: Callable[[float], None] | None = None,
        touch: Callable[[], None] | None = None,
    ) -> None:
        """Validate a result streamed as gRPC chunks and record it (see :meth:`accept_upload`)."""

        def chunked(cap: int) -> Upload:
            return Reassembler(
                declared_bytes=info.payload_bytes,
                declared_chunks=info.num_chunks,
                max_bytes=cap,
                source=chunks,
            )

        self.accept_upload(info, chunked, identity, limit=limit, touch=touch)

    def accept_upload(
        self,
        info: pb.ResultInfo,
        open_upload: Callable[[int], Upload],
        identity: PeerIdentity | None,
        *,
        limit: Callable[[float], None] | None = None,
        touch: Callable[[], None] | None = None,
    ) -> None:
        """Validate a result and record it; raises :class:`NetError` on refusal.

        Authentication, run, round, task and duplicate checks happen before ``open_upload`` is
        called with the result cap (it refuses a larger declared size before allocating);
        the payload's integrity and the result schema are checked as its pieces arrive.
        ``limit`` is told the round's deadline (monotonic), by which the upload must end; a
        piece arriving later is refused with ``DEADLINE_PASSED``. One upload per task may be in
        progress at a time (a second is ``DUPLICATE_RESULT``), so a worker cannot make the
        coordinator buffer its result many times over. An upload held back by the backlog (see
        ``max_backlog``) calls ``touch`` while it waits: the wait is the coordinator's, not the
        peer's silence.
        """
        with self._lock:
            try:
                rec = self._authenticate(info.header, identity)
                cid = rec.client_for(info.client_id)
                rec.missed[cid] = 0  # it answers (even late): back in selection
                if not (math.isfinite(info.compute_s) and info.compute_s >= 0):
                    raise NetError(ErrorCode.MALFORMED, "compute_s must be a finite number >= 0")
                rnd0, _ = self._task_for(cid, info)
                deadline = rnd0.deadline
                if limit is not None:
                    limit(deadline)
                self._await_backlog(rnd0, deadline, touch)  # the wait releases the lock
                self._task_for(cid, info)  # still open after the wait
                key = (cid, info.header.task_id)
                if key in self._uploading:
                    raise NetError(ErrorCode.DUPLICATE_RESULT, "this result is already arriving")
                assembler = open_upload(self.max_result_bytes)
            except NetError as err:
                raise self._reject(rec_name(info), err) from None
            check = self._result_check
            self._uploading.add(key)
            rnd0.receiving += 1
        try:
            self._receive(rec, cid, info, assembler, check, deadline)
        finally:
            with self._lock:
                self._uploading.discard(key)
                rnd0.receiving -= 1
                self._lock.notify_all()

    def _await_backlog(
        self, rnd: _Round, deadline: float, touch: Callable[[], None] | None
    ) -> None:
        """Wait (under the lock, which the wait releases) while the round's streaming collect
        holds ``max_backlog`` results not handed over yet, those being received included;
        ``DEADLINE_PASSED`` at the round's deadline."""
        while rnd.streaming and not rnd.closed and rnd.held() >= self.max_backlog:
            left = deadline - time.monotonic()
            if left <= 0:
                raise NetError(ErrorCode.DEADLINE_PASSED, "round deadline passed while queued")
            if touch is not None:
                touch()
            self._lock.wait(min(left, 0.1))

    def _receive(
        self,
        rec: WorkerRecord,
        cid: str,
        info: pb.ResultInfo,
        assembler: Upload,
        check: ResultCheck | None,
        deadline: float,
    ) -> None:
        """Read an admitted upload, check it as it arrives and record it (see
        :meth:`accept_upload`)."""
        content = False  # whether a refusal is about the content (then the client is out)
        try:  # read outside the lock: other workers keep being served meanwhile
            early = check is None
            for _ in assembler.pieces():
                if time.monotonic() > deadline:
                    raise NetError(ErrorCode.DEADLINE_PASSED, "round deadline passed mid-stream")
                if not early and assembler.header_received and not assembler.complete:
                    assert check is not None
                    content = True
                    check(assembler.peek(), False)  # header refused before the rest is buffered
                    content, early = False, True
            payload = assembler.result()
            decoded = None
            if check is not None:
                content = True
                decoded = check(payload, True)
        except NetError as err:
            with self._lock:
                if content:
                    self._refuse_task(cid, info)
                raise self._reject(rec_name(info), err) from None
        with self._lock:
            try:
                rnd2, task2 = self._task_for(cid, info)
            except NetError as err:
                raise self._reject(rec_name(info), err) from None
            now = time.monotonic()
            task2.done = True
            sent = task2.sent_at if task2.sent_at is not None else now
            rnd2.results[cid] = Result(
                client_id=cid,
                worker_id=rec.worker_id,
                round=rnd2.round,
                task_id=task2.task_id,
                payload=payload,
                decoded=decoded,
                rtt_s=now - sent,
                compute_s=info.compute_s,
                arrival=now,
            )
            rnd2.arrivals.append(cid)
            self._lock.notify_all()

    def _refuse_task(self, cid: str, info: pb.ResultInfo) -> None:
        """Close a task whose result was refused for its content (values, metadata, schema):
        the client is out of this round and the round no longer waits for it."""
        rnd = self._round
        if rnd is None or rnd.round != info.header.round:
            return
        task = rnd.tasks.get(cid)
        if task is not None and task.task_id == info.header.task_id and not task.done:
            task.done = True
            rnd.refused.add(cid)
            self._lock.notify_all()

    def _task_for(self, cid: str, info: pb.ResultInfo) -> tuple[_Round, _Task]:
        rnd = self._round
        r = info.header.round
        if rnd is None or r != rnd.round:
            raise NetError(ErrorCode.STALE_ROUND, f"round {r} is not open")
        task = rnd.tasks.get(cid)
        if task is None or task.task_id != info.header.task_id:
            raise NetError(ErrorCode.UNKNOWN_TASK, f"no task {info.header.task_id!r} for worker")
        if task.done:
            raise NetError(ErrorCode.DUPLICATE_RESULT, f"task {task.task_id} already has a result")
        if rnd.closed or time.monotonic() > rnd.deadline:
            raise NetError(ErrorCode.DEADLINE_PASSED, f"round {r} deadline passed")
        return rnd, task

    # ----------------------------------------------------------------- executor side
    def _suspended(self, w: WorkerRecord, cid: str) -> bool:
        return 0 < self.max_missed_tasks <= w.missed.get(cid, 0)

    def _suspended_set(self) -> set[str]:
        return {c for w in self._workers.values() for c in w.clients if self._suspended(w, c)}

    def _live(self, now: float) -> set[str]:
        """Clients whose worker was heard from within the liveness window and are not
        suspended."""
        return {
            c
            for w in self._workers.values()
            if now - w.last_seen <= self.liveness_s
            for c in w.clients
            if not self._suspended(w, c)
        }

    def live_clients(self) -> set[str]:
        """Client ids whose worker was heard from within the liveness window (suspended workers
        excluded, see module docstring)."""
        with self._lock:
            return self._live(time.monotonic())

    def suspended_clients(self) -> set[str]:
        """Client ids whose worker is suspended for missing ``max_missed_tasks`` tasks in a
        row."""
        with self._lock:
            return self._suspended_set()

    def wait_for_clients(self, wanted: set[str], need: int, timeout_s: float) -> set[str]:
        """Wait until at least ``need`` of the ``wanted`` clients are live, or ``timeout_s``
        (a suspended client is not waited for).

        Returns the live clients among ``wanted``.
        """
        end = time.monotonic() + timeout_s
        with self._lock:
            while True:
                live = self._live(time.monotonic()) & wanted
                left = end - time.monotonic()
                waitable = len(wanted) - len(self._suspended_set() & wanted)
                if len(live) >= min(need, waitable) or left <= 0:
                    return live
                self._lock.wait(min(left, 0.5))

    def open_round(
        self,
        round_: int,
        assignments: Mapping[str, Assignment],
        *,
        deadline_s: float,
        result_check: ResultCheck | None,
    ) -> None:
        """Publish this round's tasks; results for any other round become stale."""
        with self._lock:
            self._round = _Round(
                round=round_,
                deadline=time.monotonic() + deadline_s,
                tasks={
                    c: _Task(
                        task_id=f"r{round_}-{c}-{secrets.token_hex(4)}", client_id=c, assignment=a
                    )
                    for c, a in assignments.items()
                },
            )
            self._result_check = result_check
            self._lock.notify_all()

    def collect(
        self, want: int, on_result: Callable[[Result], None] | None = None
    ) -> dict[str, Result]:
        """Wait for ``want`` results, closing the round when they are in, when every outstanding
        client's worker is gone (no heartbeat within the liveness window), or at the deadline.

        With ``on_result``, each result is handed over as it arrives (in arrival order, outside
        the lock, so workers keep being served) and the broker drops its payload right after,
        so the caller can fold results in without the round holding every payload at once.

        A round that closes short of ``want`` counts a missed task for every worker whose task
        got no result (and was not refused); ``max_missed_tasks`` of them in a row suspend it.

        Returns the accepted results by client id (without payloads when ``on_result`` took them).
        """
        handed = 0
        with self._lock:
            rnd = self._round
            if rnd is None:
                raise RuntimeError("collect() without an open round")
            rnd.streaming = on_result is not None
            while True:
                if on_result is not None and handed < len(rnd.arrivals):
                    fresh = rnd.arrivals[handed:]
                    handed = len(rnd.arrivals)
                    self._lock.release()
                    try:
                        self._hand_over(rnd, fresh, on_result)
                    finally:
                        self._lock.acquire()
                    rnd.handed = handed
                    self._lock.notify_all()  # uploads waiting for the backlog may go on
                    continue
                now = time.monotonic()
                left = rnd.deadline - now
                if len(rnd.results) >= min(want, len(rnd.tasks)) or left <= 0:
                    break
                outstanding = {c for c, t in rnd.tasks.items() if not t.done}
                if not outstanding & self._live(now):
                    break
                self._lock.wait(min(left, 0.25))
            rnd.closed = True
            if len(rnd.results) < min(want, len(rnd.tasks)):
                self._count_misses(rnd)
            self._last_round = rnd.round
            self._round = None
            self._result_check = None
            rest = rnd.arrivals[handed:]
        if on_result is not None:  # the round is closed: nothing arrives any more
            self._hand_over(rnd, rest, on_result)
        return dict(rnd.results)

    def _count_misses(self, rnd: _Round) -> None:
        """Count a miss for each worker whose task of the closed round got no result."""
        for c, task in rnd.tasks.items():
            if task.done or c in rnd.refused:
                continue
            w = self._workers.get(self._by_client.get(c, ""))
            if w is None:
                continue
            w.missed[c] = w.missed.get(c, 0) + 1
            if w.missed[c] == self.max_missed_tasks:
                log.warning(
                    "client %s (worker %s) missed %d tasks in a row: no round waits for it until "
                    "it answers or registers again",
                    c,
                    w.worker_id,
                    w.missed[c],
                )

    def _hand_over(
        self, rnd: _Round, clients: list[str], on_result: Callable[[Result], None]
    ) -> None:
        for c in clients:
            res = rnd.results[c]
            on_result(res)
            # drop the payload and what the check decoded from it (views that keep it alive)
            rnd.results[c] = dataclasses.replace(res, payload=b"", decoded=None)

    def shutdown(self, grace_s: float = 0.0) -> None:
        """Tell every polling worker the run is over; wait up to ``grace_s`` until every live
        worker has been told."""
        end = time.monotonic() + grace_s
        with self._lock:
            self._shutdown = True
            self._lock.notify_all()
            while True:
                now = time.monotonic()
                recent = 3 * self.heartbeat_interval_s  # dead workers stop heartbeating
                live = {w for w, r in self._workers.items() if now - r.last_seen <= recent}
                if live <= self._told_to_stop or now >= end:
                    return
                self._lock.wait(min(end - now, 0.25))


def _next_of(rnd: _Round, clients: tuple[str, ...]) -> _Task | None:
    """The next task of a worker serving ``clients``: one not sent yet first, else one sent but
    without a result (its worker asks again, so the earlier copy was lost)."""
    resend = None
    for c in clients:
        task = rnd.tasks.get(c)
        if task is None or task.done:
            continue
        if task.sent_at is None:
            return task
        resend = resend or task
    return resend


def _fingerprint(identity: PeerIdentity | None) -> str | None:
    return None if identity is None else identity.fingerprint


def rec_name(info: pb.ResultInfo) -> str:
    """A short label for rejection logs."""
    return f"push:{info.header.worker_id or '?'}"

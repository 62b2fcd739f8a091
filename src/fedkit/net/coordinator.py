"""The coordinator: serves workers over gRPC and drives the one run loop with a remote executor.

``serve`` takes a built :class:`~fedkit.net.deployment.Deployment` (the edge,
:mod:`fedkit.experiment.deploy`, builds it from an experiment file) and loads the data on the
coordinator only for what the server needs (the model shape, the population size, the central test
split) — client data stays on the workers. It starts the gRPC server and runs :func:`fedkit.run.run`
with a :class:`~fedkit.net.executor.RemoteExecutor` and a
:class:`~fedkit.net.state.SQLiteCheckpointer`: the run loop resumes from the last round committed
to SQLite and, after every round, commits the core's checkpoint (model, server-optimiser state,
completed rounds, seed) together with the round's record and round-trip times (staged by the
round's callback) in one SQLite transaction. Each round also goes to a
:class:`~fedkit.net.results.RunRecorder` (the edge's results database). At the end it tells workers
to shut down.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import grpc

from fedkit.algorithm import RoundInfo
from fedkit.client import prepared_template
from fedkit.data.spec import build_federated
from fedkit.net.broker import Broker
from fedkit.net.bulk import BulkServer
from fedkit.net.deployment import DeployError, Deployment, DeploySettings
from fedkit.net.executor import RemoteExecutor
from fedkit.net.guard import StreamGuard
from fedkit.net.identity import Enrolment
from fedkit.net.results import NullRecorder, RunRecorder, Summary
from fedkit.net.secagg_coordinator import bind_coordinator
from fedkit.net.service import add_service
from fedkit.net.state import CoordinatorDB, RoundRow, RttRow, SQLiteCheckpointer, StorageError
from fedkit.net.tls import server_ssl_context
from fedkit.net.transport import Security, make_server, split_address
from fedkit.params import Params, sha256, tree_nbytes
from fedkit.run import Callback, Probe, RoundRecord, RunConfig, central_evaluator, run
from fedkit.sampling import Population

log = logging.getLogger("fedkit.coordinator")

RESULT_HEADER_ALLOWANCE = 1 << 20
"""Bytes allowed for a result's safetensors header and metadata beyond its tensors (1 MiB)."""
PENDING_STREAMS_TOTAL = 32
"""Result streams without their first message the whole server holds at once."""


def serve(
    exp: Deployment,
    *,
    listen: str,
    security: Security,
    out_dir: Path,
    data_root: Path | None = None,
    on_listening: Callable[[int], None] | None = None,
    shutdown_grace_s: float = 10.0,
    min_workers: int = 0,
    recorder: RunRecorder | None = None,
    enrolment: Enrolment | None = None,
    probes: Sequence[Probe] = (),
    stop: Callable[[RoundInfo], str | None] | None = None,
    callbacks: Sequence[Callback] = (),
) -> Summary:
    """Run the experiment as a coordinator (see module docstring).

    With ``min_workers``, round 0 waits (up to ``deploy.select_timeout_s``) until that many
    workers have registered, so that every launched worker takes part from the start.
    ``recorder`` receives every round (default: recorded in ``coordinator.db`` only).
    With ``enrolment`` every worker must register with its client id's enrolment secret
    (required when ``deploy.enrolment = "secret"``). ``probes`` and ``stop`` are the run loop's
    (the edge's privacy plan: ε every round, the target-ε stop); a stopped run is ``completed``
    when every round it ran was committed, with the reason in ``Summary.stopped``.
    ``callbacks`` see every round after it is recorded (TensorBoard).

    Raises:
        DeployError: the data or the model cannot be built from the experiment (e.g. a model
            option of the wrong type), or enrolment is required but no secret was given.
    """
    t0 = time.perf_counter()
    if exp.deploy.enrolment == "secret" and enrolment is None:
        raise DeployError(
            'deploy.enrolment = "secret" needs the run secret: pass --secret-file (made by '
            "`fedkit secrets create`)"
        )
    try:  # built once, before any state is written
        fd = build_federated(exp.data, data_root)
    except ValueError as exc:
        raise DeployError(f"data: {exc}") from None
    ds = fd.dataset
    try:
        model = exp.build_model(num_classes=ds.num_classes, input_shape=tuple(ds.input_shape))
    except (ValueError, TypeError) as exc:
        raise DeployError(f"model: {exc}") from None
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise StorageError.of("output directory", out_dir, exc) from None
    db = CoordinatorDB(out_dir / "coordinator.db")
    run_id = db.run_id(exp.digest)
    recorder = recorder or NullRecorder()
    known = db.get_meta("results_run_id")
    results_run_id = recorder.start(int(known) if known else None, db.completed_rounds())
    db.set_meta("results_run_id", str(results_run_id))
    init = exp.initial_params(model)
    algorithm = exp.algorithm
    # the update every worker's result must match: names, dtypes, shapes (no training needed)
    template = prepared_template(algorithm, init, exp.seed)
    s = exp.deploy
    broker = Broker(
        run_id=run_id,
        # A result is the update template's tensors plus a small header: anything declared larger
        # is refused before one byte of it is buffered.
        max_result_bytes=min(s.max_update_bytes, tree_nbytes(template) + RESULT_HEADER_ALLOWANCE),
        heartbeat_interval_s=s.heartbeat_s,
        liveness_s=s.liveness_s,
        require_tls_identity=security.tls,
        experiment_digest=exp.digest,
        num_clients=fd.num_clients,
        enrolment=enrolment,
        max_missed_tasks=s.max_missed_tasks,
        max_client_examples=s.max_client_examples,
    )
    # Each worker holds at most a long poll and a push at once (2n + 8 threads); pending result
    # streams (first message not yet in) are capped apart, so a flood of them never takes the
    # threads honest workers need (see fedkit.net.guard).
    guard = StreamGuard(
        max_pending=s.max_pending_streams,
        max_pending_total=PENDING_STREAMS_TOTAL,
        idle_s=s.stream_idle_s,
    )
    threads = 2 * fd.num_clients + 8 + PENDING_STREAMS_TOTAL + 8
    server, port = make_server(listen, security, max_workers=threads)
    add_service(server, broker, guard)
    bulk = _bulk_server(broker, listen, security, guard, s, max_connections=threads)
    # secure aggregation: the coordinator routes the protocol's messages and unmasks only sums
    algorithm, secagg = bind_coordinator(
        algorithm, broker, template, s.deadline_s, committed=db.completed_rounds()
    )
    checkpointer = SQLiteCheckpointer(db)
    attempts: list[RoundRow] = []

    def on_round(row: RoundRow, rtts: list[RttRow]) -> None:
        attempts.append(row)
        db.stage_rtt(rtts)

    executor = RemoteExecutor(
        broker,
        num_clients=fd.num_clients,
        settings=s,
        update_template=template,
        on_round=on_round,
        round_hook=secagg,
    )
    for past in db.rtt_rows():  # after a restart, straggler estimates continue where they were
        executor.stragglers.observe(past.client_id, past.rtt_s, past.work_fraction)
    accuracies: list[float] = []
    losses: list[float] = []

    def commit(record: RoundRecord, params: Params) -> None:
        acc = record.central.accuracy if record.central is not None else None
        if record.central is not None:
            accuracies.append(record.central.accuracy)
            losses.append(record.central.loss)
        for row in attempts:
            last = row is attempts[-1]
            db.stage_round(
                RoundRow(
                    round=row.round, attempt=row.attempt,
                    # an aggregation that aborted (secure aggregation below its threshold)
                    committed=row.committed and last and record.committed,
                    cohort=row.cohort, accepted=row.accepted, dropped=row.dropped,
                    train_loss=record.train_loss if last else None,
                    accuracy=acc if last else None, bytes_up=row.bytes_up,
                    bytes_down=row.bytes_down, wall_s=row.wall_s,
                )
            )  # fmt: skip
        attempts.clear()
        recorder.record(record, executor.last_evals if record.federated is not None else ())
        if not record.committed:  # decided (skipped): counted, so a restart does not re-run it
            checkpointer.skip(record.round + 1)
        # a committed round's rows commit with its checkpoint, right after this callback
        log.info(
            "round %d %s: %d clients, loss %.4f, accuracy %s",
            record.round,
            "committed" if record.committed else "aborted",
            len(record.clients),
            record.train_loss,
            "-" if acc is None else f"{acc:.4f}",
        )

    server.start()
    if bulk is not None:
        bulk.start()
    log.info("coordinator %s listening on port %d (run %s)", listen, port, run_id)
    if on_listening is not None:
        on_listening(port)
    try:
        if min_workers > 0:
            everyone = {str(c) for c in range(fd.num_clients)}
            broker.wait_for_clients(everyone, min_workers, s.select_timeout_s)
        # data sizes as the workers reported them (none until every client has registered)
        population = Population(fd.num_clients, broker.data_sizes(fd.num_clients))
        result = run(
            algorithm,
            executor,
            init,
            RunConfig(
                rounds=exp.rounds,
                clients_per_round=exp.cohort_size(fd.num_clients),
                seed=exp.seed,
                eval_every=exp.eval_every,
                federated_eval_every=exp.federated_eval_every,
            ),
            evaluator=central_evaluator(model, ds.test.x, ds.test.y),
            sampler=exp.sampler,
            population=population,
            callbacks=[commit, *callbacks],
            checkpointer=checkpointer,
            probes=probes,
            stop=stop,
        )
    except BaseException as exc:
        # The coordinator's own error: workers are *not* told to shut down, so that the
        # operator's restart (same --out) finds them waiting (they retry for their outage window).
        recorder.fail(f"{type(exc).__name__}: {exc}")
        _stop(server, bulk, guard)
        raise
    broker.shutdown(grace_s=shutdown_grace_s)
    _stop(server, bulk, guard)
    rows = db.round_rows()
    db.close()
    all_acc = [r.accuracy for r in rows if r.accuracy is not None]
    target = exp.target_accuracy
    reached = [r.round + 1 for r in rows if target is not None and (r.accuracy or 0.0) >= target]
    committed = sum(1 for r in rows if r.committed)
    decided = len({r.round for r in rows})
    expected = exp.rounds if result.stopped is None else decided
    summary = Summary(
        run_id=results_run_id,
        name=exp.name,
        status=(
            "completed"
            if committed == expected
            else ("partial" if committed else "no_rounds_committed")
        ),
        rounds=exp.rounds,
        final_accuracy=accuracies[-1] if accuracies else (all_acc[-1] if all_acc else None),
        best_accuracy=max(all_acc) if all_acc else None,
        rounds_to_target=min(reached) if reached else None,
        target_accuracy=target,
        final_loss=losses[-1] if losses else None,
        wall_seconds=time.perf_counter() - t0,
        bytes_up=sum(r.bytes_up for r in rows),
        bytes_down=sum(r.bytes_down for r in rows),
        model_sha256=sha256(result.params),
        committed_rounds=committed,
        start_round=result.start_round,
        deployment_id=run_id,
        stopped=result.stopped,
    )
    recorder.finish(summary)
    return summary


def _bulk_server(
    broker: Broker,
    listen: str,
    security: Security,
    guard: StreamGuard,
    settings: DeploySettings,
    *,
    max_connections: int,
) -> BulkServer | None:
    """The bulk result channel on the listen host, its port told to registering workers (None
    with ``[deploy] bulk = false``)."""
    if not settings.bulk:
        return None
    host, _ = split_address(listen)
    tls = server_ssl_context(security.cert_dir) if security.cert_dir is not None else None
    bulk = BulkServer(
        broker,
        host=host,
        port=settings.bulk_port,
        guard=guard,
        tls=tls,
        max_connections=max_connections,
    )
    broker.bulk_port = bulk.port
    log.info("bulk result channel on port %d", bulk.port)
    return bulk


def _stop(server: grpc.Server, bulk: BulkServer | None, guard: StreamGuard) -> None:
    server.stop(grace=1.0)
    if bulk is not None:
        bulk.close()
    guard.close()

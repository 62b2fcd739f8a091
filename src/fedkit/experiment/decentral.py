"""``fedkit decentral FILE``: decentralised (serverless) experiments from a TOML file.

The file has ``[data]`` (its ``num_clients`` clients are the nodes), ``[model]`` and
``[decentral]`` (:class:`fedkit.decentral.dpsgd.DecentralSpec`, with ``[decentral.local]`` the
nodes' :class:`~fedkit.local.LocalTraining`), an optional ``[study]`` ``name``, and optional
``[[arms]]``: each arm has a ``name`` and keys that override the base (``decentral.topology =
"torus"``). Every run is recorded in ``OUT/results.sqlite`` like ``fedkit run``'s: one row per
gossip round whose ``details`` hold ``consensus_distance`` and ``bytes_per_node``, and whose
``bytes_up`` is what all nodes sent; the test columns score the averaged model ``x̄``.

The same file runs in one process (every node simulated) or under ``torchrun`` with one rank per
node (``--nproc-per-node`` = the number of nodes), gossiping over gloo send/recv
(:mod:`fedkit.decentral.ranks`); rank 0 records.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from fedkit.algorithm import ClientData
from fedkit.data.spec import DataSpec, build_federated
from fedkit.data.store import ClientStore
from fedkit.decentral.dpsgd import DecentralResult, DecentralSpec, RoundMetrics, run_dpsgd
from fedkit.experiment.arms import expand_arms, read_toml
from fedkit.experiment.config import ModelSettings, parse_overrides
from fedkit.experiment.progress import RunProgress
from fedkit.experiment.records import finite
from fedkit.experiment.results import ResultsStore, RoundRow, RunSummary
from fedkit.experiment.tables import ConfigError, construct
from fedkit.models.spec import ModelSpec
from fedkit.params import Params, model_params, nbytes, sha256
from fedkit.run import Evaluator, central_evaluator

__all__ = ["DecentralExperiment", "load_decentral", "run_decentral"]

SECTIONS = ("data", "model", "decentral")


@dataclasses.dataclass(frozen=True)
class DecentralExperiment:
    """One decentralised run, validated.

    Attributes:
        name: the run's (arm's) name.
        study: the study's name.
        data: the ``[data]`` section (its clients are the nodes).
        model: the ``[model]`` section.
        spec: the ``[decentral]`` section.
        source: the resolved file (recorded as the run's config).
    """

    name: str
    study: str
    data: DataSpec
    model: ModelSettings
    spec: DecentralSpec
    source: Mapping[str, Any]


def _check_graph(spec: DecentralSpec, n: int) -> None:
    """The topology must exist on ``n`` nodes (a torus needs a square number, ...)."""
    try:
        spec.schedule(n)
    except ValueError as e:
        raise ConfigError(f"decentral: {e} (the nodes are the data's {n} clients)") from e


def _one(doc: Mapping[str, Any], name: str, study: str) -> DecentralExperiment:
    for key in ("data", "model", "decentral"):
        if not isinstance(doc.get(key), Mapping):
            raise ConfigError(f"a decentral experiment needs a [{key}] table")
    try:
        data = DataSpec.from_mapping(doc["data"])
    except ValueError as e:
        raise ConfigError(f"data: {e}") from e
    model = ModelSettings.from_mapping(doc["model"])
    spec = construct(DecentralSpec, doc["decentral"], "decentral")
    if data.num_clients is not None:
        _check_graph(spec, data.num_clients)
    return DecentralExperiment(name, study, data, model, spec, doc)


def experiments_from_mapping(
    doc: Mapping[str, Any], *, default_name: str, overrides: Mapping[str, Any] | None = None
) -> list[DecentralExperiment]:
    """Every run a file describes (one per ``[[arms]]`` entry, else one), validated."""
    runs = expand_arms(doc, SECTIONS, default_name=default_name, overrides=overrides)
    return [_one(d, name, study) for name, study, d in runs]


def load_decentral(path: str | Path, overrides: Sequence[str] = ()) -> list[DecentralExperiment]:
    """Read and validate a decentral experiment file (``--set`` items applied last)."""
    return experiments_from_mapping(
        read_toml(path), default_name=Path(path).stem, overrides=parse_overrides(list(overrides))
    )


@dataclasses.dataclass(frozen=True)
class Prepared:
    """What every process (or rank) builds from an experiment."""

    model_spec: ModelSpec
    init: Params
    nodes: list[ClientData]
    evaluator: Evaluator


def prepare(exp: DecentralExperiment, data_root: Path | None) -> Prepared:
    """The nodes' data, the initial model and the averaged model's evaluator (on the
    dataset's test split: for FEMNIST every writer's test images, not only the nodes')."""
    from fedkit.experiment.runner import model_init_seed

    try:
        fd = build_federated(exp.data, root=data_root)
    except ValueError as e:
        raise ConfigError(f"data: {e}") from e
    store = ClientStore.from_federated(fd)
    _check_graph(exp.spec, store.num_clients)
    spec = ModelSpec(
        name=exp.model.name,
        num_classes=fd.dataset.num_classes,
        input_shape=tuple(fd.dataset.input_shape),
        options=dict(exp.model.options),
        init_seed=model_init_seed(exp.spec.seed),
    )
    test = fd.dataset.test
    return Prepared(
        model_spec=spec,
        init=model_params(spec.build()),
        nodes=[store.data(i) for i in range(store.num_clients)],
        evaluator=central_evaluator(spec.build(), test.x, test.y),
    )


def _row(m: RoundMetrics, n: int, model_bytes: int) -> RoundRow:
    return RoundRow(
        round=m.round,
        train_loss=finite(m.train_loss),
        test_loss=finite(m.test_loss),
        test_accuracy=finite(m.test_accuracy),
        fed_mean=None,
        fed_p10=None,
        fed_var=None,
        fed_min=None,
        fed_clients=None,
        cohort_size=n,
        dropped=0,
        bytes_up=round(m.bytes_per_node * n),
        bytes_down=0,
        wall_seconds=m.wall_seconds,
        sim_seconds=None,
        committed=True,
        details={
            "consensus_distance": m.consensus_distance,
            "bytes_per_node": m.bytes_per_node,
            "model_bytes": model_bytes,
        },
    )


def run_decentral(
    exp: DecentralExperiment,
    store: ResultsStore | None,
    *,
    data_root: Path | None = None,
    progress: RunProgress | None = None,
    on_ranks: bool = False,
) -> tuple[int, RunSummary | None]:
    """Run ``exp`` (simulated, or this rank's node under torchrun) and record it.

    Args:
        exp: the experiment.
        store: where rank 0 (or the single process) records; ``None`` on other ranks.
        data_root: the data directory.
        progress: a progress bar (rank 0).
        on_ranks: run this rank's node inside an initialised gloo group.

    Returns:
        The run id (-1 on a rank other than 0) and its summary (``None`` off rank 0).
    """
    t0 = time.perf_counter()
    prep = prepare(exp, data_root)
    n = len(prep.nodes)
    rank = 0
    if on_ranks:
        import torch.distributed as dist

        rank = dist.get_rank()
        if exp.spec.asynchronous:
            raise ConfigError("decentral.asynchronous runs in the simulator only, not on ranks")
        if dist.get_world_size() != n:
            raise ConfigError(
                f"decentral: {n} nodes (data.num_clients) but {dist.get_world_size()} ranks; "
                "launch one rank per node"
            )
    run_id = -1
    if rank == 0:
        if store is None:
            raise ValueError("rank 0 needs a results store")
        run_id = store.start_run(name=exp.name, study=exp.study, config=dict(exp.source))
    if progress is not None and rank == 0:
        progress.start_run(exp.name, exp.spec.rounds)
    accs: list[float] = []
    tally = {"bytes": 0}

    def record(m: RoundMetrics) -> None:
        row = _row(m, n, nbytes(prep.init))
        assert store is not None
        store.add_round(run_id, row)
        tally["bytes"] += row.bytes_up
        if not math.isnan(m.test_accuracy):
            accs.append(m.test_accuracy)
        if progress is not None:
            acc = None if math.isnan(m.test_accuracy) else m.test_accuracy
            progress.update(m.round + 1, loss=finite(m.train_loss), accuracy=acc)

    try:
        if on_ranks:
            from fedkit.decentral.ranks import run_rank

            _, final, history = run_rank(
                exp.spec,
                prep.model_spec.build(),
                prep.init,
                prep.nodes[rank],
                evaluator=prep.evaluator if rank == 0 else None,
                callback=record if rank == 0 else None,
            )
            if rank != 0:
                return -1, None
            last = history[-1]
        else:
            from fedkit.decentral.async_gossip import run_async_gossip

            simulate = run_async_gossip if exp.spec.asynchronous else run_dpsgd
            result: DecentralResult = simulate(
                exp.spec,
                prep.model_spec.build(),
                prep.init,
                prep.nodes,
                evaluator=prep.evaluator,
                callback=record,
            )
            final, last = result.averaged, result.history[-1]
        summary = RunSummary(
            rounds=exp.spec.rounds,
            final_accuracy=finite(last.test_accuracy),
            best_accuracy=max(accs) if accs else None,
            rounds_to_target=None,
            target_accuracy=None,
            wall_seconds=time.perf_counter() - t0,
            bytes_up=tally["bytes"],
            bytes_down=0,
            model_sha256=sha256(final),
            final_loss=finite(last.test_loss),
            metrics={
                "consensus_distance": last.consensus_distance,
                "bytes_per_node": last.bytes_per_node,
            },
        )
    except Exception as e:
        if store is not None and rank == 0:
            store.fail_run(run_id, f"{type(e).__name__}: {e}")
            if progress is not None:
                progress.end_run("failed")
        raise
    assert store is not None
    store.finish_run(run_id, summary)
    if progress is not None:
        progress.end_run("completed")
    return run_id, summary


def accuracy_at_bytes(rounds: Sequence[RoundRow], budget: float) -> float | None:
    """The test accuracy of the last evaluated round whose cumulative bytes per node (the
    rounds' ``details["bytes_per_node"]`` summed) is at most ``budget``; ``None`` if none."""
    sent, best = 0.0, None
    for r in rounds:
        per_node = float((r.details or {}).get("bytes_per_node", 0.0))
        sent += per_node
        if sent > budget:
            break
        if r.test_accuracy is not None:
            best = r.test_accuracy
    return best


def equal_bytes_table(store: ResultsStore, study: str, budgets_in_models: Sequence[float]) -> str:
    """A Markdown table of a study's completed runs: accuracy of ``x̄`` at equal bytes sent per
    node (budgets in model sizes), final accuracy, final consensus distance, models per round."""
    head = [f"acc @ {b:g} models/node" for b in budgets_in_models]
    lines = [
        "| arm | " + " | ".join(head) + " | final acc | rounds | models/node/round | consensus |",
        "|---|" + "---:|" * (len(head) + 4),
    ]

    def fmt(v: float | None) -> str:
        return "—" if v is None else f"{v:.3f}"

    for run in store.runs(study=study, status="completed"):
        rounds = store.rounds(run.id)
        first = (rounds[0].details or {}) if rounds else {}
        model_bytes = float(first.get("model_bytes", 0.0)) or 1.0
        per_round = float(first.get("bytes_per_node", 0.0)) / model_bytes
        cells = [fmt(accuracy_at_bytes(rounds, b * model_bytes)) for b in budgets_in_models]
        s = run.summary
        consensus = (s.metrics or {}).get("consensus_distance") if s is not None else None
        lines.append(
            f"| {run.name} | "
            + " | ".join(cells)
            + f" | {fmt(None if s is None else s.final_accuracy)} | {len(rounds)} | "
            + f"{per_round:.3g} | {fmt(consensus)} |"
        )
    return "\n".join(lines)

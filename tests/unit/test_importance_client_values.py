"""The importance-corrected mean's per-client values (π_k, W): given by the server's resolved
chain, carried with a deployment task, checked by the worker, and resolving the worker's own
chain so that its client scales its update exactly as the simulator's does.

Horvitz–Thompson factor (fedkit.samplers.importance): a client with weight w_k, inclusion
probability π_k and population weight W sends w_k Δ_k / (π_k W).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fedkit.aggregate import (
    AggContext,
    AggStateError,
    WeightedMean,
    client_value_names,
    client_values,
    with_client_values,
)
from fedkit.algorithm import RoundInfo
from fedkit.client import prepared_template, run_client
from fedkit.experiment.deploy import load_deployment
from fedkit.net.client import Task
from fedkit.net.codec import decode
from fedkit.net.errors import ErrorCode, NetError
from fedkit.net.payload import encode_tree, info_metadata, task_aggregator
from fedkit.net.proto import fedkit_pb2 as pb
from fedkit.net.worker import Worker, load_local_data
from fedkit.params import model_params, tree_flatten
from fedkit.privacy.clip import ClipNorm
from fedkit.samplers.importance import (
    INCLUSION,
    TOTAL_WEIGHT,
    ImportanceWeighted,
    InclusionError,
    with_inclusion,
)
from fedkit.sampling import Population

Agg = ImportanceWeighted[dict[str, torch.Tensor]]
RESOLVED = Agg(inclusion=(0.5, 0.25, 1.0), total_weight=8.0)


def _ctx(client: int) -> AggContext:
    return AggContext(round=0, seed=0, client_id=client)


def test_server_gives_each_client_its_probability_and_the_total_weight() -> None:
    assert client_values(RESOLVED, 1) == ((INCLUSION, 0.25), (TOTAL_WEIGHT, 8.0))
    chain = ClipNorm(max_norm=1.0, inner=RESOLVED)  # found under another stage
    assert client_values(chain, 2) == ((INCLUSION, 1.0), (TOTAL_WEIGHT, 8.0))
    assert client_value_names(chain) == (INCLUSION, TOTAL_WEIGHT)
    assert client_values(WeightedMean(), 0) == ()  # most chains take none
    with pytest.raises(InclusionError, match="not given the sampler's inclusion"):
        client_values(Agg(), 0)  # an unresolved aggregator has nothing to give
    with pytest.raises(InclusionError, match="client 3 has no inclusion"):
        client_values(RESOLVED, 3)


def test_worker_chain_resolved_for_one_client_scales_by_the_ht_factor() -> None:
    # client 1: π = 0.25, W = 8, weight 3 → factor 3 / (0.25 · 8) = 1.5; update 2 → 3
    worker_chain = ClipNorm(max_norm=100.0, inner=Agg())
    got = task_aggregator(worker_chain, 1, [(INCLUSION, 0.25), (TOTAL_WEIGHT, 8.0)])
    assert isinstance(got, ClipNorm) and isinstance(got.inner, ImportanceWeighted)
    assert got.inner.inclusion == (0.25,) and got.inner.first_client == 1
    out = got.prepare({"w": torch.tensor([2.0])}, 3.0, _ctx(1))
    assert out["w"].tolist() == [3.0]
    with pytest.raises(InclusionError, match="client 0 has no inclusion"):
        got.inner.factor(0, 1.0)  # it holds this client's probability only


def test_chain_without_client_values_is_returned_as_it_is() -> None:
    chain = ClipNorm(max_norm=1.0)
    assert task_aggregator(chain, 4, []) is chain


@pytest.mark.parametrize(
    ("values", "match"),
    [
        ([(INCLUSION, math.nan), (TOTAL_WEIGHT, 8.0)], "not finite"),
        ([(INCLUSION, math.inf), (TOTAL_WEIGHT, 8.0)], "not finite"),
        ([(INCLUSION, 0.0), (TOTAL_WEIGHT, 8.0)], r"in \(0, 1\]"),
        ([(INCLUSION, -0.25), (TOTAL_WEIGHT, 8.0)], r"in \(0, 1\]"),
        ([(INCLUSION, 1.0000001), (TOTAL_WEIGHT, 8.0)], r"in \(0, 1\]"),
        ([(INCLUSION, 0.5), (TOTAL_WEIGHT, 0.0)], "total_weight must be > 0"),
        ([(INCLUSION, 0.5), (TOTAL_WEIGHT, -1.0)], "total_weight must be a finite number"),
        ([(INCLUSION, 0.5), (TOTAL_WEIGHT, math.inf)], "not finite"),
        ([(INCLUSION, 0.5)], "this chain takes"),  # W missing
        ([], "this chain takes"),  # both missing
        ([(TOTAL_WEIGHT, 8.0), (INCLUSION, 0.5)], "this chain takes"),  # out of order
        ([(INCLUSION, 0.5), (TOTAL_WEIGHT, 8.0), ("extra", 1.0)], "this chain takes"),
        ([(INCLUSION, 0.5), (INCLUSION, 0.5)], "names repeat"),
        ([("1bad", 0.5), (TOTAL_WEIGHT, 8.0)], "not a valid name"),
        ([(INCLUSION, 0.5), (TOTAL_WEIGHT, 8.0)] + [(f"x{i}", 1.0) for i in range(63)], "at most"),
    ],
    ids=[
        "pi-nan", "pi-inf", "pi-zero", "pi-negative", "pi-above-one", "w-zero", "w-negative",
        "w-inf", "w-missing", "all-missing", "order", "extra-name", "repeated", "bad-name",
        "too-many",
    ],
)  # fmt: skip
def test_hostile_client_values_are_refused_as_malformed(
    values: list[tuple[str, float]], match: str
) -> None:
    with pytest.raises(NetError, match=match) as err:
        task_aggregator(ClipNorm(max_norm=1.0, inner=Agg()), 0, values)
    assert err.value.code == ErrorCode.MALFORMED


def test_values_sent_to_a_chain_that_takes_none_are_refused() -> None:
    with pytest.raises(NetError, match=r"this chain takes \[\]") as err:
        task_aggregator(WeightedMean(), 0, [(INCLUSION, 0.5), (TOTAL_WEIGHT, 8.0)])
    assert err.value.code == ErrorCode.MALFORMED


def test_generic_resolution_checks_the_names_before_any_stage() -> None:
    with pytest.raises(AggStateError, match="this chain takes"):
        with_client_values(Agg(), 0, ((TOTAL_WEIGHT, 1.0),))


@settings(max_examples=60, deadline=None)
@given(
    pi=st.lists(st.floats(1e-3, 1.0), min_size=1, max_size=6),
    total=st.floats(1e-3, 1e6),
    weight=st.floats(0.0, 1e3),
    data=st.data(),
)
def test_values_round_trip_to_the_servers_factor(
    pi: list[float], total: float, weight: float, data: st.DataObject
) -> None:
    # What the worker's chain, resolved from the values the server's chain gives for client k,
    # sends is bit-identical to what the server's chain itself would (w_k / (π_k W) · Δ).
    server = Agg(inclusion=tuple(pi), total_weight=total)
    k = data.draw(st.integers(0, len(pi) - 1))
    worker = task_aggregator(Agg(), k, list(client_values(server, k)))
    update = {"w": torch.tensor([1.0, -3.0, 0.5])}
    want = server.prepare(update, weight, _ctx(k))["w"]
    got = worker.prepare(update, weight, _ctx(k))["w"]
    assert torch.equal(got, want)
    assert worker.factor(k, weight) == weight / (pi[k] * total)


def test_prepared_template_needs_no_resolved_chain() -> None:
    # the coordinator builds its update template before the run loop resolves π and W
    chain = ClipNorm(max_norm=1.0, inner=Agg())
    agg = with_client_values(chain, -1, ((INCLUSION, 1.0), (TOTAL_WEIGHT, 1.0)))
    out = agg.prepare({"w": torch.ones(2)}, 1.0, _ctx(-1))
    assert out["w"].dtype == torch.float64 and out["w"].shape == (2,)


EXPERIMENT = """
[data]
dataset = "synthetic"
partition = "natural"
num_clients = 4

[model]
name = "logreg"

[algorithm]
name = "fedavg"

[algorithm.local]
steps = 2

[sampler]
name = "probability"
law = "power"
exponent = 1.0

[aggregator]
name = "importance"

[run]
rounds = 1
clients_per_round = 2
seed = 5
"""


class _Pushes:
    def __init__(self) -> None:
        self.pushed: list[bytes] = []

    def push_result(self, task: Task, payload: bytes, *, compute_s: float) -> None:
        self.pushed.append(payload)


def _task(worker: Worker, values: tuple[tuple[str, float], ...]) -> Task:
    info = RoundInfo(round=0, seed=worker.exp.seed, num_clients=4, cohort_size=2)
    return Task(kind=pb.TRAIN, run_id="r", round=0, task_id="t0", client_id="2",
                work_fraction=1.0, deadline_s=10.0, client_values=values,
                payload=encode_tree(worker.msg_template, info_metadata(info)))  # fmt: skip


def test_worker_refuses_bad_values_then_sends_the_simulators_update(tmp_path: Path) -> None:
    path = tmp_path / "exp.toml"
    path.write_text(EXPERIMENT)
    exp = load_deployment(path)
    local = load_local_data(exp, [2, 3], None)
    client = _Pushes()
    worker = Worker(exp, local=local, client=client)  # type: ignore[arg-type]
    # the coordinator's chain, resolved by the run loop from the sampler (π_k ∝ 1/(k+1), m = 2)
    sizes = tuple(local.clients[c].num_examples if c in local.clients else 1 for c in range(4))
    info = RoundInfo(round=0, seed=exp.seed, num_clients=4, cohort_size=2)
    server_alg: Any = with_inclusion(exp.algorithm, exp.sampler, Population(4, sizes), 2, info)
    values = client_values(server_alg.aggregator, 2)
    pi2 = dict(values)[INCLUSION]
    # p = (1, 1/2, 1/3, 1/4), Σ = 25/12; π_2 = 2 · (1/3) / (25/12) = 8/25 (no capping: max 24/25)
    assert pi2 == pytest.approx(8 / 25, rel=1e-12)
    assert dict(values)[TOTAL_WEIGHT] == float(sum(sizes))

    worker._train(_task(worker, ((INCLUSION, math.nan), (TOTAL_WEIGHT, 1.0))))
    worker._train(_task(worker, ()))
    assert client.pushed == [] and worker.rounds_done == 0  # refused; the worker serves on

    worker._train(_task(worker, values))
    assert worker.rounds_done == 1
    got = decode(client.pushed[0]).tensors

    class Host:  # the simulator's client core on the same data, with the server's chain
        def data(self, c: int) -> Any:
            return local.clients[c]

        def get_state(self, c: int) -> Any:
            return None

        def set_state(self, c: int, s: Any) -> None:
            pass

    ref = run_client(server_alg, Host(), worker.model, worker.msg_template, 2, info)
    assert ref is not None
    want = tree_flatten(ref.update)
    assert set(got) == set(want) and all(torch.equal(got[k], want[k]) for k in want)
    # and the factor was applied: the plain (unscaled) update differs by w / (π W) ≠ 1
    w = ref.weight
    assert w / (pi2 * float(sum(sizes))) != pytest.approx(1.0)
    template = prepared_template(server_alg, model_params(worker.model), exp.seed)
    assert set(tree_flatten(template)) == set(want)

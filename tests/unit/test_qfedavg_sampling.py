"""q-FedAvg with the paper's client sampling is expressible without new code: the
``proportional`` sampler (client ``k`` included with probability ``π_k = m p_k``, ``p_k = n_k/n``)
and q-FedAvg's own uniform aggregation (weight 1 per client, step ``w − Σ_S Δ_k / Σ_S h_k``) —
Li et al. 2020, "Fair Resource Allocation in Federated Learning", Algorithm 2 and the authors'
``select_clients(..., pk)`` ("weighted sampling + simple average", without replacement).
"""

from __future__ import annotations

import tomllib

import pytest
import torch

from fedkit.algorithm import RoundInfo
from fedkit.algorithms.fedavg import ModelMessage
from fedkit.algorithms.qfedavg import QFedAvg
from fedkit.client import client_context, client_update
from fedkit.experiment.config import study_from_mapping
from fedkit.local import LocalTraining
from fedkit.params import model_params
from fedkit.run import RunConfig, run
from fedkit.samplers.probability import ProbabilitySampler
from fedkit.sampling import Population
from fedkit.sim.serial import SerialExecutor
from tests.helpers.toy import toy_clients, toy_model, toy_store

# toy clients have 20 + 7k training examples: (20, 27, 34, 41, 48, 55), n = 225
SIZES = (20, 27, 34, 41, 48, 55)
POP = Population(6, num_examples=SIZES)


def test_inclusion_is_m_times_the_data_share() -> None:
    # m = 2: π_k = 2 n_k / 225, e.g. 40/225 = 0.17778 and 110/225 = 0.48889 (none capped)
    assert tuple(len(c.y_train) for c in toy_clients(6)) == SIZES
    info = RoundInfo(round=0, seed=0, num_clients=6, cohort_size=2)
    pi = ProbabilitySampler(law="size").inclusion(POP, 2, info)
    assert pi == pytest.approx([2 * n / 225 for n in SIZES])
    # and the draws hit those frequencies (2000 rounds; binomial s.e. <= 0.012)
    s = ProbabilitySampler(law="size")
    hits = torch.zeros(6)
    for r in range(2000):
        for k in s.select(POP, 2, RoundInfo(round=r, seed=3, num_clients=6, cohort_size=2)):
            hits[k] += 1
    assert (hits / 2000).tolist() == pytest.approx(pi, abs=0.04)


def test_q_fedavg_with_proportional_sampling_steps_by_the_uniform_ratio_of_sums() -> None:
    local = LocalTraining(lr=0.1, epochs=1, batch_size=8)
    alg = QFedAvg(local=local, q=1.0)
    cfg = RunConfig(rounds=3, clients_per_round=2, seed=5, eval_every=0)
    sampler = ProbabilitySampler(law="size")
    params = model_params(toy_model())
    res = run(
        alg,
        SerialExecutor(toy_store(6), toy_model()),
        params,
        cfg,
        sampler=sampler,
        population=POP,
    )
    data = toy_clients(6)
    w = {k: v.clone() for k, v in params.items()}
    for rec in res.history:
        info = RoundInfo(round=rec.round, seed=5, num_clients=6, cohort_size=2)
        assert list(rec.cohort) == sampler.select(POP, 2, info)
        deltas, hs = [], []
        for cid in rec.cohort:
            ctx = client_context(toy_model(), cid, info)
            out = client_update(alg, ctx, ModelMessage(w), data[cid], None)
            assert out.weight == 1.0  # simple (uniform) average, as the paper with p_k sampling
            deltas.append(out.update.delta)
            hs.append(float(out.update.h))
        w = {k: w[k] - sum(d[k] for d in deltas) / sum(hs) for k in w}
    for k in w:
        torch.testing.assert_close(res.params[k], w[k], rtol=1e-5, atol=1e-6)


def test_the_experiment_file_lines_build_that_pair() -> None:
    doc = tomllib.loads(
        """
        [data]
        dataset = "synthetic"
        partition = "natural"
        alpha = 1.0
        beta = 1.0
        [data.options]
        num_users = 10
        [model]
        name = "logreg"
        [algorithm]
        name = "qfedavg"
        q = 1.0
        [algorithm.local]
        lr = 0.02
        [sampler]
        name = "proportional"
        [run]
        rounds = 1
        clients_per_round = 3
        """
    )
    (cfg,) = study_from_mapping(doc, default_name="q").runs
    assert cfg.sampler == ProbabilitySampler(law="size")
    assert isinstance(cfg.algorithm.algorithm, QFedAvg)

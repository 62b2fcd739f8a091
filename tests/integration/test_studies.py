"""The course-project studies (examples/study_*.toml): each loads with a one-round override and
compares what it says it compares; the sampler study (generated data) runs end to end for one
round, and the FedSeq study's arms train the same number of clients per round."""

from __future__ import annotations

from pathlib import Path

import pytest

from fedkit.experiment.config import load_study
from fedkit.experiment.results import ResultsStore, results_path
from fedkit.experiment.runner import run_study
from fedkit.samplers.availability import AvailabilityAware
from fedkit.samplers.power_of_choice import PowerOfChoice
from fedkit.samplers.probability import ProbabilitySampler
from fedkit.sampling import UniformSampler

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
STUDIES = sorted(EXAMPLES.glob("study_*.toml"))
ONE_ROUND = ["run.rounds=1", "run.eval_every=1"]


def test_every_study_of_the_course_project_is_there() -> None:
    assert {p.stem for p in STUDIES} == {
        "study_central_baselines",
        "study_participation_local_steps",
        "study_heterogeneity",
        "study_architectures",
        "study_samplers",
        "study_fedseq",
    }


@pytest.mark.parametrize("path", STUDIES, ids=lambda p: p.stem)
def test_study_loads_with_one_round(path: Path) -> None:
    study = load_study(path, ONE_ROUND)
    assert study.runs and all(r.run.rounds == 1 for r in study.runs)
    text = path.read_text(encoding="utf-8")
    assert f"fedkit run examples/{path.name}" in text and "fedkit report runs/" in text


def test_central_baselines_cover_cifar100_and_shakespeare() -> None:
    study = load_study(EXAMPLES / "study_central_baselines.toml", ONE_ROUND)
    assert {(r.data.dataset, r.model.name) for r in study.runs} == {
        ("cifar100", "lenet5"),
        ("shakespeare", "char_lstm"),
    }
    assert all(r.algorithm is not None and not r.algorithm.federated for r in study.runs)


def test_participation_study_is_a_grid_of_fraction_and_steps() -> None:
    study = load_study(EXAMPLES / "study_participation_local_steps.toml", ONE_ROUND)
    points = {
        (r.run.client_fraction, r.algorithm.algorithm.local.steps)
        for r in study.runs
        if r.algorithm is not None
    }
    assert points == {(c, j) for c in (0.05, 0.1, 0.2) for j in (4, 8, 16)}


def test_heterogeneity_study_partitions() -> None:
    study = load_study(EXAMPLES / "study_heterogeneity.toml", ONE_ROUND)
    got = [(r.data.partition, r.data.alpha, r.data.shards_per_client) for r in study.runs]
    assert got == [
        ("iid", None, None),
        ("dirichlet", 1.0, None),
        ("dirichlet", 0.5, None),
        ("dirichlet", 0.1, None),
        ("shards", None, 2),
    ]


def test_architecture_study_pairs_every_model_with_iid_and_skewed_clients() -> None:
    study = load_study(EXAMPLES / "study_architectures.toml", ONE_ROUND)
    arms = {(r.model.name, r.algorithm.name, r.data.partition) for r in study.runs if r.algorithm}
    models = {
        ("lenet5", "fedavg"),
        ("resnet18_gn", "fedavg"),
        ("resnet18_bn", "fedavg"),
        ("resnet18_bn", "fedbn"),
        ("vit_tiny", "fedavg"),
    }
    assert arms == {(m, a, p) for m, a in models for p in ("iid", "dirichlet")}
    # CPU-sized default: every ResNet-18 arm has the ImageNet stem (a tenth of the CIFAR stem's
    # compute), the other models no stem option at all.
    stems = {(r.model.name, r.model.options.get("stem")) for r in study.runs}
    assert stems == {
        ("lenet5", None),
        ("resnet18_gn", "imagenet"),
        ("resnet18_bn", "imagenet"),
        ("vit_tiny", None),
    }
    assert {r.data.alpha for r in study.runs if r.data.partition == "dirichlet"} == {0.1}
    # FedBN's global model carries the untrained BatchNorm layers, so its arms also evaluate every
    # client's personal model (federated evaluation); the FedAvg arms need only the central one.
    fed_eval = {
        (r.algorithm.name if r.algorithm else "", r.run.federated_eval_every) for r in study.runs
    }
    assert fed_eval == {("fedavg", 0), ("fedbn", 10)}


def test_fedseq_study_trains_ten_clients_per_round_in_every_arm() -> None:
    study = load_study(EXAMPLES / "study_fedseq.toml", ONE_ROUND)
    per_round = []
    for r in study.runs:
        assert r.algorithm is not None
        size = getattr(r.algorithm.algorithm, "superclient_size", 1)
        per_round.append(size * (r.run.clients_per_round or 0))
    assert per_round == [10, 10, 10, 10, 10]


def test_sampler_study_runs_one_round_of_every_arm(tmp_path: Path) -> None:
    cheap = [*ONE_ROUND, "algorithm.local.epochs=1", "data.options.num_users=30"]
    study = load_study(EXAMPLES / "study_samplers.toml", cheap)
    assert [r.sampler for r in study.runs] == [
        UniformSampler(),
        AvailabilityAware(),
        ProbabilitySampler(law="size"),
        ProbabilitySampler(law="power", exponent=1.0),
        ProbabilitySampler(law="power", exponent=1.0),
        PowerOfChoice(d=30),
    ]
    assert [type(r.algorithm.algorithm.aggregator).__name__ for r in study.runs if r.algorithm][
        4
    ] == "ImportanceWeighted"
    with ResultsStore(results_path(tmp_path)) as store:
        outcomes = run_study(study, store)
    assert [o.status for o in outcomes] == ["completed"] * 6, [o.error for o in outcomes]

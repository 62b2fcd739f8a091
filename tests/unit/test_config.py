"""Experiment-file parsing and validation: registry-built sections, clear errors naming the dotted
key, old flat keys (moved with a FutureWarning), arms, grids and ``--set`` overrides."""

from __future__ import annotations

import tomllib
import warnings
from pathlib import Path
from typing import Any

import pytest

from fedkit.aggregate import WeightedMean
from fedkit.algorithms import FedAvg, FedProx, FedSGD, Scaffold
from fedkit.centralized import Centralized
from fedkit.experiment.config import (
    ConfigError,
    ExperimentConfig,
    RunSettings,
    load_study,
    parse_overrides,
    study_from_mapping,
)
from fedkit.local import LocalTraining
from fedkit.sampling import UniformSampler
from fedkit.server_opt import SGD, Adagrad, Adam, Yogi

BASE = """
[data]
dataset = "synthetic"
partition = "natural"
alpha = 1.0
beta = 1.0

[model]
name = "logreg"

[algorithm]
name = "fedavg"

[algorithm.local]
lr = 0.05

[run]
rounds = 3
clients_per_round = 5
"""

OLD_BASE = """
[data]
dataset = "synthetic"
partition = "natural"
alpha = 1.0
beta = 1.0

[model]
name = "logreg"

[algorithm]
name = "fedavg"
clients_per_round = 5
lr = 0.05

[run]
rounds = 3
"""


def write(tmp_path: Path, text: str, name: str = "exp.toml") -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


def one(doc: dict[str, Any], **overrides: Any) -> ExperimentConfig:
    """The single run of ``doc`` with dotted-key overrides."""
    (cfg,) = study_from_mapping(doc, default_name="t", overrides=overrides).runs
    return cfg


def quiet_one(doc: dict[str, Any], **overrides: Any) -> ExperimentConfig:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        return one(doc, **overrides)


def test_single_run_defaults_and_types(tmp_path: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the current form warns about nothing
        study = load_study(write(tmp_path, BASE))
    assert study.name == "exp"
    (cfg,) = study.runs
    assert cfg.name == "exp"
    assert cfg.algorithm is not None and cfg.algorithm.name == "fedavg"
    assert cfg.algorithm.algorithm == FedAvg(local=LocalTraining(lr=0.05), server=SGD())
    assert cfg.run.clients_per_round == 5 and cfg.cohort_size(30) == 5
    assert cfg.run.rounds == 3 and cfg.run.executor == "serial" and cfg.run.threads == 1
    assert cfg.sampler == UniformSampler()
    assert cfg.data.dataset == "synthetic" and cfg.data.alpha == 1.0
    m = cfg.to_mapping()
    assert m["algorithm"]["name"] == "fedavg" and m["run"]["rounds"] == 3
    assert m["algorithm"]["local"]["lr"] == 0.05 and m["algorithm"]["server"] == {
        "name": "sgd",
        "lr": 1.0,
        "momentum": 0.0,
    }
    assert "steps" not in m["algorithm"]["local"]  # unset optional keys are left out
    assert m["aggregator"] == {"name": "mean"} and m["sampler"] == {"name": "uniform"}
    assert m["run"]["clients_per_round"] == 5 and "client_fraction" not in m["run"]


def test_malformed_toml_names_line_and_column(tmp_path: Path) -> None:
    p = write(tmp_path, '[data]\ndataset = "synthetic"\n[run\nrounds = 3\n')
    with pytest.raises(ConfigError) as e:
        load_study(p)
    msg = str(e.value)
    assert str(p) in msg and "invalid TOML" in msg
    assert "line 3" in msg and "column" in msg


@pytest.mark.parametrize(
    ("key", "allowed"),
    [
        ("algorithm.learning_rate", "allowed: name, local, server, weighting"),
        ("algorithm.local.learning_rate", "allowed: lr, epochs, steps, batch_size"),
        ("algorithm.server.beta1", "allowed: name, lr, momentum"),  # sgd has no beta1
        ("aggregator.weights", "allowed: name"),
        ("sampler.k", "allowed: name"),
        ("run.round", "allowed: rounds, clients_per_round"),
        ("data.num_client", "allowed"),
        ("model.width", "allowed"),
    ],
)
def test_unknown_key_is_named_with_allowed_keys(key: str, allowed: str) -> None:
    with pytest.raises(ConfigError) as e:
        one(tomllib.loads(BASE), **{key: 3})
    assert key in str(e.value)
    assert allowed in str(e.value)


def test_unknown_section_is_named() -> None:
    doc = tomllib.loads(BASE)
    doc["bogus"] = {"x": 1}
    with pytest.raises(ConfigError, match="'bogus'; allowed: data, model, algorithm"):
        study_from_mapping(doc, default_name="t")


@pytest.mark.parametrize(
    ("key", "value", "needle"),
    [
        ("algorithm.local.lr", -0.1, "algorithm.local.lr must be a finite number > 0, got -0.1"),
        ("algorithm.local.momentum", 1.0, "algorithm.local.momentum must be in [0, 1), got 1.0"),
        ("algorithm.local.epochs", 0, "algorithm.local.epochs must be in [1, 1000000], got 0"),
        ("algorithm.local.epochs", 1.5, "algorithm.local.epochs must be an int; got 1.5"),
        ("algorithm.local.batch_size", True, "algorithm.local.batch_size must be an int"),
        ("algorithm.server.lr", 0, "algorithm.server.lr must be a finite number > 0, got 0.0"),
        ("algorithm.server.momentum", 1.0, "algorithm.server.momentum must be in [0, 1)"),
        ("algorithm.weighting", "size", "algorithm.weighting must be one of examples, uniform"),
        ("algorithm.name", "fedfoo", "algorithm.name: unknown algorithm 'fedfoo'; allowed: fedavg"),
        ("algorithm.server.name", "adamw", "unknown server optimizer 'adamw'; allowed: sgd, adam"),
        ("algorithm.server", 3, "algorithm.server must be a table with a name"),
        (
            "aggregator.name",
            "nope",
            "aggregator.name: unknown aggregator 'nope'; allowed: mean",
        ),
        ("sampler.name", "greedy", "sampler.name: unknown sampler 'greedy'; allowed: uniform"),
        ("run.clients_per_round", 0, "run.clients_per_round must be an int >= 1"),
        ("run.executor", "gpu", "run.executor must be one of serial, processes, vectorized"),
        ("run.target_accuracy", 1.5, "run.target_accuracy must be a finite number in [0.0, 1.0]"),
        ("run.threads", True, "run.threads must be an int; got True"),
        ("data.partition", "random", "data.partition must be one of"),
        ("model.name", "transformer", "model.name must be one of"),
    ],
)
def test_out_of_range_values_name_key_and_allowed(key: str, value: object, needle: str) -> None:
    with pytest.raises(ConfigError) as e:
        one(tomllib.loads(BASE), **{key: value})
    assert needle in str(e.value)


def test_adaptive_server_ranges_are_named_with_the_dotted_key() -> None:
    doc = tomllib.loads(BASE)
    with pytest.raises(ConfigError) as e:
        one(doc, **{"algorithm.name": "fedadam", "algorithm.server.beta1": 1.5})
    assert str(e.value) == "algorithm.server.beta1 must be in [0, 1), got 1.5"
    with pytest.raises(ConfigError, match=r"algorithm\.server\.tau must be a finite number > 0"):
        one(doc, **{"algorithm.name": "fedyogi", "algorithm.server.tau": 0.0})
    with pytest.raises(ConfigError, match=r"algorithm\.mu must be a finite number >= 0"):
        one(doc, **{"algorithm.name": "fedprox", "algorithm.mu": -1.0})


@pytest.mark.parametrize(
    ("name", "server", "expected"),
    [
        ("fedavg", {}, FedAvg(local=LocalTraining(lr=0.05), server=SGD(lr=1.0, momentum=0.0))),
        ("fedavgm", {}, FedAvg(local=LocalTraining(lr=0.05), server=SGD(momentum=0.9))),
        (
            "fedavgm",
            {"lr": 0.5},
            FedAvg(local=LocalTraining(lr=0.05), server=SGD(lr=0.5, momentum=0.9)),
        ),
        ("fedavgm", {"name": "adam"}, FedAvg(local=LocalTraining(lr=0.05), server=Adam())),
        ("fedadam", {"lr": 0.1}, FedAvg(local=LocalTraining(lr=0.05), server=Adam(lr=0.1))),
        ("fedyogi", {"tau": 0.01}, FedAvg(local=LocalTraining(lr=0.05), server=Yogi(tau=0.01))),
        ("fedadagrad", {}, FedAvg(local=LocalTraining(lr=0.05), server=Adagrad(lr=0.01))),
        (
            "fedavg",
            {"name": "yogi", "beta2": 0.9},
            FedAvg(local=LocalTraining(lr=0.05), server=Yogi(beta2=0.9)),
        ),
    ],
)
def test_presets_are_fedavg_with_a_server_optimiser(
    name: str, server: dict[str, object], expected: FedAvg
) -> None:
    doc = tomllib.loads(BASE)
    doc["algorithm"]["name"] = name
    if server:
        doc["algorithm"]["server"] = server
    cfg = one(doc)
    assert cfg.algorithm is not None and cfg.algorithm.algorithm == expected
    assert cfg.algorithm.algorithm.aggregator == WeightedMean()


def test_own_classes_take_their_own_fields() -> None:
    doc = tomllib.loads(BASE)
    prox = one(doc, **{"algorithm.name": "fedprox", "algorithm.mu": 0.2})
    assert prox.algorithm is not None
    assert prox.algorithm.algorithm == FedProx(local=LocalTraining(lr=0.05), mu=0.2)
    scaffold = one(doc, **{"algorithm.name": "scaffold"})
    assert scaffold.algorithm is not None and isinstance(scaffold.algorithm.algorithm, Scaffold)
    assert scaffold.algorithm.algorithm.weighting == "uniform"  # SCAFFOLD's own default
    del doc["algorithm"]["local"]
    sgd = one(doc, **{"algorithm.name": "fedsgd", "algorithm.server.lr": 2.0})
    assert sgd.algorithm is not None and sgd.algorithm.algorithm == FedSGD(server=SGD(lr=2.0))
    central = one(doc, **{"algorithm.name": "centralized", "algorithm.local.lr": 0.3})
    assert central.algorithm is not None and not central.algorithm.federated
    assert central.algorithm.algorithm == Centralized(local=LocalTraining(lr=0.3))
    assert central.to_mapping()["algorithm"] == {
        "name": "centralized",
        "local": {"lr": 0.3, "epochs": 1, "batch_size": 10, "momentum": 0.0, "weight_decay": 0.0},
    }
    assert "aggregator" not in central.to_mapping()


def test_fedsgd_rejects_local_training_settings() -> None:
    with pytest.raises(ConfigError, match="FedSGD's local training is fixed"):
        one(tomllib.loads(BASE), **{"algorithm.name": "fedsgd"})


def test_cohort_larger_than_population_is_rejected() -> None:
    doc = tomllib.loads(BASE)
    doc["data"] = {"dataset": "synthetic", "partition": "iid", "num_clients": 4}
    with pytest.raises(ConfigError, match=r"run\.clients_per_round must be in \[1, 4\]"):
        study_from_mapping(doc, default_name="t")


def test_missing_sections_and_keys() -> None:
    doc = tomllib.loads(BASE)
    del doc["run"]["rounds"]
    with pytest.raises(ConfigError, match=r"run\.rounds"):
        study_from_mapping(doc, default_name="t")
    doc = tomllib.loads(BASE)
    del doc["algorithm"]
    with pytest.raises(ConfigError, match=r"missing section \[algorithm\]"):
        study_from_mapping(doc, default_name="t")
    doc = tomllib.loads(BASE)
    del doc["algorithm"]["name"]
    with pytest.raises(ConfigError, match=r"\[algorithm\] needs 'name', one of fedavg, fedavgm"):
        study_from_mapping(doc, default_name="t")


def test_clients_per_round_and_fraction_are_exclusive_run_policy() -> None:
    with pytest.raises(ConfigError, match="not both"):
        RunSettings(clients_per_round=3, client_fraction=0.1)
    a = RunSettings(client_fraction=0.1)
    # C·N rounded half up, at least 1: 10 of 100, 0.3 -> 1 of 3, 2.5 -> 3 of 25
    assert (a.cohort_size(100), a.cohort_size(3), a.cohort_size(25)) == (10, 1, 3)
    assert RunSettings().cohort_size(7) == 7


# -- old flat keys -------------------------------------------------------------------------------


def test_old_flat_keys_build_the_same_run_with_a_warning_naming_old_and_new(tmp_path: Path) -> None:
    with pytest.warns(FutureWarning) as rec:
        (old,) = load_study(write(tmp_path, OLD_BASE)).runs
    msg = str(rec[0].message)
    assert "algorithm.lr -> algorithm.local.lr" in msg
    assert "algorithm.clients_per_round -> run.clients_per_round" in msg
    (new,) = load_study(write(tmp_path, BASE)).runs
    assert old == new and old.to_mapping() == new.to_mapping()
    assert "lr" not in old.source["algorithm"]  # the recorded source is in the current form


def test_old_keys_map_per_algorithm_as_the_old_builder_did() -> None:
    doc = tomllib.loads(OLD_BASE)
    old = {"server_lr": 0.003, "tau": 0.01, "beta1": 0.5, "server_momentum": 0.7, "mu": 0.4}
    doc["algorithm"].update(name="fedadam", local_epochs=2, batch_size=0, **old)
    with pytest.warns(FutureWarning, match=r"ignored: algorithm\.server_momentum, algorithm\.mu"):
        cfg = one(doc)
    assert cfg.algorithm is not None and cfg.algorithm.algorithm == FedAvg(
        local=LocalTraining(lr=0.05, epochs=2, batch_size=0),
        server=Adam(lr=0.003, beta1=0.5, tau=0.01),
    )
    doc["algorithm"]["name"] = "fedavgm"  # sgd: server_momentum used, beta1/tau ignored
    alg = quiet_one(doc).algorithm
    assert alg is not None and alg.algorithm.server == SGD(lr=0.003, momentum=0.7)
    doc = tomllib.loads(OLD_BASE)
    doc["algorithm"].update(name="fedsgd", lr=0.3, local_epochs=5, batch_size=0)
    alg = quiet_one(doc).algorithm  # fedsgd: lr was the server step; local settings fixed
    assert alg is not None and alg.algorithm == FedSGD(server=SGD(lr=0.3))
    doc["algorithm"].pop("lr")
    alg = quiet_one(doc).algorithm  # the old default lr 0.1
    assert alg is not None and alg.algorithm == FedSGD(server=SGD(lr=0.1))
    doc["algorithm"].update(name="centralized", lr=0.2, server_lr=3.0, weighting="uniform")
    alg = quiet_one(doc).algorithm
    assert alg is not None and alg.algorithm == Centralized(
        local=LocalTraining(lr=0.2, epochs=5, batch_size=0)
    )


def test_old_and_new_spelling_both_set_is_an_error() -> None:
    doc = tomllib.loads(BASE)
    doc["algorithm"]["lr"] = 0.5  # [algorithm.local] lr = 0.05 too
    with pytest.raises(
        ConfigError, match=r"algorithm\.lr \(the old spelling of algorithm\.local\.lr"
    ):
        quiet_one(doc)


def test_errors_in_old_keys_name_the_key_as_written() -> None:
    doc = tomllib.loads(OLD_BASE)
    doc["algorithm"]["lr"] = -1.0
    with pytest.raises(ConfigError, match=r"^algorithm\.lr must be a finite number > 0"):
        quiet_one(doc)
    doc = tomllib.loads(OLD_BASE)
    doc["algorithm"]["clients_per_round"] = 0
    with pytest.raises(ConfigError, match=r"^algorithm\.clients_per_round must be an int >= 1"):
        quiet_one(doc)


@pytest.mark.parametrize("text", [BASE, OLD_BASE], ids=["new-file", "old-file"])
@pytest.mark.parametrize(
    ("key", "value", "get"),
    [
        ("algorithm.local.lr", 0.5, lambda c: c.algorithm.algorithm.local.lr),
        ("algorithm.lr", 0.5, lambda c: c.algorithm.algorithm.local.lr),
        ("algorithm.local_epochs", 4, lambda c: c.algorithm.algorithm.local.epochs),
        ("run.clients_per_round", 2, lambda c: c.run.clients_per_round),
        ("algorithm.clients_per_round", 2, lambda c: c.run.clients_per_round),
        ("algorithm.server.name", "adam", lambda c: type(c.algorithm.algorithm.server).__name__),
        ("aggregator.name", "mean", lambda c: c.algorithm.algorithm.aggregator),
    ],
)
def test_set_accepts_new_and_old_dotted_keys_on_new_and_old_files(
    text: str, key: str, value: object, get: Any
) -> None:
    cfg = quiet_one(tomllib.loads(text), **{key: value})
    expected = {"adam": "Adam", "mean": WeightedMean()}.get(value, value)  # type: ignore[call-overload]
    assert get(cfg) == expected
    if key.endswith("lr"):
        assert cfg.to_mapping()["algorithm"]["local"]["lr"] == 0.5


STUDY = (
    BASE
    + """
[study]
name = "cmp"

[[arms]]
name = "fedavg"

[[arms]]
name = "fedprox"
algorithm.name = "fedprox"
algorithm.mu = 0.1

[[arms]]
name = "central"
algorithm.name = "centralized"
grid = {}

[grid]
"algorithm.local.epochs" = [1, 2, 5]
run.seed = [0, 1]
"""
)

OLD_STUDY = STUDY.replace(BASE, OLD_BASE).replace(
    '"algorithm.local.epochs"', '"algorithm.local_epochs"'
)


@pytest.mark.parametrize(
    ("text", "axis"),
    [(STUDY, "algorithm.local.epochs"), (OLD_STUDY, "algorithm.local_epochs")],
    ids=["new", "old"],
)
def test_arms_and_grid_expand_to_cartesian_product(tmp_path: Path, text: str, axis: str) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        study = load_study(write(tmp_path, text))
    assert study.name == "cmp"
    names = [r.name for r in study.runs]
    assert len(names) == 3 * 2 + 3 * 2 + 1 and len(set(names)) == len(names)
    last = axis.rsplit(".", 1)[-1]
    assert names[0] == f"fedavg[{last}=1,seed=0]"
    assert names[-1] == "central"
    fedprox = [r for r in study.runs if r.name.startswith("fedprox")]
    assert all(r.algorithm is not None and r.algorithm.algorithm.mu == 0.1 for r in fedprox)
    points = {(r.grid_point[axis], r.grid_point["run.seed"]) for r in fedprox}
    assert points == {(e, s) for e in (1, 2, 5) for s in (0, 1)}
    for r in fedprox:
        assert r.algorithm is not None
        assert r.algorithm.algorithm.local.epochs == r.grid_point[axis]
        assert r.run.seed == r.grid_point["run.seed"]
    # the base is not modified by an arm
    fedavg = [r for r in study.runs if r.name.startswith("fedavg")]
    assert all(r.algorithm is not None and r.algorithm.name == "fedavg" for r in fedavg)


@pytest.mark.parametrize("key", ["algorithm.local.epochs", "algorithm.local_epochs"])
def test_set_overrides_apply_last_and_remove_grid_axis(tmp_path: Path, key: str) -> None:
    study = load_study(
        write(tmp_path, STUDY), [f"{key}=3", "run.rounds=7", "data.dataset=synthetic"]
    )
    n_axis = 1 if key == "algorithm.local.epochs" else 3  # an old key does not name the axis
    assert len(study.runs) == 2 * n_axis * 2 + 1
    for r in study.runs:
        assert r.run.rounds == 7
        assert r.algorithm is not None and r.algorithm.algorithm.local.epochs == 3


def test_arm_in_new_form_overrides_an_old_base() -> None:
    doc = tomllib.loads(OLD_BASE)
    doc["arms"] = [
        {"name": "a", "algorithm": {"local": {"lr": 0.2}}, "run": {"client_fraction": 0.5}}
    ]
    with pytest.raises(ConfigError, match="not both"):  # old base's count + arm's fraction
        study_from_mapping(doc, default_name="t")
    doc["arms"][0]["run"] = {"clients_per_round": 2}
    (cfg,) = study_from_mapping(doc, default_name="t").runs
    assert cfg.algorithm is not None and cfg.algorithm.algorithm.local.lr == 0.2
    assert cfg.run.clients_per_round == 2


def test_invalid_value_in_one_arm_names_the_run(tmp_path: Path) -> None:
    text = STUDY.replace("algorithm.mu = 0.1", "algorithm.mu = -1.0")
    with pytest.raises(ConfigError) as e:
        load_study(write(tmp_path, text))
    assert "run 'fedprox[epochs=1,seed=0]'" in str(e.value)
    assert "algorithm.mu must be a finite number >= 0" in str(e.value)


def test_arm_errors() -> None:
    doc = tomllib.loads(BASE)
    doc["arms"] = [{"name": "a"}, {"name": "a"}]
    with pytest.raises(ConfigError, match="used twice"):
        study_from_mapping(doc, default_name="t")
    doc["arms"] = [{"algorithm": {"name": "fedprox"}}]
    with pytest.raises(ConfigError, match="needs a non-empty string 'name'"):
        study_from_mapping(doc, default_name="t")
    doc["arms"] = [{"name": "x", "optimiser": {}}]
    with pytest.raises(ConfigError, match="unknown key 'optimiser'"):
        study_from_mapping(doc, default_name="t")
    doc = tomllib.loads(BASE)
    doc["grid"] = {"algorithm.local.lr": []}
    with pytest.raises(ConfigError, match="non-empty list"):
        study_from_mapping(doc, default_name="t")


def test_parse_overrides_types_and_errors() -> None:
    got = parse_overrides(
        ["run.rounds=5", "algorithm.local.lr=0.5", "data.dataset=mnist", 'model.name="cnn"']
    )
    assert got == {
        "run.rounds": 5,
        "algorithm.local.lr": 0.5,
        "data.dataset": "mnist",
        "model.name": "cnn",
    }
    assert isinstance(got["run.rounds"], int)
    with pytest.raises(ConfigError, match="key=value"):
        parse_overrides(["rounds"])
    with pytest.raises(ConfigError, match="unknown section 'runn'"):
        study_from_mapping({}, default_name="t", overrides={"runn.rounds": 3})
    with pytest.raises(ConfigError, match="must be dotted"):
        study_from_mapping({}, default_name="t", overrides={"rounds": 3})


def test_parallel_section_is_validated_by_its_spec() -> None:
    doc = tomllib.loads(BASE)
    doc["parallel"] = {"method": "local_sgd", "workers": 2, "bogus": 1}
    with pytest.raises(ConfigError, match="bogus"):
        study_from_mapping(doc, default_name="t")
    doc["parallel"] = {"method": "local_sgd", "workers": 2}
    del doc["algorithm"]
    (cfg,) = study_from_mapping(doc, default_name="t").runs
    assert cfg.parallel is not None and cfg.parallel.workers == 2 and cfg.algorithm is None


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read experiment file"):
        load_study(tmp_path / "nope.toml")

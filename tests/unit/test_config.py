"""Experiment-file parsing and validation: clear errors, arms, grids and ``--set`` overrides."""

from __future__ import annotations

from pathlib import Path

import pytest

from fedkit.experiment.config import (
    AlgorithmSettings,
    ConfigError,
    load_study,
    parse_overrides,
    study_from_mapping,
)

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
clients_per_round = 5
lr = 0.05

[run]
rounds = 3
"""


def write(tmp_path: Path, text: str, name: str = "exp.toml") -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


def test_single_run_defaults_and_types(tmp_path: Path) -> None:
    study = load_study(write(tmp_path, BASE))
    assert study.name == "exp"
    (cfg,) = study.runs
    assert cfg.name == "exp"
    assert cfg.algorithm is not None and cfg.algorithm.lr == 0.05
    assert cfg.algorithm.clients_per_round == 5
    assert cfg.run.rounds == 3 and cfg.run.executor == "serial" and cfg.run.threads == 1
    assert cfg.data.dataset == "synthetic" and cfg.data.alpha == 1.0
    m = cfg.to_mapping()
    assert m["algorithm"]["name"] == "fedavg" and m["run"]["rounds"] == 3
    assert "server_lr" not in m["algorithm"]  # unset optional keys are left out


def test_malformed_toml_names_line_and_column(tmp_path: Path) -> None:
    p = write(tmp_path, '[data]\ndataset = "synthetic"\n[run\nrounds = 3\n')
    with pytest.raises(ConfigError) as e:
        load_study(p)
    msg = str(e.value)
    assert str(p) in msg and "invalid TOML" in msg
    assert "line 3" in msg and "column" in msg


@pytest.mark.parametrize(
    ("extra", "needle"),
    [
        ("[algorithm]\nlearning_rate = 0.1", "algorithm.learning_rate"),
        ("[run]\nround = 3", "run.round"),
        ("[data]\nnum_client = 3", "data.num_client"),
        ("[model]\nwidth = 3", "model.width"),
        ("[bogus]\nx = 1", "'bogus'"),
    ],
)
def test_unknown_key_is_named_with_allowed_keys(tmp_path: Path, extra: str, needle: str) -> None:
    section, line = extra.split("\n")
    text = BASE.replace(section, f"{section}\n{line}") if section in BASE else BASE + extra
    with pytest.raises(ConfigError) as e:
        load_study(write(tmp_path, text))
    assert needle in str(e.value)
    assert "allowed" in str(e.value)


@pytest.mark.parametrize(
    ("key", "value", "needle"),
    [
        ("algorithm.lr", "-0.1", "algorithm.lr must be a finite number > 0"),
        ("algorithm.momentum", "1.0", "algorithm.momentum must be a finite number in [0.0, 1.0)"),
        ("algorithm.name", '"fedfoo"', "algorithm.name must be one of fedsgd, fedavg"),
        ("algorithm.clients_per_round", "0", "algorithm.clients_per_round must be an int >= 1"),
        ("algorithm.local_epochs", "1.5", "algorithm.local_epochs must be an int >= 1"),
        ("run.rounds", "0", "run.rounds must be an int >= 1"),
        ("run.executor", '"gpu"', "run.executor must be one of serial, processes, vectorized"),
        ("run.target_accuracy", "1.5", "run.target_accuracy must be a finite number in [0.0, 1.0]"),
        ("run.threads", "true", "run.threads must be an int >= 1"),
        ("data.partition", '"random"', "data.partition must be one of"),
        ("model.name", '"transformer"', "model.name must be one of"),
    ],
)
def test_out_of_range_values_name_key_and_allowed(key: str, value: str, needle: str) -> None:
    import tomllib

    doc = tomllib.loads(BASE)
    section, k = key.split(".")
    doc[section][k] = tomllib.loads(f"v = {value}")["v"]
    with pytest.raises(ConfigError) as e:
        study_from_mapping(doc, default_name="t")
    assert needle in str(e.value)


def test_cohort_larger_than_population_is_rejected() -> None:
    import tomllib

    doc = tomllib.loads(BASE)
    doc["data"] = {"dataset": "synthetic", "partition": "iid", "num_clients": 4}
    with pytest.raises(ConfigError, match=r"clients_per_round must be in \[1, 4\]"):
        study_from_mapping(doc, default_name="t")


def test_missing_sections_and_keys() -> None:
    import tomllib

    doc = tomllib.loads(BASE)
    del doc["run"]["rounds"]
    with pytest.raises(ConfigError, match=r"run\.rounds"):
        study_from_mapping(doc, default_name="t")
    doc = tomllib.loads(BASE)
    del doc["algorithm"]
    with pytest.raises(ConfigError, match=r"missing section \[algorithm\]"):
        study_from_mapping(doc, default_name="t")


def test_clients_per_round_and_fraction_are_exclusive() -> None:
    with pytest.raises(ConfigError, match="not both"):
        AlgorithmSettings(name="fedavg", clients_per_round=3, client_fraction=0.1)
    a = AlgorithmSettings(name="fedavg", client_fraction=0.1)
    assert a.cohort_size(100) == 10 and a.cohort_size(3) == 1
    assert AlgorithmSettings(name="fedavg").cohort_size(7) == 7


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
"algorithm.local_epochs" = [1, 2, 5]
run.seed = [0, 1]
"""
)


def test_arms_and_grid_expand_to_cartesian_product(tmp_path: Path) -> None:
    study = load_study(write(tmp_path, STUDY))
    assert study.name == "cmp"
    names = [r.name for r in study.runs]
    assert len(names) == 3 * 2 + 3 * 2 + 1 and len(set(names)) == len(names)
    assert names[0] == "fedavg[local_epochs=1,seed=0]"
    assert names[-1] == "central"
    fedprox = [r for r in study.runs if r.name.startswith("fedprox")]
    assert all(r.algorithm is not None and r.algorithm.mu == 0.1 for r in fedprox)
    points = {(r.grid_point["algorithm.local_epochs"], r.grid_point["run.seed"]) for r in fedprox}
    assert points == {(e, s) for e in (1, 2, 5) for s in (0, 1)}
    for r in fedprox:
        assert r.algorithm is not None
        assert r.algorithm.local_epochs == r.grid_point["algorithm.local_epochs"]
        assert r.run.seed == r.grid_point["run.seed"]
    # the base is not modified by an arm
    fedavg = [r for r in study.runs if r.name.startswith("fedavg")]
    assert all(r.algorithm is not None and r.algorithm.name == "fedavg" for r in fedavg)


def test_set_overrides_apply_last_and_remove_grid_axis(tmp_path: Path) -> None:
    study = load_study(
        write(tmp_path, STUDY),
        ["algorithm.local_epochs=3", "run.rounds=7", "data.dataset=synthetic"],
    )
    assert len(study.runs) == 2 + 2 + 1
    for r in study.runs:
        assert r.run.rounds == 7
        assert r.algorithm is not None and r.algorithm.local_epochs == 3


def test_invalid_value_in_one_arm_names_the_run(tmp_path: Path) -> None:
    text = STUDY.replace("algorithm.mu = 0.1", "algorithm.mu = -1.0")
    with pytest.raises(ConfigError) as e:
        load_study(write(tmp_path, text))
    assert "run 'fedprox[local_epochs=1,seed=0]'" in str(e.value)
    assert "algorithm.mu must be a finite number >= 0" in str(e.value)


def test_arm_errors() -> None:
    import tomllib

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
    doc["grid"] = {"algorithm.lr": []}
    with pytest.raises(ConfigError, match="non-empty list"):
        study_from_mapping(doc, default_name="t")


def test_parse_overrides_types_and_errors() -> None:
    got = parse_overrides(
        ["run.rounds=5", "algorithm.lr=0.5", "data.dataset=mnist", 'model.name="cnn"']
    )
    assert got == {
        "run.rounds": 5,
        "algorithm.lr": 0.5,
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
    import tomllib

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

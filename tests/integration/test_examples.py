"""Every experiment file in ``examples/`` parses and validates (config only, no training).

The examples are documentation users run as they are, so a renamed key or an out-of-range value
in one of them must fail the test suite, not the user.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from fedkit.experiment.config import ALGORITHMS, ConfigError, load_study

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
# decentral_* and vertical_* files are not `fedkit run` studies: test_decentral_cli.py and
# test_vertical_*.py validate them with their own loaders
FILES = sorted(
    p for p in EXAMPLES.glob("*.toml") if not p.stem.startswith(("decentral_", "vertical_"))
)


def _param(path: Path) -> object:
    return pytest.param(path, id=path.stem)


def test_examples_exist() -> None:
    names = {p.stem for p in FILES}
    assert {
        "quickstart",
        "mcmahan_mnist_2nn",
        "mcmahan_mnist_cnn",
        "femnist_by_writer",
        "shakespeare_by_role",
        "cifar100_lenet_fl_vs_central",
        "sweep_participation_epochs",
        "mnist_fl_vs_central",
    } <= names


@pytest.mark.parametrize("path", [_param(p) for p in FILES])
def test_example_validates(path: Path) -> None:
    study = load_study(path)
    assert study.runs, f"{path.name} expands to no runs"
    assert study.description, f"{path.name} has no [study] description"
    names = [r.name for r in study.runs]
    assert len(set(names)) == len(names), f"{path.name}: run names repeat: {names}"
    for run in study.runs:
        if run.parallel is not None:  # a data-parallel study: [parallel] replaces rounds
            continue
        assert run.algorithm is not None and run.algorithm.name in ALGORITHMS
        assert run.run.rounds is not None and run.run.rounds >= 1
        assert run.run.target_accuracy is not None, f"{run.name}: no run.target_accuracy"
    # Every file explains itself: a comment header naming the command to run it.
    head = path.read_text(encoding="utf-8").splitlines()[:12]
    assert head[0].startswith("# ")
    assert any("fedkit run examples/" in line for line in path.read_text().splitlines())


def test_quickstart_needs_no_download_and_compares_three_arms() -> None:
    study = load_study(EXAMPLES / "quickstart.toml")
    assert {r.data.dataset for r in study.runs} == {"synthetic"}
    assert {r.data.alpha for r in study.runs} == {1.0}
    assert {r.data.beta for r in study.runs} == {1.0}
    assert [r.algorithm.name for r in study.runs if r.algorithm] == [
        "fedavg",
        "fedprox",
        "centralized",
    ]


def test_sweep_is_a_grid_over_participation_and_epochs() -> None:
    study = load_study(EXAMPLES / "sweep_participation_epochs.toml")
    points = {
        (r.run.client_fraction, r.algorithm.algorithm.local.epochs)
        for r in study.runs
        if r.algorithm
    }
    assert points == {(c, e) for c in (0.1, 0.33, 1.0) for e in (1, 5, 20)}


def test_overrides_reach_every_arm() -> None:
    study = load_study(EXAMPLES / "quickstart.toml", ["run.rounds=2"])
    assert {r.run.rounds for r in study.runs} == {2}


def test_example_with_bad_override_names_the_key() -> None:
    with pytest.raises(ConfigError, match=r"run\.rounds"):
        load_study(EXAMPLES / "quickstart.toml", ["run.rounds=0"])

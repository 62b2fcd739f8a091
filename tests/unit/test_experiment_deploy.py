"""Deployment experiment files (the edge, fedkit.experiment.deploy): the `fedkit run` format plus
a validated [deploy] section, built into a typed fedkit.net Deployment."""

from __future__ import annotations

from pathlib import Path

import pytest

from fedkit.algorithms import FedAvg
from fedkit.experiment.deploy import ExperimentError, load_deployment
from fedkit.net.deployment import DeploySettings

BASE = """
[data]
dataset = "synthetic"
partition = "natural"
num_clients = 4

[model]
name = "logreg"

[algorithm]
name = "fedavg"
clients_per_round = 2

[run]
rounds = 2
seed = 3
"""


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "exp.toml"
    p.write_text(text)
    return p


def test_valid_file_with_deploy_section(tmp_path: Path) -> None:
    exp = load_deployment(write(tmp_path, BASE + "[deploy]\nquorum = 0.5\ndeadline_s = 9\n"))
    assert exp.deploy == DeploySettings(quorum=0.5, deadline_s=9)
    assert exp.rounds == 2 and exp.seed == 3 and exp.cohort_size(4) == 2
    assert isinstance(exp.algorithm, FedAvg) and exp.model == "logreg"
    assert exp.federated_eval_every == 2  # unset: after the last round only, as `fedkit run`
    assert len(exp.digest) == 64
    a = exp.build_model(num_classes=10, input_shape=(60,))
    b = exp.build_model(num_classes=10, input_shape=(60,))
    assert all((x == y).all() for x, y in zip(a.parameters(), b.parameters(), strict=True))


@pytest.mark.parametrize(
    ("extra", "fragment"),
    [
        ("[deploy]\nqourum = 0.5\n", "qourum"),
        ("[deploy]\nquorum = 0\n", "deploy.quorum"),
        ("[deploy]\nover_selection = 0.5\n", "deploy.over_selection"),
        ("[deploy]\non_abort = 'retry'\n", "deploy.on_abort"),
        ("[deploy]\ndeadline_s = -1\n", "deploy.deadline_s"),
        ("[grid]\n'algorithm.lr' = [0.1, 0.2]\n", "grid"),
        ("[extra]\nx = 1\n", "extra"),
    ],
)
def test_errors_name_the_key(tmp_path: Path, extra: str, fragment: str) -> None:
    with pytest.raises(ExperimentError, match=fragment):
        load_deployment(write(tmp_path, BASE + extra))


def test_malformed_toml_and_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ExperimentError, match="not valid TOML"):
        load_deployment(write(tmp_path, "[data\n"))
    with pytest.raises(ExperimentError, match="cannot read"):
        load_deployment(tmp_path / "nope.toml")


def test_centralized_is_not_deployable(tmp_path: Path) -> None:
    with pytest.raises(ExperimentError, match="federated"):
        load_deployment(write(tmp_path, BASE.replace('name = "fedavg"', 'name = "centralized"')))


def test_deploy_commands_keep_their_flags() -> None:
    """`fedkit coordinator|worker|launch|certs create`, mounted from the edge, flag for flag."""
    import typer

    from fedkit.cli import _mount, app

    _mount()
    root = typer.main.get_command(app)
    ctx = root.make_context("fedkit", ["--help"], resilient_parsing=True)

    def flags(*path: str) -> set[str]:
        cmd = root
        for name in path:
            cmd = cmd.get_command(ctx, name)  # type: ignore[attr-defined]
        return {o for p in cmd.params for o in p.opts}

    common = {"file", "--experiment", "--data", "--verbose", "-v"}  # FILE, or --experiment
    assert flags("coordinator") == common | {
        "--listen", "--out", "--tls-dir", "--insecure", "--json", "--min-workers", "--secret-file"
    }  # fmt: skip
    assert flags("worker") == common | {
        "--coordinator", "--client-id", "--tls-dir", "--tls-name", "--insecure", "--state-dir",
        "--threads", "--attack", "--attack-set", "--secret-file", "--clients", "--secret-dir",
    }  # fmt: skip
    assert flags("launch") == common | {"--workers", "--out", "--json"}
    assert flags("certs", "create") == {"--out", "--coordinator-host", "--workers", "--days"}
    assert flags("certs", "issue") == {"--dir", "--name", "--clients", "--days"}
    assert flags("secrets", "create") == {"--out", "--clients"}

"""One way to say things on the command line (issue 19, item 1): the experiment FILE positional
for ``coordinator``/``worker``/``launch`` as for ``run`` (``--experiment`` an alias), one default
output folder (``runs/`` and ``runs/<FILE stem>``), and ``data describe --set`` taking
``fedkit run``'s ``data.KEY`` keys (a bare key still read, with a deprecation warning)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from fedkit.data.cli import app as data_app
from fedkit.data.cli import deprecated_keys

BASE = """
[data]
dataset = "synthetic"
partition = "natural"
[model]
name = "cnn"
[algorithm]
name = "fedavg"
[run]
rounds = 1
"""
# a CNN on synthetic vectors: every deployment command refuses it, in one line, before serving
BAD_MODEL = "input_shape must be (C, H, W)"


def cli(*args: str) -> tuple[int, str]:
    from fedkit.cli import _mount, app

    _mount()
    r = CliRunner().invoke(app, list(args))
    return r.exit_code, r.output


@pytest.fixture
def exp(tmp_path: Path) -> Path:
    f = tmp_path / "myexp.toml"
    f.write_text(BASE)
    return f


@pytest.mark.parametrize("spelling", ["positional", "option", "both"])
def test_coordinator_and_worker_take_file_as_run_does(exp: Path, spelling: str) -> None:
    how = {
        "positional": [str(exp)],
        "option": ["--experiment", str(exp)],
        "both": [str(exp), "--experiment", str(exp)],  # the same file twice is fine
    }[spelling]
    code, out = cli("coordinator", *how, "--out", str(exp.parent / "o"), "--listen", "127.0.0.1:0")
    assert code == 2 and BAD_MODEL in out, out
    code, out = cli("worker", *how, "--coordinator", "127.0.0.1:1", "--client-id", "0")
    assert code == 2 and BAD_MODEL in out, out


@pytest.mark.parametrize("command", ["coordinator", "worker", "launch"])
def test_no_file_or_two_different_files_are_refused(
    exp: Path, tmp_path: Path, command: str
) -> None:
    extra = {
        "coordinator": [],
        "worker": ["--coordinator", "127.0.0.1:1", "--client-id", "0"],
        "launch": ["--workers", "1"],
    }[command]
    code, out = cli(command, *extra)
    assert code == 2 and "give the experiment file" in out, out
    other = tmp_path / "other.toml"
    other.write_text(BASE)
    code, out = cli(command, str(exp), "--experiment", str(other), *extra)
    assert code == 2 and "differ" in out, out


def test_default_output_folder_is_runs_slash_file_stem(
    exp: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without --out the coordinator's state lives in runs/<FILE stem>: a corrupt coordinator.db
    put there beforehand is the one it names (nothing is served)."""
    exp.write_text(BASE.replace('"cnn"', '"logreg"'))
    monkeypatch.chdir(tmp_path)
    state = Path("runs") / "myexp"
    state.mkdir(parents=True)
    (state / "coordinator.db").write_bytes(b"not a database " * 100)
    code, out = cli("coordinator", str(exp), "--listen", "127.0.0.1:0")
    assert code == 2 and str(state / "coordinator.db") in out, out
    assert not Path("fedkit-coordinator").exists()


def test_deprecated_keys_are_those_without_a_section() -> None:
    assert deprecated_keys(["data.alpha=0.1", "num_clients=3", "options.cache=false"]) == [
        "num_clients",
        "options.cache",
    ]
    assert deprecated_keys(["data.dataset=mnist", "run.rounds=2"]) == []


def _describe(*sets: str) -> tuple[int, str, str]:
    args = ["describe", "--json"]
    for s in sets:
        args += ["--set", s]
    r = CliRunner().invoke(data_app, args)
    return r.exit_code, r.stdout, r.stderr


def test_describe_set_takes_run_keys_and_warns_on_the_old_form() -> None:
    code, new, err = _describe(
        "data.dataset=synthetic", "data.partition=natural", "data.num_clients=4"
    )
    assert code == 0 and err == ""
    code, old, err = _describe("dataset=synthetic", "partition=natural", "data.num_clients=4")
    assert code == 0
    assert json.loads(old) == json.loads(new)  # same partition either way
    warnings = [ln for ln in err.splitlines() if ln.startswith("warning:")]
    assert len(warnings) == 2 and "--set data.dataset=" in warnings[0], err


def test_describe_names_keys_of_other_sections_as_not_applying() -> None:
    """``fedkit run``'s --set list can be pasted as is; what does not shape a partition is said."""
    code, out, err = _describe("data.dataset=synthetic", "data.partition=natural", "run.rounds=3")
    assert code == 0 and json.loads(out)["num_clients"] > 0
    assert err.startswith("note: --set run.rounds do not shape a partition"), err

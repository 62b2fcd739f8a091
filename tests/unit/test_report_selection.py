"""Which runs a report compares and how it names them (issue 19, items 3 and 5): a folder run
into twice is reported by the latest completed run of each arm (``--all``: every run), and says
so; labels stay unique when several folders hold runs with the same name and id; settings an arm
does not have are marked as not applying."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from typer.testing import CliRunner

from fedkit.experiment.report import latest_per_arm, select_arms, write_report
from fedkit.experiment.report_model import Arm, RoundPoint, labels
from fedkit.experiment.results import ResultsStore, results_path
from tests.unit.test_report import _record


def _twice(out: Path) -> None:
    """The same two-arm study run into ``out`` twice (ids 1-2, then 3-4), then a failed run."""
    with ResultsStore(results_path(out)) as store:
        for accs in ([0.1, 0.2], [0.3, 0.4]):
            _record(store, "fedavg", "fedavg", accs, bytes_per_round=1, client_accs=[])
            _record(store, "fedprox", "fedprox", accs, bytes_per_round=1, client_accs=[])
        failed = store.start_run(name="fedavg", config={}, study="unit", code="t", env={})
        store.fail_run(failed, "RuntimeError: boom")


def test_a_folder_run_into_twice_reports_the_latest_run_of_each_arm(tmp_path: Path) -> None:
    _twice(tmp_path / "runs")
    chosen = select_arms([str(tmp_path / "runs")], runs_dir=tmp_path)
    assert [(a.name, a.run_id) for a in chosen.arms] == [("fedavg", "3"), ("fedprox", "4")]
    # the second invocation's accuracies, not a mix: 0.4 final in both arms
    assert {a.points[-1].accuracy for a in chosen.arms} == {0.4}
    (note,) = chosen.notes
    assert "latest completed run of each arm (2 of 5 runs)" in note
    assert "3 earlier or unfinished runs left out" in note and "--all" in note
    every = select_arms([str(tmp_path / "runs")], runs_dir=tmp_path, include_unfinished=True)
    assert [a.run_id for a in every.arms] == ["1", "2", "3", "4", "5"] and every.notes == []
    files = write_report(chosen.arms, tmp_path / "rep", notes=chosen.notes)
    assert note in files.markdown.read_text(encoding="utf-8")
    assert "earlier or unfinished runs left out" in files.html.read_text(encoding="utf-8")


def test_report_command_says_what_it_left_out(tmp_path: Path) -> None:
    import typer

    from fedkit.experiment.report_cli import report

    _twice(tmp_path / "runs")
    app = typer.Typer()
    app.command()(report)
    result = CliRunner().invoke(app, [str(tmp_path / "runs"), "--out", str(tmp_path / "r")])
    assert result.exit_code == 0, result.output
    assert "3 earlier or unfinished runs left out" in result.stderr
    assert "fedavg [" not in result.stderr  # one run per arm: plain names


@given(
    st.lists(
        st.tuples(st.sampled_from(["a", "b"]), st.integers(1, 9), st.sampled_from("cdef")),
        min_size=1,
        max_size=12,
    )
)
def test_latest_per_arm_keeps_the_highest_completed_id_per_name(
    runs: list[tuple[str, int, str]],
) -> None:
    from fedkit.experiment.results import RunRow

    rows = [
        RunRow(
            id=i, name=name, study="s", status="completed" if st_ in "cd" else "failed",
            config={}, code_version="", environment={}, started="", ended=None, summary=None,
            error=None, pid=None,
        )
        for i, (name, _, st_) in enumerate(runs, start=1)
    ]  # fmt: skip
    kept = latest_per_arm(rows)
    for name in ("a", "b"):
        done = [r.id for r in rows if r.name == name and r.status == "completed"]
        assert [r.id for r in kept if r.name == name] == ([max(done)] if done else [])
    assert [r.id for r in kept] == sorted(r.id for r in kept)


def _arm(name: str, run_id: str, source: str) -> Arm:
    point = RoundPoint(round=1, accuracy=0.5, loss=None, wall_seconds=0, bytes_up=0, bytes_down=0)
    return Arm(run_id=run_id, name=name, algorithm="fedavg", points=(point,), source=source)


@pytest.mark.parametrize(
    ("arms", "expected"),
    [
        # three folders, each with its run 1 named fedavg: the folder tells them apart
        (
            [("fedavg", "1", "x/a/results.sqlite"), ("fedavg", "1", "x/b/results.sqlite"),
             ("fedavg", "1", "x/c/results.sqlite"), ("fedprox", "2", "x/a/results.sqlite")],
            ["fedavg [a:1]", "fedavg [b:1]", "fedavg [c:1]", "fedprox"],
        ),
        # same name, different ids: the id is enough
        ([("fedavg", "1", "a"), ("fedavg", "2", "a")], ["fedavg [1]", "fedavg [2]"]),
        # the folders' last parts clash too: their whole paths
        (
            [("fedavg", "1", "p/runs/results.sqlite"), ("fedavg", "1", "q/runs/results.sqlite")],
            ["fedavg [p/runs:1]", "fedavg [q/runs:1]"],
        ),
    ],
)  # fmt: skip
def test_labels_are_unique_across_folders(
    arms: list[tuple[str, str, str]], expected: list[str]
) -> None:
    assert labels([_arm(*a) for a in arms]) == expected


@given(
    st.lists(
        st.tuples(st.sampled_from(["fedavg", "fedprox"]), st.sampled_from("123"),
                  st.sampled_from(["a", "b", "c/a"])),
        min_size=1, max_size=8, unique=True,
    )
)  # fmt: skip
def test_distinct_runs_always_get_distinct_labels(arms: list[tuple[str, str, str]]) -> None:
    got = labels([_arm(*a) for a in arms])
    assert len(set(got)) == len(got)


def test_a_setting_an_arm_does_not_have_is_marked_not_applicable(tmp_path: Path) -> None:
    base = {"algorithm.name": "fedavg", "algorithm.lr": "0.1"}
    fedavg = _arm("fedavg", "1", "a")
    fedprox = _arm("fedprox", "2", "a")
    arms = [
        Arm(**{**fedavg.__dict__, "settings": tuple(base.items())}),
        Arm(**{**fedprox.__dict__, "settings": (*base.items(), ("algorithm.mu", "0.01"))}),
    ]
    md = write_report(arms, tmp_path / "r").markdown.read_text(encoding="utf-8")
    assert "| algorithm.mu | n/a | 0.01 |" in md
    assert "n/a: the arm has no such setting" in md

"""Must-show (issue 19): from a fresh process with only the venv's Python — no ``FEDKIT_DATA``,
a fresh ``HOME``, started outside the checkout — every example in ``examples/`` starts with its
short setting (``--set run.rounds=1``; a ``[parallel]`` study's sample budget, a decentralised
study's rounds, a vertical study's epochs and training samples) and finishes with every run
``completed``. The data is found by the documented lookup order (``../shared/data`` beside the
checkout).

The examples are discovered from ``examples/*.toml`` when the test is collected, so a new example
is covered without editing this file; :data:`SKIP` names the few that cannot run alone here, each
with its reason. Slow (``make test-all``): a round of the larger studies takes minutes on 2 cores,
and ``robustness_study`` is 140 runs.
"""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"

SKIP: dict[str, str] = {
    "nwp_sent140_federated": "its second arm starts from the bundle that nwp_sent140_server's run "
    "exports (run.init_from = runs/nwp/server_bundle): "
    "test_nwp_examples_run_in_order_from_a_fresh_shell runs the three steps in order",
}
"""Example stem -> why it cannot run on its own at its short setting."""

SHORTER: dict[str, list[str]] = {
    # ResNet-18 and the ViT on a 2-core CPU: one round of 10 clients x 500 images took about
    # 3.5 minutes per ResNet arm with the CIFAR stem (the file now uses the ImageNet stem, about
    # 10x cheaper, still ~20 s a ResNet/ViT round), plus evaluating 10,000 test images, ten arms.
    # 1,000 clients keep 50 images each (one round trains 500), and evaluation is left out:
    # the LeNet-5 arms of the other CIFAR-100 studies evaluate the same data path.
    "study_architectures": ["data.num_clients=1000", "run.eval_every=0"],
}
"""Example stem -> settings added to its short setting, where one round alone takes too long."""


def command(file: Path) -> tuple[str, list[str]]:
    """The ``fedkit`` command that runs ``file`` (from its sections) and its short setting."""
    doc = tomllib.loads(file.read_text(encoding="utf-8"))
    if "decentral" in doc:
        return "decentral", ["decentral.rounds=1", "decentral.eval_every=1"]
    if "vertical" in doc:
        return "vertical", ["vertical.local.epochs=1", "vertical.max_train=2000"]
    if "parallel" in doc:  # the data-parallel track counts samples, not rounds
        return "run", ["parallel.sample_budget=2000", "parallel.eval_every_samples=1000"]
    return "run", ["run.rounds=1"]


def _examples() -> list[object]:
    return [
        pytest.param(f, marks=pytest.mark.skip(reason=SKIP[f.stem])) if f.stem in SKIP else f
        for f in sorted(EXAMPLES.glob("*.toml"))
    ]


def fresh_env(home: Path) -> dict[str, str]:
    """What a fresh shell after ``source .venv/bin/activate`` has: the venv first on PATH, no
    FEDKIT_DATA, its own HOME (so ~/.cache/fedkit is empty)."""
    venv_bin = str(Path(sys.executable).parent)
    return {
        "PATH": f"{venv_bin}:/usr/bin:/bin",
        "HOME": str(home),
        "OMP_NUM_THREADS": "1",
        "LANG": "C.UTF-8",
    }


def test_every_example_is_covered_and_each_skip_is_an_example() -> None:
    stems = {f.stem for f in EXAMPLES.glob("*.toml")}
    assert len(stems) >= 20
    assert set(SKIP) <= stems, f"skip-list entries without an example: {set(SKIP) - stems}"
    assert set(SHORTER) <= stems, f"shorter settings without an example: {set(SHORTER) - stems}"


def test_examples_readme_lists_every_example() -> None:
    """examples/README.md is the index: a new file without a row there is stale documentation."""
    readme = (EXAMPLES / "README.md").read_text(encoding="utf-8")
    missing = [f.name for f in sorted(EXAMPLES.glob("*.toml")) if f"({f.name})" not in readme]
    assert missing == [], f"examples/README.md has no row for {missing}"
    assert "default `~/.cache/fedkit`; the Makefile points it" not in readme  # the old lookup


def fedkit_fresh(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    """``python -m fedkit ARGS`` from a fresh shell in ``cwd``; asserts it exited 0."""
    done = subprocess.run(
        [sys.executable, "-m", "fedkit", *args],
        cwd=cwd,  # not the checkout: the data must be found by the lookup order
        env=fresh_env(cwd / "home"),
        capture_output=True,
        text=True,
        timeout=3500,
    )
    assert done.returncode == 0, (done.stdout[-2000:], done.stderr[-4000:])
    return done


@pytest.mark.slow
@pytest.mark.timeout(3600)
@pytest.mark.parametrize("file", _examples(), ids=lambda f: f.stem)
def test_example_runs_from_a_fresh_shell(file: Path, tmp_path: Path) -> None:
    kind, short = command(file)
    short = [*short, *SHORTER.get(file.stem, [])]
    out = tmp_path / "out"
    sets = [arg for s in short for arg in ("--set", s)]
    quiet = ["--quiet"] if kind != "vertical" else []
    done = fedkit_fresh([kind, str(file), "--out", str(out), "--json", *quiet, *sets], tmp_path)
    lines = [json.loads(ln) for ln in done.stdout.splitlines() if ln.startswith("{")]
    assert lines and all(d.get("status", "completed") == "completed" for d in lines), lines
    _assert_completed_with_shared_data(out, tmp_path)


@pytest.mark.slow
@pytest.mark.timeout(3600)
def test_nwp_examples_run_in_order_from_a_fresh_shell(tmp_path: Path) -> None:
    """The next-word pair as its header says: the server run, its bundle exported to
    runs/nwp/server_bundle, then the federated file, whose fine-tune arm starts from it."""
    out = tmp_path / "runs" / "nwp"
    one = ["--set", "run.rounds=1", "--json", "--quiet"]
    server = fedkit_fresh(["run", str(EXAMPLES / "nwp_sent140_server.toml"), "--out", str(out),
                           *one], tmp_path)  # fmt: skip
    run_id = str(json.loads(server.stdout.strip().splitlines()[-1])["run_id"])
    fedkit_fresh(["export", run_id, "--runs", str(out), "--out", str(out / "server_bundle")],
                 tmp_path)  # fmt: skip
    fed = fedkit_fresh(["run", str(EXAMPLES / "nwp_sent140_federated.toml"), "--out", str(out),
                        *one], tmp_path)  # fmt: skip
    lines = [json.loads(ln) for ln in fed.stdout.splitlines() if ln.startswith("{")]
    assert len(lines) >= 2 and all(d["status"] == "completed" for d in lines), lines
    _assert_completed_with_shared_data(out, tmp_path)


def _assert_completed_with_shared_data(out: Path, tmp_path: Path) -> None:
    con = sqlite3.connect(out / "results.sqlite")
    try:
        statuses = [s for (s,) in con.execute("SELECT status FROM runs")]
    finally:
        con.close()
    assert statuses and set(statuses) == {"completed"}, statuses
    # the shared data was used: nothing was downloaded into ~/.cache/fedkit (only the derived
    # cache of decoded arrays and verified checksums may be written there)
    home = tmp_path / "home" / ".cache" / "fedkit"
    assert not home.exists() or {p.name for p in home.iterdir()} <= {"cache"}

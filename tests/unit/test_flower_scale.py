"""benchmarks/flower_scale.py (issue 20's Flower arm): the parts that need no Flower.

The generated Flower app (its pyproject run config, the two app modules, the model's shapes), the
table math over the ServerApp's round marks, the Flower/fedkit ratio, the memory guard and the
clean-up of detached descendants. Flower itself is never imported: the project does not depend on
it, and the benchmark installs it into a virtual environment of its own.
"""

from __future__ import annotations

import ast
import importlib.util
import json
import math
import os
import signal
import subprocess
import sys
import time
import tomllib
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

REPO = Path(__file__).resolve().parents[2]


def _load() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "flower_scale", REPO / "benchmarks" / "flower_scale.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["flower_scale"] = module  # dataclasses resolve their module by name
    spec.loader.exec_module(module)
    return module


fs = _load()

# McMahan et al. (2017)'s CNN on 28x28x1 inputs, as fedkit.models builds it:
# conv 5x5, 1 -> 32:   5*5*1*32 + 32   =       832
# conv 5x5, 32 -> 64:  5*5*32*64 + 64  =    51,264
# fc 7*7*64 -> 512:    3136*512 + 512  = 1,606,144
# fc 512 -> 10:        512*10 + 10     =     5,130
#                                  total 1,663,370 parameters, 6,653,480 bytes in float32
CNN_SHAPES = [
    ("conv1.weight", (32, 1, 5, 5)),
    ("conv1.bias", (32,)),
    ("conv2.weight", (64, 32, 5, 5)),
    ("conv2.bias", (64,)),
    ("fc1.weight", (512, 3136)),
    ("fc1.bias", (512,)),
    ("fc2.weight", (10, 512)),
    ("fc2.bias", (10,)),
]


def _cfg(**kw: Any) -> Any:
    base: dict[str, Any] = dict(
        nodes=100, active=10, cohort=10, rounds=4, out_file=Path("/tmp/x y/server.jsonl"),
        superlink_pid=4242,
    )  # fmt: skip
    base.update(kw)
    return fs.AppConfig(**base)


def test_the_project_never_imports_flower() -> None:
    assert "flwr" not in sys.modules
    assert "flwr" not in (REPO / "pyproject.toml").read_text()


def test_parse_args_defaults_and_limits() -> None:
    args = fs.parse_args([])
    assert args.clients == [100] and args.rounds == 3 and not args.flower_all_active
    assert args.flower_venv == fs.DEFAULT_VENV
    args = fs.parse_args(["--clients", "10", "200", "--flower-venv", "/tmp/v", "--rounds", "2"])
    assert args.clients == [10, 200] and args.flower_venv == Path("/tmp/v") and args.rounds == 2
    with pytest.raises(SystemExit):  # C = 9 has a cohort of 0
        fs.parse_args(["--clients", "9"])
    with pytest.raises(SystemExit):
        fs.parse_args(["--rounds", "0"])


def test_generated_pyproject_carries_the_run_config() -> None:
    files = fs.app_files(CNN_SHAPES, _cfg())
    assert set(files) == {
        "pyproject.toml", "fkbench/__init__.py", "fkbench/shapes.py", "fkbench/server.py",
        "fkbench/client.py",
    }  # fmt: skip
    doc = tomllib.loads(files["pyproject.toml"])
    app = doc["tool"]["flwr"]["app"]
    assert app["components"] == {"serverapp": "fkbench.server:app",
                                 "clientapp": "fkbench.client:app"}  # fmt: skip
    assert app["publisher"] == "fedkit"
    assert doc["project"]["name"] == "fkbench" and doc["project"]["version"] == "1.0.0"
    assert f"flwr=={fs.FLWR_VERSION}" in doc["project"]["dependencies"]
    assert app["config"] == {
        "num-server-rounds": 4, "cohort": 10, "num-nodes": 100, "active-nodes": 10,
        "round-timeout": 600.0, "out-file": "/tmp/x y/server.jsonl", "superlink-pid": 4242,
        "idle-seconds": 10.0,
    }  # fmt: skip


def test_generated_app_modules_parse_and_name_flower_entry_points() -> None:
    files = fs.app_files(CNN_SHAPES, _cfg())
    server = ast.parse(files["fkbench/server.py"])
    client = ast.parse(files["fkbench/client.py"])
    names = {n.name for n in ast.walk(server) if isinstance(n, ast.FunctionDef)}
    assert {"main", "cpu_s", "rss", "descendants", "wait_nodes"} <= names
    assert "@app.main()" in files["fkbench/server.py"]
    assert "@app.train()" in files["fkbench/client.py"]
    assert any(isinstance(n, ast.FunctionDef) and n.name == "train" for n in ast.walk(client))
    # The JSON records are one per line: a real newline escape, not a literal backslash-n.
    assert files["fkbench/server.py"].count('+ "\\n")') == 5


def test_shapes_module_holds_the_cnn() -> None:
    text = fs.app_files(CNN_SHAPES, _cfg())["fkbench/shapes.py"]
    tree = ast.parse(text)
    assign = next(n for n in tree.body if isinstance(n, ast.Assign))
    shapes = ast.literal_eval(assign.value)
    assert [name for name, _ in shapes] == [name for name, _ in CNN_SHAPES]
    assert sum(math.prod(shape) for _, shape in shapes) == 1_663_370


def test_shapes_match_the_benchmark_model() -> None:
    from fedkit.models import build_model

    model = build_model("cnn", num_classes=10, input_shape=(1, 28, 28))
    got = [(k, tuple(v.shape)) for k, v in model.state_dict().items()]
    assert sum(math.prod(s) for _, s in got) == 1_663_370
    assert sorted(s for _, s in got) == sorted(s for _, s in CNN_SHAPES)


@pytest.mark.parametrize(
    "kw", [dict(cohort=0), dict(cohort=11), dict(active=101), dict(rounds=0)]
)  # fmt: skip
def test_app_config_rejects_inconsistent_counts(kw: dict[str, int]) -> None:
    with pytest.raises(ValueError):
        _cfg(**kw)


def test_flower_config_names_the_superlink() -> None:
    doc = tomllib.loads(fs.flower_config(51234))
    assert doc["superlink"]["default"] == "bench"
    assert doc["superlink"]["bench"] == {"address": "127.0.0.1:51234", "insecure": True}


def _record(event: str, **kw: Any) -> str:
    return json.dumps({"event": event, **kw})


def _log(cpus: list[dict[str, float]], times: list[float], peaks: list[int], bases: list[int],
         done: bool = True, idle: bool = True) -> list[str]:  # fmt: skip
    pids = {"11": "python3 flower-superlink", "12": "python3 flwr-serverapp"}
    lines = [_record("active", nodes=10), _record("start", pids=pids)]
    if idle:  # 10 s with every node connected: 0.5 + 0.25 CPU-s -> 0.075 CPU-s per s
        lines.append(_record("idle", seconds=10.0, before={"11": 0.5, "12": 1.0},
                             after={"11": 1.0, "12": 1.25}))  # fmt: skip
    for r, (cpu, t, p, b) in enumerate(zip(cpus, times, peaks, bases, strict=True)):
        lines.append(_record("mark", round=r, time=t, cpu=cpu, peak_rss=p, base_rss=b))
    if done:
        lines.append(_record("done", down_bytes=6_657_432, up_bytes=6_657_614,
                             model_bytes=6_653_480, vm_hwm={"11": 2**28, "12": 2**27}))  # fmt: skip
    return lines


MIB = 2**20
# Round marks (mark r = end of round r; mark 0 = before round 1). CPU seconds per process:
#   mark 0: superlink 1.0,  serverapp 2.0
#   mark 1: superlink 2.0,  serverapp 2.5   (round 1, warm-up: 1.5, left out)
#   mark 2: superlink 2.75, serverapp 2.75  (round 2: 0.75 + 0.25 = 1.0)
#   mark 3: superlink 3.5,  serverapp 3.25  (round 3: 0.75 + 0.5  = 1.25)
# mean over rounds 2-3: (1.0 + 1.25) / 2 = 1.125; per process: superlink 0.75, serverapp 0.375.
# Wall: marks at 100, 110, 117, 126 s: rounds 2-3 took 7 and 9 s, mean 8.
# Memory: the level at mark 1 (after the warm-up) is 500 MiB; the highest seen after it is
# 650 MiB (by mark 2) -> 150 MiB above the warm level. Bytes: 6,657,432 / 6,653,480 = 1.000594.
# Idle polling: 0.075 CPU-s per s; per round less idle: 1.125 - 0.075 * 8 = 0.525.
CPUS = [{"11": 1.0, "12": 2.0}, {"11": 2.0, "12": 2.5}, {"11": 2.75, "12": 2.75},
        {"11": 3.5, "12": 3.25}]  # fmt: skip
TIMES = [100.0, 110.0, 117.0, 126.0]
PEAKS = [420 * MIB, 900 * MIB, 650 * MIB, 620 * MIB]
BASES = [400 * MIB, 400 * MIB, 500 * MIB, 500 * MIB]


def test_summarise_hand_computed() -> None:
    log = fs.parse_log(_log(CPUS, TIMES, PEAKS, BASES))
    row = fs.summarise(log, nodes=100, cohort=10)
    assert row["rounds_measured"] == 2
    assert row["coordinator_cpu_s_per_round"] == pytest.approx(1.125, abs=1e-12)
    assert row["coordinator_cpu_s_per_process"] == pytest.approx(
        {"python3 flower-superlink": 0.75, "python3 flwr-serverapp": 0.375}, abs=1e-12
    )
    assert row["wall_s_per_round"] == pytest.approx(8.0, abs=1e-12)
    assert row["idle_cpu_s_per_s"] == pytest.approx(0.075, abs=1e-12)
    assert row["coordinator_cpu_s_per_round_less_idle"] == pytest.approx(0.525, abs=1e-12)
    assert row["coordinator_peak_rss_above_start_mib"] == pytest.approx(150.0, abs=1e-12)
    assert row["down_ratio"] == pytest.approx(1.000594, abs=1e-6)
    assert row["up_ratio"] == pytest.approx(6_657_614 / 6_653_480, rel=1e-12)
    assert row["server_vm_hwm_mib"] == pytest.approx(256 + 128, abs=1e-12)
    assert (row["clients"], row["cohort"], row["model_bytes"]) == (100, 10, 6_653_480)


def test_no_idle_record_subtracts_nothing() -> None:
    row = fs.summarise(fs.parse_log(_log(CPUS, TIMES, PEAKS, BASES, idle=False)), nodes=100,
                       cohort=10)  # fmt: skip
    assert row["idle_cpu_s_per_s"] == 0.0
    assert row["coordinator_cpu_s_per_round_less_idle"] == pytest.approx(1.125, abs=1e-12)


@pytest.mark.parametrize(
    "lines",
    [
        _log(CPUS, TIMES, PEAKS, BASES, done=False),  # the ServerApp never finished
        _log(CPUS[:2], TIMES[:2], PEAKS[:2], BASES[:2]),  # the warm-up round only
        [ln for ln in _log(CPUS, TIMES, PEAKS, BASES) if '"round": 2' not in ln],  # a gap
    ],
)
def test_summarise_refuses_incomplete_logs(lines: list[str]) -> None:
    with pytest.raises(fs.FlowerRunError):
        fs.summarise(fs.parse_log(lines), nodes=100, cohort=10)


@pytest.mark.parametrize(
    "line", ["not json", '{"no": "event"}', '{"event": "mark", "round": 0}', "[1, 2]"]
)
def test_parse_log_rejects_malformed_lines(line: str) -> None:
    with pytest.raises(fs.FlowerRunError):
        fs.parse_log([line])


@settings(max_examples=50, deadline=None)
@given(
    st.lists(
        st.tuples(st.floats(0, 50, allow_nan=False), st.floats(0, 50, allow_nan=False)),
        min_size=3, max_size=8,
    )
)  # fmt: skip
def test_per_round_cpu_telescopes(steps: list[tuple[float, float]]) -> None:
    """The mean over measured rounds is (CPU at the last mark - CPU at mark 1) / rounds."""
    cpus, a, b = [], 0.0, 0.0
    for da, db in steps:
        a, b = a + da, b + db
        cpus.append({"11": a, "12": b})
    n = len(cpus)
    log = fs.parse_log(_log(cpus, [float(i) for i in range(n)], [1] * n, [0] * n))
    row = fs.summarise(log, nodes=10, cohort=1)
    expect = (sum(cpus[-1].values()) - sum(cpus[1].values())) / (n - 2)
    assert row["coordinator_cpu_s_per_round"] == pytest.approx(expect, rel=1e-9, abs=1e-9)
    assert row["rounds_measured"] == n - 2
    assert row["wall_s_per_round"] == pytest.approx(1.0)


def test_ratio_row() -> None:
    fedkit = {"clients": 100, "cohort": 10, "fold": "arrival",
              "coordinator_cpu_s_per_round": 0.3, "wall_s_per_round": 2.0}  # fmt: skip
    flower = {"clients": 100, "cohort": 10, "coordinator_cpu_s_per_round": 2.4,
              "coordinator_cpu_s_per_round_less_idle": 0.9, "wall_s_per_round": 12.0}  # fmt: skip
    q = fs.ratio_row(fedkit, flower)
    # 2.4 / 0.3 = 8; 0.9 / 0.3 = 3; 12 / 2 = 6
    assert q["cpu_ratio"] == pytest.approx(8.0) and q["wall_ratio"] == pytest.approx(6.0)
    assert q["cpu_ratio_less_idle"] == pytest.approx(3.0)
    assert q["fedkit_fold"] == "arrival"
    with pytest.raises(ValueError):
        fs.ratio_row({**fedkit, "cohort": 100, "clients": 1000}, flower)


def test_memory_guard() -> None:
    # 100 SuperNodes (100 MiB each) + 10 SuperExecs (95 MiB) + server 700 MiB = 11,650 MiB.
    assert fs.memory_needed(100, 10) == 11_650 * MIB
    fs.check_memory(100, 10, 16 * 1024 * MIB)  # 80% of 16 GiB = 13,107 MiB
    with pytest.raises(fs.FlowerRunError, match="larger machine"):
        fs.check_memory(100, 10, 12 * 1024 * MIB)  # 80% of 12 GiB = 9,830 MiB
    with pytest.raises(fs.FlowerRunError):  # C = 1,000: ~99 GiB of SuperNodes
        fs.check_memory(1000, 100, 64 * 1024 * MIB)


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_close_kills_detached_descendants(tmp_path: Path) -> None:
    """A child that starts its own session (as Flower's SuperExec does) is killed too."""
    script = (
        "import subprocess, sys, time\n"
        "p = subprocess.Popen(['sleep', '120'], start_new_session=True)\n"
        "print(p.pid, flush=True)\n"
        "time.sleep(120)\n"
    )
    procs = fs.Processes(dict(os.environ), tmp_path)
    parent = procs.start("parent", [sys.executable, "-c", script])
    log = tmp_path / "parent.log"
    deadline = time.monotonic() + 30
    while not log.read_text().strip() and time.monotonic() < deadline:
        time.sleep(0.05)
    child = int(log.read_text().split()[0])
    assert child in fs.descendants([parent.pid])
    assert _alive(child) and os.getsid(child) != os.getsid(parent.pid)
    procs.close(grace_s=5)
    assert parent.poll() is not None
    deadline = time.monotonic() + 5
    while _alive(child) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(child)


def test_sigterm_still_kills_what_was_started(tmp_path: Path) -> None:
    """SIGTERM to the benchmark runs its clean-up: the processes it started do not outlive it."""
    script = (
        "import os, sys, time\n"
        "from pathlib import Path\n"
        f"sys.path.insert(0, {str(REPO / 'benchmarks')!r})\n"
        "import flower_scale as fs\n"
        f"procs = fs.Processes(dict(os.environ), Path({str(tmp_path)!r}))\n"
        "with fs.sigterm_as_interrupt():\n"
        "    try:\n"
        "        p = procs.start('sleeper', ['sleep', '120'])\n"
        "        print(p.pid, flush=True)\n"
        "        time.sleep(120)\n"
        "    finally:\n"
        "        procs.close(grace_s=5)\n"
    )
    bench = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert bench.stdout is not None
        sleeper = int(bench.stdout.readline())
        assert _alive(sleeper)
        bench.send_signal(signal.SIGTERM)
        bench.wait(30)
        assert not _alive(sleeper)
    finally:
        if bench.poll() is None:
            bench.kill()
            bench.wait(10)


def test_free_ports_are_distinct() -> None:
    ports = fs.free_ports(50)
    assert len(set(ports)) == 50 and all(0 < p < 65536 for p in ports)


def test_check_names_a_process_that_died(tmp_path: Path) -> None:
    procs = fs.Processes(dict(os.environ), tmp_path)
    p = procs.start(
        "supernode-7", [sys.executable, "-c", "print('port in use'); raise SystemExit(3)"]
    )
    p.wait(30)
    try:
        with pytest.raises(fs.FlowerRunError, match=r"supernode-7 exited \(3\)(.|\n)*port in use"):
            fs.wait_log(tmp_path / "never.jsonl", "done", 30, procs.check)
    finally:
        procs.close()


def test_wait_port_is_bounded() -> None:
    port = fs.free_port()
    t0 = time.monotonic()
    with pytest.raises(fs.FlowerRunError, match="nothing listens"):
        fs.wait_port(port, 0.5)
    assert time.monotonic() - t0 < 5
    with pytest.raises(fs.FlowerRunError, match="exited"):
        fs.wait_port(port, 30, alive=lambda: False)


def test_flower_env_isolates_the_venv(tmp_path: Path) -> None:
    env = fs.flower_env(tmp_path / "venv" / "bin", tmp_path / "home")
    assert env["PATH"].split(os.pathsep)[0] == str(tmp_path / "venv" / "bin")
    assert env["FLWR_HOME"] == str(tmp_path / "home")
    assert env["FLWR_TELEMETRY_ENABLED"] == "0" and "PYTHONPATH" not in env

"""Flower's deployment engine on deploy_scale's work: the ``--flower`` arm of issue 20.

The same work as ``benchmarks/deploy_scale.py``: McMahan's CNN (1,663,370 float32 parameters,
arrays of the same shapes), no local work, FedAvg over a cohort of 10% of C for R measured rounds
after one warm-up round, nothing else on the server. Flower 1.42's deployment engine runs it:

* one **SuperLink** (``flower-superlink --insecure``, in-memory state), which in its default
  ``subprocess`` isolation starts a ``flower-superexec`` that starts the **ServerApp** process;
* C **SuperNodes**, one process per client (Flower's model: a node is a client, and the strategy
  samples ``fraction_train`` of the *connected* nodes, so C clients need C SuperNodes). In the
  default isolation each also keeps a ``flower-superexec`` that starts a ``flwr-clientapp``
  process per task: about 195 MiB per client, too much for C = 100 on a small machine. So by
  default only the cohort's SuperNodes run ClientApps ("active"); the other C - cohort connect
  in ``process`` isolation with no SuperExec and poll the SuperLink as idle nodes do, and the
  ServerApp samples the cohort from the active ones (``--flower-all-active``: every node active,
  Flower's sampling over all C). A C whose processes would take more than 80% of the available
  memory is refused (C = 1,000 needs about 100 GiB);
* the run is submitted with ``flwr run`` from an app directory this script writes.

The ServerApp is Flower's own ``FedAvg`` strategy (no evaluation) whose ``evaluate_fn`` hook marks
the end of every round: at each mark it reads the CPU time (``utime + stime`` from
``/proc/PID/stat``) of every **server-side** Flower process (the SuperLink, its SuperExec and the
ServerApp itself), and a thread samples their summed resident memory every 5 ms. Before the first
round, with every node connected, it measures the same processes' CPU over 10 idle seconds: the
cost of the nodes' polling (and of the memory sampler), reported as a rate and subtracted, times
each round's wall time, in ``coordinator_cpu_s_per_round_less_idle``. Each ClientApp returns the
arrays it received plus a per-client, per-round constant, so no upload equals another or the
broadcast (Flower's object store is content-addressed: identical arrays would not be sent again,
which a real update never benefits from).

Bytes per client per direction are not measured on the wire (Flower's Fleet API is HTTP through
uvicorn/httpx and exposes no byte counters): they are the serialized sizes of the Flower objects a
train message and its reply consist of (``deflate()`` of every nested object: arrays in 5 MiB chunks
plus headers), without HTTP framing.

Flower is installed by this script into its own virtual environment (``--flower-venv``, by default
``~/.cache/fedkit/flower-venv``; ``flwr==1.42.0`` and numpy), never into the project's. Every
process started is killed (its process group and every descendant) on exit or error, and every
wait is bounded.

    python benchmarks/flower_scale.py --clients 100 [--rounds 3] [--flower-venv PATH]
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

FLWR_VERSION = "1.42.0"
DEFAULT_VENV = Path.home() / ".cache" / "fedkit" / "flower-venv"
APP_PACKAGE = "fkbench"

Shapes = Sequence[tuple[str, Sequence[int]]]


# --------------------------------------------------------------------------- the Flower app


_SERVER_APP = r'''"""ServerApp of fedkit's Flower benchmark (written by benchmarks/flower_scale.py).

Flower's FedAvg samples the cohort from the active nodes (those with ClientApps) once all
num-nodes nodes are connected; evaluate_fn marks each round's end with the CPU seconds of every
server-side process and the peak of their summed memory.
"""

import json
import os
import threading
import time

import numpy as np
from flwr.app import Array, ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg
from flwr.supercore.inflatable.inflatable_object import get_all_nested_objects

from fkbench.shapes import SHAPES

TICK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")


def cpu_s(pid):
    with open(f"/proc/{pid}/stat") as f:
        rest = f.read().rsplit(")", 1)[1].split()
    return (int(rest[11]) + int(rest[12])) / TICK


def rss(pid):
    try:
        with open(f"/proc/{pid}/statm") as f:
            return int(f.read().split()[1]) * PAGE
    except OSError:
        return 0


def descendants(root):
    children = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open(f"/proc/{name}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            children.setdefault(ppid, []).append(int(name))
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(children.get(pid, []))
    return sorted(out)


def command(pid):
    with open(f"/proc/{pid}/cmdline", "rb") as f:
        argv = [a.decode(errors="replace") for a in f.read().split(b"\0") if a]
    return " ".join(os.path.basename(a) for a in argv[:2])


class Meter:
    def __init__(self, pids):
        self.pids = pids
        self.base = self.peak = self.total()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.loop, daemon=True)
        self.thread.start()

    def total(self):
        return sum(rss(p) for p in self.pids)

    def loop(self):
        while not self.stop.wait(0.005):
            self.peak = max(self.peak, self.total())

    def rebase(self):
        self.base = self.peak = self.total()


def message_bytes(content):
    return sum(len(o.deflate()) for o in get_all_nested_objects(content).values())


class ActiveGrid:
    """The grid, with get_node_ids restricted to the nodes that run ClientApps."""

    def __init__(self, grid, active):
        self._grid = grid
        self._active = active

    def get_node_ids(self):
        live = set(self._grid.get_node_ids())
        return [n for n in self._active if n in live]

    def __getattr__(self, name):
        return getattr(self._grid, name)


def wait_nodes(grid, count, timeout):
    deadline = time.monotonic() + timeout
    while len(ids := list(grid.get_node_ids())) < count:
        if time.monotonic() > deadline:
            raise TimeoutError(f"{len(ids)} of {count} nodes connected after {timeout} s")
        time.sleep(0.5)
    return sorted(ids)


app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    cfg = context.run_config
    out = open(str(cfg["out-file"]), "a", buffering=1)
    total, active_n = int(cfg["num-nodes"]), int(cfg["active-nodes"])
    timeout = float(cfg["round-timeout"])
    active = wait_nodes(grid, active_n, timeout)
    out.write(json.dumps({"event": "active", "nodes": len(active)}) + "\n")
    wait_nodes(grid, total, timeout)
    work_grid = grid if active_n >= total else ActiveGrid(grid, active)
    pids = [p for p in descendants(int(cfg["superlink-pid"])) if p != int(cfg["superlink-pid"])]
    pids = [int(cfg["superlink-pid"])] + pids
    if os.getpid() not in pids:
        pids.append(os.getpid())
    meter = Meter(pids)
    out.write(json.dumps({"event": "start", "pids": {p: command(p) for p in pids}}) + "\n")
    idle_s = float(cfg["idle-seconds"])
    if idle_s > 0:  # every node connected, no run traffic: the cost of their polling alone
        t0, before = time.time(), {p: cpu_s(p) for p in pids}
        time.sleep(idle_s)
        after = {p: cpu_s(p) for p in pids}
        out.write(json.dumps({"event": "idle", "seconds": time.time() - t0, "before": before,
                              "after": after}) + "\n")

    def mark(server_round, arrays):
        now = time.time()
        cpu = {p: cpu_s(p) for p in pids}
        peak, base = meter.peak, meter.base
        if server_round == 1:
            meter.rebase()
        out.write(json.dumps({"event": "mark", "round": server_round, "time": now, "cpu": cpu,
                              "peak_rss": peak, "base_rss": base}) + "\n")
        return None

    rng = np.random.default_rng(0)
    arrays = ArrayRecord({name: Array(rng.standard_normal(shape, dtype=np.float32))
                          for name, shape in SHAPES})
    strategy = FedAvg(fraction_train=int(cfg["cohort"]) / active_n, fraction_evaluate=0.0,
                      min_train_nodes=int(cfg["cohort"]), min_available_nodes=active_n)
    result = strategy.start(grid=work_grid, initial_arrays=arrays,
                            num_rounds=int(cfg["num-server-rounds"]), timeout=timeout,
                            evaluate_fn=mark)
    meter.stop.set()
    down = message_bytes(RecordDict({"arrays": arrays}))
    up = message_bytes(RecordDict({"arrays": result.arrays,
                                   "metrics": MetricRecord({"num-examples": 1})}))
    model = sum(int(np.prod(shape)) * 4 for _, shape in SHAPES)
    hwm = {}
    for p in pids:
        with open(f"/proc/{p}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    hwm[p] = int(line.split()[1]) * 1024
    out.write(json.dumps({"event": "done", "down_bytes": down, "up_bytes": up,
                          "model_bytes": model, "vm_hwm": hwm}) + "\n")
    out.close()
'''

_CLIENT_APP = r'''"""ClientApp of fedkit's Flower benchmark (written by benchmarks/flower_scale.py).

No local work: the reply is the received arrays plus a constant distinct per node and round (so
Flower's content-addressed object store cannot skip the upload as a duplicate).
"""

import numpy as np
from flwr.app import Array, ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

app = ClientApp()


@app.train()
def train(msg: Message, context: Context) -> Message:
    received = msg.content["arrays"]
    server_round = int(msg.content["config"]["server-round"])
    shift = np.float32(1e-3 * (1 + context.node_id % 997) + server_round)
    arrays = ArrayRecord({name: Array(received[name].numpy() + shift) for name in received})
    metrics = MetricRecord({"num-examples": 1})
    return Message(content=RecordDict({"arrays": arrays, "metrics": metrics}), reply_to=msg)
'''


def shapes_module(shapes: Shapes) -> str:
    """The generated ``fkbench/shapes.py``: the model's array names and shapes as a literal."""
    literal = [(str(name), [int(d) for d in shape]) for name, shape in shapes]
    doc = '"""Array names and shapes of the benchmark model (generated)."""'
    return f"{doc}\n\nSHAPES = {literal!r}\n"


@dataclass(frozen=True)
class AppConfig:
    """The run config of the generated app.

    ``nodes`` SuperNodes connect; the first ``active`` to connect run ClientApps and the cohort is
    sampled from them (``active == nodes``: Flower's own sampling over every node); ``rounds``
    counts every server round, the warm-up included.
    """

    nodes: int
    active: int
    cohort: int
    rounds: int
    out_file: Path
    superlink_pid: int
    round_timeout_s: float = 600.0
    idle_s: float = 10.0

    def __post_init__(self) -> None:
        if not 1 <= self.cohort <= self.active <= self.nodes or self.rounds < 1:
            raise ValueError(f"need 1 <= cohort <= active <= nodes and rounds >= 1: {self}")


def pyproject(cfg: AppConfig) -> str:
    """The Flower app's ``pyproject.toml`` (FAB metadata, components and run config)."""
    return f"""[build-system]
requires = ["hatchling"]
build-backend = "hatchling.build"

[project]
name = "{APP_PACKAGE}"
version = "1.0.0"
description = "fedkit deploy_scale benchmark on Flower's deployment engine"
license = "Apache-2.0"
dependencies = ["flwr=={FLWR_VERSION}", "numpy"]

[tool.hatch.build.targets.wheel]
packages = ["."]

[tool.flwr.app]
publisher = "fedkit"

[tool.flwr.app.components]
serverapp = "{APP_PACKAGE}.server:app"
clientapp = "{APP_PACKAGE}.client:app"

[tool.flwr.app.config]
num-server-rounds = {cfg.rounds}
cohort = {cfg.cohort}
num-nodes = {cfg.nodes}
active-nodes = {cfg.active}
round-timeout = {float(cfg.round_timeout_s)!r}
out-file = {json.dumps(str(cfg.out_file))}
superlink-pid = {cfg.superlink_pid}
idle-seconds = {float(cfg.idle_s)!r}
"""


def app_files(shapes: Shapes, cfg: AppConfig) -> dict[str, str]:
    """Every file of the generated Flower app, by path relative to the app directory."""
    return {
        "pyproject.toml": pyproject(cfg),
        f"{APP_PACKAGE}/__init__.py": '"""fedkit benchmark Flower app (generated)."""\n',
        f"{APP_PACKAGE}/shapes.py": shapes_module(shapes),
        f"{APP_PACKAGE}/server.py": _SERVER_APP,
        f"{APP_PACKAGE}/client.py": _CLIENT_APP,
    }


def flower_config(port: int) -> str:
    """``$FLWR_HOME/config.toml``: the SuperLink connection ``flwr run`` submits to."""
    return (
        '[superlink]\ndefault = "bench"\n\n'
        f'[superlink.bench]\naddress = "127.0.0.1:{port}"\ninsecure = true\n'
    )


# --------------------------------------------------------------------------- the table math


@dataclass(frozen=True)
class Mark:
    """One ``evaluate_fn`` mark: the end of ``round`` (0 is the start of round 1)."""

    round: int
    time: float
    cpu: Mapping[str, float]
    peak_rss: int
    base_rss: int


@dataclass(frozen=True)
class ServerLog:
    """What the ServerApp wrote: processes, round marks and the closing record."""

    pids: Mapping[str, str]
    marks: Sequence[Mark]
    done: Mapping[str, Any] = field(default_factory=dict)
    idle_s: float = 0.0
    idle_cpu_s: float = 0.0


class FlowerRunError(RuntimeError):
    """The Flower arm did not complete (a process died, a wait timed out, a log was malformed)."""


def parse_log(lines: Iterable[str]) -> ServerLog:
    """Parse the ServerApp's JSON-lines log; raises ``FlowerRunError`` on a malformed record."""
    pids: dict[str, str] = {}
    marks: list[Mark] = []
    done: dict[str, Any] = {}
    idle_s = idle_cpu_s = 0.0
    for line in lines:
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
            if rec["event"] == "start":
                pids = {str(k): str(v) for k, v in rec["pids"].items()}
            elif rec["event"] == "mark":
                marks.append(
                    Mark(round=int(rec["round"]), time=float(rec["time"]),
                         cpu={str(k): float(v) for k, v in rec["cpu"].items()},
                         peak_rss=int(rec["peak_rss"]), base_rss=int(rec["base_rss"]))
                )  # fmt: skip
            elif rec["event"] == "idle":
                idle_s = float(rec["seconds"])
                idle_cpu_s = sum(float(v) for v in rec["after"].values()) - sum(
                    float(v) for v in rec["before"].values()
                )
            elif rec["event"] == "done":
                done = dict(rec)
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise FlowerRunError(f"malformed ServerApp log line: {line[:200]!r}") from exc
    return ServerLog(pids=pids, marks=marks, done=done, idle_s=idle_s, idle_cpu_s=idle_cpu_s)


def summarise(log: ServerLog, *, nodes: int, cohort: int) -> dict[str, Any]:
    """Per-round means over the measured rounds (every round after the first, warm-up, one).

    Round r's cost is mark r minus mark r-1: CPU summed over the server-side processes, wall time
    between the marks. Memory: the highest summed RSS seen after the warm-up round's mark, above
    the level at that mark. Idle: the server side's CPU per second with every node connected and
    no run traffic (the nodes' polling), and the per-round CPU less that rate times the round's
    wall time (what the round's own messages cost).
    """
    marks = sorted(log.marks, key=lambda m: m.round)
    if [m.round for m in marks] != list(range(len(marks))) or len(marks) < 3:
        raise FlowerRunError(f"need marks 0..R with R >= 2, got {[m.round for m in marks]}")
    if not log.done:
        raise FlowerRunError("the ServerApp did not finish (no closing record)")
    measured = list(itertools.pairwise(marks[1:]))
    cpu = [sum(b.cpu.values()) - sum(a.cpu.values()) for a, b in measured]
    walls = [b.time - a.time for a, b in measured]
    per_process = {
        log.pids.get(p, p): statistics.mean(b.cpu[p] - a.cpu[p] for a, b in measured)
        for p in marks[0].cpu
    }
    model = int(log.done["model_bytes"])
    peak_after = max(m.peak_rss for m in marks[2:])
    idle_rate = log.idle_cpu_s / log.idle_s if log.idle_s > 0 else 0.0
    return {
        "engine": "flower",
        "flwr": FLWR_VERSION,
        "clients": nodes,
        "cohort": cohort,
        "rounds_measured": len(cpu),
        "model_bytes": model,
        "coordinator_cpu_s_per_round": statistics.mean(cpu),
        "coordinator_cpu_s_per_process": per_process,
        "wall_s_per_round": statistics.mean(walls),
        "idle_cpu_s_per_s": idle_rate,
        "coordinator_cpu_s_per_round_less_idle": statistics.mean(cpu)
        - idle_rate * statistics.mean(walls),
        "down_bytes_per_client": int(log.done["down_bytes"]),
        "up_bytes_per_client": int(log.done["up_bytes"]),
        "down_ratio": int(log.done["down_bytes"]) / model,
        "up_ratio": int(log.done["up_bytes"]) / model,
        # marks after the warm-up carry the level the meter was reset to at mark 1
        "coordinator_peak_rss_above_start_mib": (peak_after - marks[2].base_rss) / 2**20,
        "server_vm_hwm_mib": sum(int(v) for v in log.done.get("vm_hwm", {}).values()) / 2**20,
    }


def ratio_row(fedkit: Mapping[str, Any], flower: Mapping[str, Any]) -> dict[str, Any]:
    """Flower over fedkit, per round, at the same C and cohort: how many times cheaper fedkit is.

    ``cpu_ratio_less_idle`` leaves Flower's idle-polling CPU out (fedkit's is kept in).
    """
    if (fedkit["clients"], fedkit["cohort"]) != (flower["clients"], flower["cohort"]):
        raise ValueError("the two arms must have the same clients and cohort")
    fedkit_cpu = fedkit["coordinator_cpu_s_per_round"]
    return {
        "clients": fedkit["clients"],
        "cohort": fedkit["cohort"],
        "fedkit_fold": fedkit.get("fold"),
        "fedkit_transport": fedkit.get("transport", "grpc"),
        "cpu_ratio": flower["coordinator_cpu_s_per_round"] / fedkit_cpu,
        "cpu_ratio_less_idle": flower["coordinator_cpu_s_per_round_less_idle"] / fedkit_cpu,
        "wall_ratio": flower["wall_s_per_round"] / fedkit["wall_s_per_round"],
    }


# --------------------------------------------------------------------------- processes


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now (the OS picks it)."""
    return free_ports(1)[0]


def free_ports(n: int) -> list[int]:
    """``n`` distinct TCP ports free on 127.0.0.1 now (all held open until all are picked)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            socks.append(s)
            s.bind(("127.0.0.1", 0))
        return [int(s.getsockname()[1]) for s in socks]
    finally:
        for s in socks:
            s.close()


def wait_port(port: int, timeout_s: float, alive: Any = None) -> None:
    """Wait until 127.0.0.1:``port`` accepts connections (bounded; ``alive()`` checked)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if alive is not None and not alive():
            raise FlowerRunError(f"the process meant to listen on {port} exited")
        with socket.socket() as s:
            s.settimeout(0.5)
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    raise FlowerRunError(f"nothing listens on 127.0.0.1:{port} after {timeout_s:.0f} s")


def _children() -> dict[int, list[int]]:
    out: dict[int, list[int]] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        out.setdefault(ppid, []).append(int(name))
    return out


def descendants(roots: Iterable[int]) -> list[int]:
    """``roots`` and every live process below them (from ``/proc``)."""
    children = _children()
    seen: list[int] = []
    todo = list(roots)
    while todo:
        pid = todo.pop()
        if pid in seen:
            continue
        seen.append(pid)
        todo.extend(children.get(pid, []))
    return seen


class Processes:
    """Processes started for one run, each in its own session; ``close`` kills them all.

    Flower's SuperLink and SuperNodes start their SuperExec detached (a new session), so closing
    also walks ``/proc`` for every descendant and signals each one: SIGTERM, a bounded wait, then
    SIGKILL.
    """

    def __init__(self, env: Mapping[str, str], logs: Path) -> None:
        self.env = dict(env)
        self.logs = logs
        self.procs: list[subprocess.Popen[bytes]] = []
        self.names: list[str] = []

    def start(self, name: str, argv: Sequence[str]) -> subprocess.Popen[bytes]:
        """Start ``argv`` in a new session, stdout and stderr to ``logs/name.log``."""
        with open(self.logs / f"{name}.log", "wb") as log:
            proc = subprocess.Popen(list(argv), env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, start_new_session=True)  # fmt: skip
        self.procs.append(proc)
        self.names.append(name)
        return proc

    def check(self) -> None:
        """Raise ``FlowerRunError`` naming the first started process that has exited."""
        for name, proc in zip(self.names, self.procs, strict=True):
            if proc.poll() is not None:
                tail = (self.logs / f"{name}.log").read_text(errors="replace")[-1500:]
                raise FlowerRunError(f"{name} exited ({proc.returncode}); its log ends:\n{tail}")

    def close(self, grace_s: float = 5.0) -> None:
        """Kill every process started and every descendant (bounded)."""
        pids = descendants(p.pid for p in self.procs if p.poll() is None)
        for p in self.procs:
            if p.poll() is None:
                _signal_group(p.pid, signal.SIGTERM)
        for pid in pids:
            _signal(pid, signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        for p in self.procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.wait(max(0.0, deadline - time.monotonic()))
        for pid in descendants(pids):
            _signal(pid, signal.SIGKILL)
        for p in self.procs:
            if p.poll() is None:
                _signal_group(p.pid, signal.SIGKILL)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    p.wait(5)


def _signal(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(pid, sig)


def _signal_group(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)


def _interrupt(signum: int, _frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """Within the block, SIGTERM raises ``KeyboardInterrupt`` so ``finally`` clean-ups run."""
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


# Private memory of one idle process, measured with flwr 1.42 on Python 3.11 (smaps_rollup Pss):
SUPERNODE_BYTES = 100 * 2**20
SUPEREXEC_BYTES = 95 * 2**20
SERVER_BYTES = 700 * 2**20  # SuperLink + its SuperExec + ServerApp, the model in flight


def memory_needed(nodes: int, active: int) -> int:
    """Bytes a run with ``nodes`` SuperNodes, ``active`` of them with a SuperExec, needs."""
    return nodes * SUPERNODE_BYTES + active * SUPEREXEC_BYTES + SERVER_BYTES


def mem_available() -> int:
    """``MemAvailable`` from ``/proc/meminfo``, in bytes."""
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    raise FlowerRunError("no MemAvailable in /proc/meminfo")


def check_memory(nodes: int, active: int, available: int) -> None:
    """Refuse a run that would take more than 80% of the memory ``available`` now."""
    need = memory_needed(nodes, active)
    if need > 0.8 * available:
        raise FlowerRunError(
            f"{nodes} SuperNodes ({active} with a SuperExec) need about {need / 2**30:.1f} GiB, "
            f"more than 80% of the {available / 2**30:.1f} GiB available: Flower runs a process "
            "per client, so this C needs a larger machine"
        )


def ensure_venv(path: Path) -> Path:
    """A virtual environment at ``path`` with Flower importable; created (flwr pinned) if absent.

    Returns its ``bin`` directory.
    """
    try:
        return _ensure_venv(path)
    except (subprocess.SubprocessError, OSError) as exc:
        raise FlowerRunError(f"no Flower environment at {path}: {exc}") from exc


def _ensure_venv(path: Path) -> Path:
    bin_dir = path / "bin"
    if not (bin_dir / "flower-superlink").exists():
        print(f"installing flwr=={FLWR_VERSION} into {path} ...", flush=True)
        subprocess.run([sys.executable, "-m", "venv", str(path)], check=True, timeout=300)
        subprocess.run([str(bin_dir / "python"), "-m", "pip", "install", "--quiet",
                        f"flwr=={FLWR_VERSION}", "numpy"], check=True, timeout=1800)  # fmt: skip
    version = subprocess.run(
        [str(bin_dir / "python"), "-c", "import flwr; print(flwr.__version__)"],
        check=True, timeout=120, capture_output=True, text=True,
    ).stdout.strip()  # fmt: skip
    if version != FLWR_VERSION:
        raise FlowerRunError(f"{path} has flwr {version}, this benchmark is written for "
                             f"{FLWR_VERSION}")  # fmt: skip
    return bin_dir


def flower_env(bin_dir: Path, home: Path) -> dict[str, str]:
    """The environment of every Flower process: its venv first on PATH, its own FLWR_HOME."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.update(
        PATH=f"{bin_dir}{os.pathsep}{env.get('PATH', '')}",
        VIRTUAL_ENV=str(bin_dir.parent),
        FLWR_HOME=str(home),
        FLWR_TELEMETRY_ENABLED="0",
        FLWR_DISABLE_UPDATE_CHECK="1",
        OMP_NUM_THREADS="1",
        OPENBLAS_NUM_THREADS="1",
    )
    return env


def wait_log(path: Path, event: str, timeout_s: float, check: Any) -> None:
    """Wait until the ServerApp's log at ``path`` holds an ``event`` record (bounded; ``check()``
    raises if a process it needs has died)."""
    deadline = time.monotonic() + timeout_s
    needle = f'"event": "{event}"'
    while time.monotonic() < deadline:
        if path.exists() and needle in path.read_text():
            return
        check()
        time.sleep(0.5)
    raise FlowerRunError(f"no {event!r} record from the ServerApp after {timeout_s:.0f} s")


def run_flower(
    shapes: Shapes,
    *,
    clients: int,
    rounds: int,
    venv: Path,
    all_active: bool = False,
    timeout_s: float = 1800.0,
) -> dict[str, Any]:
    """One Flower run: SuperLink, ``clients`` SuperNodes, ``rounds`` + 1 rounds; the summary row.

    Unless ``all_active``, only the cohort's SuperNodes run ClientApps (default ``subprocess``
    isolation: a SuperExec each, a ClientApp process per task); the others connect in ``process``
    isolation with no SuperExec, so they poll the SuperLink like any idle node but cost no
    ClientApp memory, and the ServerApp samples the cohort from the active ones.
    """
    cohort = max(1, clients // 10)
    active = clients if all_active else cohort
    check_memory(clients, active, mem_available())
    bin_dir = ensure_venv(venv)
    work = Path(tempfile.mkdtemp(prefix="fedkit-flower-"))
    home, logs, app = work / "home", work / "logs", work / "app"
    for d in (home, logs, app):
        d.mkdir()
    procs = Processes(flower_env(bin_dir, home), logs)
    with sigterm_as_interrupt():
        return _run(shapes, procs, work, bin_dir, clients=clients, rounds=rounds, cohort=cohort,
                    active=active, timeout_s=timeout_s)  # fmt: skip


def _run(
    shapes: Shapes,
    procs: Processes,
    work: Path,
    bin_dir: Path,
    *,
    clients: int,
    rounds: int,
    cohort: int,
    active: int,
    timeout_s: float,
) -> dict[str, Any]:
    """``run_flower``'s body: start, submit, wait, summarise; kill everything on the way out."""
    home, logs, app = work / "home", work / "logs", work / "app"
    out_file = work / "server.jsonl"
    try:
        port = free_port()
        (home / "config.toml").write_text(flower_config(port))
        link = procs.start("superlink", [
            str(bin_dir / "flower-superlink"), "--insecure", "--host", "127.0.0.1",
            "--port", str(port), "--disable-runtime-dependency-installation",
        ])  # fmt: skip

        def alive() -> bool:
            return link.poll() is None

        wait_port(port, 120, alive=alive)

        runtime_ports = free_ports(clients)

        def supernode(i: int, isolation: str) -> None:
            procs.start(f"supernode-{i}", [
                str(bin_dir / "flower-supernode"), "--insecure", "--isolation", isolation,
                "--superlink", f"127.0.0.1:{port}", "--port", str(runtime_ports[i]),
                "--node-config", f"partition-id={i} num-partitions={clients}",
            ])  # fmt: skip

        for i in range(active):
            supernode(i, "subprocess")
        cfg = AppConfig(nodes=clients, active=active, cohort=cohort, rounds=rounds + 1,
                        out_file=out_file, superlink_pid=link.pid)  # fmt: skip
        for rel, text in app_files(shapes, cfg).items():
            (app / rel).parent.mkdir(parents=True, exist_ok=True)
            (app / rel).write_text(text)
        submit = subprocess.run([str(bin_dir / "flwr"), "run", str(app), "bench"],
                                env=procs.env, capture_output=True, text=True,
                                timeout=300)  # fmt: skip
        (logs / "flwr-run.log").write_text(submit.stdout + submit.stderr)
        if submit.returncode != 0:
            raise FlowerRunError(f"flwr run failed ({submit.returncode}): {submit.stderr[-2000:]}")
        wait_log(out_file, "active", 600, procs.check)
        for i in range(active, clients):
            supernode(i, "process")
        wait_log(out_file, "done", timeout_s, procs.check)
        log = parse_log(out_file.read_text().splitlines())
        row = summarise(log, nodes=clients, cohort=cohort)
        row["active_nodes"] = active
        row["processes"] = {
            "server": sorted(log.pids.values()),
            "per_active_node": ["flower-supernode", "flower-superexec", "flwr-clientapp per task"],
            "per_idle_node": ["flower-supernode (process isolation)"],
        }
        return row
    except (subprocess.SubprocessError, OSError) as exc:
        raise FlowerRunError(f"{type(exc).__name__}: {exc}; logs in {logs}") from exc
    finally:
        procs.close()
        if os.environ.get("FEDKIT_KEEP_FLOWER_LOGS") != "1":
            shutil.rmtree(work, ignore_errors=True)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Command line of the standalone Flower arm."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--clients", type=int, nargs="+", default=[100],
                    help="SuperNodes (one per client); the cohort is 10%%")  # fmt: skip
    ap.add_argument("--rounds", type=int, default=3, help="measured rounds (plus one warm-up)")
    ap.add_argument("--flower-venv", type=Path, default=DEFAULT_VENV,
                    help=f"a virtual env with flwr=={FLWR_VERSION} (made if absent)")  # fmt: skip
    ap.add_argument("--flower-all-active", action="store_true",
                    help="every SuperNode runs ClientApps (2 processes per client) and Flower "
                    "samples the cohort from all of them")  # fmt: skip
    ap.add_argument("--json-out", type=Path, default=Path("benchmarks/results/flower_scale.json"))
    args = ap.parse_args(argv)
    if any(c < 10 for c in args.clients) or args.rounds < 1:
        ap.error("--clients must be >= 10 (a cohort of at least one) and --rounds >= 1")
    return args


def main(argv: Sequence[str] | None = None) -> None:
    """Run the Flower arm alone and print its rows."""
    from deploy_scale import cnn_params  # benchmarks/ is on sys.path when run as a script

    args = parse_args(argv)
    shapes = [(k, tuple(v.shape)) for k, v in cnn_params().items()]
    rows = [run_flower(shapes, clients=c, rounds=args.rounds, venv=args.flower_venv,
                       all_active=args.flower_all_active) for c in args.clients]  # fmt: skip
    for r in rows:
        print(json.dumps(r))
    args.json_out.parent.mkdir(parents=True, exist_ok=True)
    args.json_out.write_text(json.dumps({"rows": rows, "load_avg_1min": os.getloadavg()[0]},
                                        indent=2) + "\n")  # fmt: skip


if __name__ == "__main__":
    main()

"""``fedkit launch``: a coordinator and N local worker processes, for demos and tests.

The coordinator runs in this process on a free loopback port; each worker is a separate Python
process (one torch thread each) serving one client id, with its log in ``OUT/worker-<id>.log``.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from fedkit.net.coordinator import Summary, serve
from fedkit.net.experiment import Experiment
from fedkit.net.transport import Security


def worker_command(
    *, address: str, experiment: Path, client_id: int, data_root: Path | None
) -> list[str]:
    """The command line of one local worker process."""
    cmd = [
        sys.executable, "-m", "fedkit.net", "worker", "--coordinator", address,
        "--experiment", str(experiment), "--client-id", str(client_id),
    ]  # fmt: skip
    if data_root is not None:
        cmd += ["--data", str(data_root)]
    return cmd


def worker_env() -> dict[str, str]:
    """Environment for worker processes: one thread per process (shared small machines)."""
    env = dict(os.environ)
    env.update({"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"})
    return env


def launch(
    exp: Experiment,
    experiment_path: Path,
    *,
    workers: int,
    out_dir: Path,
    data_root: Path | None = None,
) -> Summary:
    """Run ``exp`` with a local coordinator and ``workers`` worker processes."""
    num_clients = exp.data.num_clients
    if workers != num_clients:
        raise ValueError(
            f"--workers {workers} must equal data.num_clients = {num_clients}: each local worker "
            "serves one client id"
        )
    out_dir.mkdir(parents=True, exist_ok=True)
    procs: list[subprocess.Popen[bytes]] = []

    def start_workers(port: int) -> None:
        for cid in range(workers):
            log = (out_dir / f"worker-{cid}.log").open("ab")
            cmd = worker_command(
                address=f"127.0.0.1:{port}",
                experiment=experiment_path,
                client_id=cid,
                data_root=data_root,
            )
            procs.append(
                subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=worker_env())
            )
            log.close()

    try:
        return serve(
            exp,
            listen="127.0.0.1:0",
            security=Security(),
            out_dir=out_dir,
            data_root=data_root,
            on_listening=start_workers,
            min_workers=workers,
        )
    finally:
        for p in procs:
            try:
                p.wait(timeout=15)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()

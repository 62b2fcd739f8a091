"""Scale: memory grows with the cohort, not the population; round time does not grow with it.

A fresh interpreter builds MNIST-shaped data (60,000 × 784 float32, about 190 MB) split into
10,000 clients, runs FedAvg rounds of 100 clients with the 2NN and reports its peak RSS; the same
cohort work on a population of 1,000 clients gives the reference round time.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

PROBE = r"""
import json, resource, statistics, time, sys
import torch
torch.set_num_threads(1)
from fedkit.algorithms import FedAvg
from fedkit.data.store import ClientStore
from fedkit.local import LocalTraining
from fedkit.params import model_params
from fedkit.run import RunConfig, run
from fedkit.sim.factory import ModelSpec, build_executor

kind = sys.argv[1]
g = torch.Generator().manual_seed(0)
x = torch.randn(60_000, 1, 28, 28, generator=g)
y = torch.randint(0, 10, (60_000,), generator=g)
spec = ModelSpec(name="mlp", num_classes=10, input_shape=(1, 28, 28))
out = {}
for population in (1_000, 10_000):
    parts = [torch.arange(6 * c, 6 * c + 6) for c in range(population)]
    store = ClientStore(x, y, parts)
    ex = build_executor(kind, store=store, model_fn=spec)
    times = []
    run(FedAvg(local=LocalTraining(lr=0.05, epochs=1, batch_size=10)), ex,
        model_params(spec.build()),
        RunConfig(rounds=6, clients_per_round=100, seed=0, eval_every=0),
        callbacks=[lambda rec, p: times.append(rec.wall_seconds)])
    out[population] = statistics.median(times[1:])
# Peak RSS of this process image: VmHWM. (ru_maxrss would also count the pytest parent's
# memory at fork time, which Linux carries across exec.)
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
try:
    with open("/proc/self/status") as status:
        peak = next(int(l.split()[1]) / 1024 for l in status if l.startswith("VmHWM:"))
except (OSError, StopIteration):
    pass
out["max_rss_mb"] = peak
print(json.dumps(out))
"""


@pytest.mark.parametrize("kind", ["serial", pytest.param("vectorized", marks=pytest.mark.slow)])
def test_ten_thousand_clients_fit_in_two_gigabytes_and_round_time_ignores_population(
    kind: str,
) -> None:
    repo = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": str(repo / "src") + os.pathsep + str(repo)}
    proc = subprocess.run(
        [sys.executable, "-c", PROBE, kind],
        capture_output=True,
        text=True,
        env=env,
        cwd=repo,
        timeout=240,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    assert res["max_rss_mb"] < 2048, res
    # same cohort work: the 10x larger population may not cost more per round (noise allowance)
    assert res["10000"] < 2.0 * res["1000"] + 0.05, res

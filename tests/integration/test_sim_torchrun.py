"""The distributed executor launched by ``torchrun`` (the multi-node path), on two local ranks.

Every rank builds the same store, model and algorithm; rank 0 drives the run loop and shuts the
others down; the result equals the serial executor's bit for bit on this problem.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = r"""
import json
import torch
import torch.distributed as dist
from fedkit.algorithms import Scaffold
from fedkit.local import LocalTraining
from fedkit.params import model_params
from fedkit.run import RunConfig, run
from fedkit.sim.distributed import DistributedExecutor
from fedkit.sim.serial import SerialExecutor
from tests.helpers.toy import toy_model, toy_store

torch.set_num_threads(1)
dist.init_process_group("gloo")
alg = Scaffold(local=LocalTraining(lr=0.05, epochs=2, batch_size=8))
cfg = RunConfig(rounds=3, clients_per_round=5, seed=4, eval_every=0)
ex = DistributedExecutor(toy_store(8), toy_model())
if ex.rank == 0:
    got = run(alg, ex, model_params(toy_model()), cfg)
    states = ex.client_state_tensors()
    ex.shutdown()
    serial_store = toy_store(8)
    ref = run(alg, SerialExecutor(serial_store, toy_model()), model_params(toy_model()), cfg)
    same_states = states.keys() == serial_store.state_tensors().keys() and all(
        torch.equal(states[k], serial_store.state_tensors()[k]) for k in states
    )
    print(json.dumps({
        "equal": all(torch.equal(ref.params[k], got.params[k]) for k in ref.params),
        "states": same_states,
        "world": dist.get_world_size(),
    }))
else:
    ex.serve(alg)
dist.destroy_process_group()
"""


# The importance-corrected mean: rank 1 serves the algorithm as built (its aggregator not given
# the sampler's inclusion probabilities); rank 0 sends each cohort client's π_k and W with the
# round, so rank 1's clients scale their updates as the serial simulator's do.
IMPORTANCE = r"""
import json
import torch
import torch.distributed as dist
from fedkit.algorithms import FedAvg
from fedkit.local import LocalTraining
from fedkit.params import model_params
from fedkit.run import RunConfig, run
from fedkit.samplers.importance import ImportanceWeighted
from fedkit.samplers.probability import ProbabilitySampler
from fedkit.sampling import Population
from fedkit.sim.distributed import DistributedExecutor
from fedkit.sim.serial import SerialExecutor
from tests.helpers.toy import toy_model, toy_store

torch.set_num_threads(1)
dist.init_process_group("gloo")
alg = FedAvg(local=LocalTraining(lr=0.05, epochs=2, batch_size=8), aggregator=ImportanceWeighted())
cfg = RunConfig(rounds=3, clients_per_round=5, seed=4, eval_every=0)
store = toy_store(8)
kw = dict(
    sampler=ProbabilitySampler(law="power", exponent=1.0),
    population=Population(8, tuple(store.num_examples(k) for k in range(8))),
)
ex = DistributedExecutor(store, toy_model())
if ex.rank == 0:
    got = run(alg, ex, model_params(toy_model()), cfg, **kw)
    ex.shutdown()
    ref = run(alg, SerialExecutor(toy_store(8), toy_model()), model_params(toy_model()), cfg, **kw)
    plain = run(FedAvg(local=alg.local), SerialExecutor(toy_store(8), toy_model()),
                model_params(toy_model()), cfg, **kw)
    print(json.dumps({
        "equal": all(torch.equal(ref.params[k], got.params[k]) for k in ref.params),
        "corrected": not all(torch.allclose(ref.params[k], plain.params[k]) for k in ref.params),
        "world": dist.get_world_size(),
    }))
else:
    ex.serve(alg)
dist.destroy_process_group()
"""


def _torchrun(tmp_path: Path, script_text: str) -> dict[str, object]:
    repo = Path(__file__).resolve().parents[2]
    script = tmp_path / "fedkit_torchrun_probe.py"
    script.write_text(script_text)
    env = {
        **os.environ,
        "PYTHONPATH": str(repo / "src") + os.pathsep + str(repo),
        "GLOO_SOCKET_IFNAME": "lo",
        "OMP_NUM_THREADS": "1",
    }
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node=2",
            str(script),
        ],
        capture_output=True,
        text=True,
        env=env,
        cwd=repo,
        timeout=240,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")][-1]
    return dict(json.loads(line))


@pytest.mark.dist
@pytest.mark.slow
def test_torchrun_two_ranks_equal_serial(tmp_path: Path) -> None:
    assert _torchrun(tmp_path, SCRIPT) == {"equal": True, "states": True, "world": 2}


@pytest.mark.dist
@pytest.mark.slow
def test_torchrun_ranks_apply_the_importance_correction(tmp_path: Path) -> None:
    got = _torchrun(tmp_path, IMPORTANCE)
    assert got == {"equal": True, "corrected": True, "world": 2}

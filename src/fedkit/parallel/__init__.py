"""Data-parallel training track: sync SGD, LARS/LAMB, Local SGD, SlowMo/DiLoCo, async, adaptivity.

K workers train one model on shards of one dataset. ``run_parallel(spec, dataset, model_fn)``
runs a ``ParallelSpec`` either as K replicas in this process (``mode = "replicas"``,
deterministic) or as K gloo processes (``mode = "gloo"``; ``run_rank`` under ``torchrun``), and
returns a ``ParallelResult`` with one ``EvalPoint`` per evaluation: step, samples, epoch, train
loss, test loss/accuracy, measured compute seconds, simulated communication seconds, bytes sent
per worker (the same count for ring and parameter server; and bytes through the server), syncs,
H, batch size, LR.

Experiment files: a ``[parallel]`` table (every field of ``ParallelSpec``; unknown keys are
rejected), with the network in ``[parallel.network]`` (``latency_ms``, ``bandwidth_gbit``)::

    [parallel]
    method = "slowmo"          # see below
    workers = 4                # K
    local_steps = 8            # H
    batch_size = 32            # per worker
    optimizer = "sgd"          # sgd | lars | lamb | adamw
    lr = 0.05
    momentum = 0.9
    lr_warmup_epochs = 1.0
    slow_lr = 1.0              # SlowMo α
    slow_momentum = 0.5        # SlowMo β
    sample_budget = 500000
    eval_every_samples = 50000
    topology = "ring"          # ring | ps  (accounting and simulated clock)
    mode = "replicas"          # replicas | gloo
    [parallel.network]
    latency_ms = 0.05
    bandwidth_gbit = 10.0

A study file (``examples/cifar100_parallel.toml``, read by ``load_study``) adds ``[study]``
(``name``, ``dataset``, ``model``) and ``[[runs]]`` tables, each a ``name`` plus the
``[parallel]`` keys it overrides.

Methods (``method``), with the module holding each update rule:

* ``sync`` — synchronous data-parallel SGD: all-reduce the gradient every step (``trainer``).
* ``local_sgd`` — H local steps, then average the models (Stich 2019; ``trainer``).
* ``post_local_sgd`` — ``post_local_warmup_steps`` synchronous steps, then Local SGD
  (Lin et al., ICLR 2020).
* ``slowmo`` — Local SGD with slow momentum β and slow LR α on the pseudo-gradient
  (Wang et al., ICLR 2020; ``outer``).
* ``diloco`` — Local SGD with outer Nesterov SGD (``outer_lr``, ``outer_momentum``) on the
  pseudo-gradient (Douillard et al. 2023; ``outer``).
* ``async_ps`` — asynchronous parameter server with SSP bounded staleness ``staleness``
  (Ho et al. 2013; ``async_ps``).
* ``adaptive_h`` — AdaComm: H shrinks with the training loss (Wang & Joshi 2019; ``schedule``).
* ``adaptive_batch`` — synchronous SGD whose batch grows where the LR would decay
  (Smith et al., ICLR 2018; ``schedule``).

Inner optimisers: ``sgd`` (torch), ``lars`` and ``lamb`` (``large_batch``, layer-wise trust
ratios), ``adamw`` (torch, DiLoCo's inner optimiser). Communication accounting and the
simulated clock: ``comm``.
"""

from __future__ import annotations

from fedkit.parallel.comm import (
    CommLedger,
    bytes_per_worker,
    directional_bytes,
    model_bytes,
    ps_bytes_per_worker,
    ps_server_bytes,
    ring_bytes_per_worker,
    sync_seconds,
)
from fedkit.parallel.large_batch import LAMB, LARS, lamb_trust_ratio, lars_trust_ratio
from fedkit.parallel.launch import run_gloo, run_parallel, run_rank
from fedkit.parallel.result import EvalPoint, ParallelResult
from fedkit.parallel.spec import METHODS, NetworkSpec, ParallelSpec

__all__ = [
    "LAMB",
    "LARS",
    "METHODS",
    "CommLedger",
    "EvalPoint",
    "NetworkSpec",
    "ParallelResult",
    "ParallelSpec",
    "bytes_per_worker",
    "directional_bytes",
    "lamb_trust_ratio",
    "lars_trust_ratio",
    "model_bytes",
    "ps_bytes_per_worker",
    "ps_server_bytes",
    "ring_bytes_per_worker",
    "run_gloo",
    "run_parallel",
    "run_rank",
    "sync_seconds",
]

"""Simulation executors (serial, vectorised, ``torch.distributed``) and system heterogeneity.

- :mod:`fedkit.sim.serial` — one resident model, clients in turn (the reference).
- :mod:`fedkit.sim.vectorized` — many clients' local SGD as one ``torch.func`` computation.
- :mod:`fedkit.sim.distributed` — K ranks on ``torch.distributed`` (launched by ``torchrun``),
  partial aggregates merged by all-reduce.
- :mod:`fedkit.sim.processes` — ``executor = "processes"``: the same ranks spawned locally.
- :mod:`fedkit.sim.system` — device speed and links, availability, dropout, deadlines,
  stragglers, and the simulated clock.
- :mod:`fedkit.sim.factory` — ``build_executor(kind, ...)``, the runner's entry point.
"""

"""Client samplers beyond uniform selection (chosen under ``[sampler]``; see
:mod:`fedkit.sampling` for the protocol and the :class:`~fedkit.sampling.Population` they read).

* :mod:`~fedkit.samplers.probability`: ``m`` clients with known unequal inclusion probabilities
  (proportional to data size, a power law, explicit weights or a file);
* :mod:`~fedkit.samplers.power_of_choice`: Cho et al. 2020's loss-biased selection;
* :mod:`~fedkit.samplers.availability`: uniform among the clients the system model says are
  reachable this round;
* :mod:`~fedkit.samplers.importance`: the Horvitz–Thompson aggregate that undoes a sampler's
  unequal probabilities (unbiased for the full-participation mean).
"""

"""Decentralised learning without a server: gossip averaging and D-PSGD over a topology.

* :mod:`fedkit.decentral.topology`: communication graphs (ring, 2-D torus, exponential graph,
  random d-regular, fully connected, time-varying one-peer exponential) and their mixing matrices
  (Metropolis–Hastings, uniform neighbour weights).
* :mod:`fedkit.decentral.dpsgd`: D-PSGD (Lian et al. 2017) with local steps between gossip rounds,
  many nodes on one process; consensus distance and bytes per node.
* :mod:`fedkit.decentral.ranks`: the same rounds on ``torch.distributed`` (gloo) ranks, one node
  per rank, exchanging models with their neighbours only (send/recv, no all-reduce).
"""

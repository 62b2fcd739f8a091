"""Vertical federated learning: parties hold different features of the same samples.

* :mod:`fedkit.vertical.psi`: private set intersection (Diffie–Hellman-style commutative blinding
  with X25519) to align samples without sending raw ids.
* :mod:`fedkit.vertical.split`: split learning over column groups — bottom models on the feature
  parties, the label party's top model; activations forward and gradients backward per batch.
* :mod:`fedkit.vertical.service`: feature parties as separate processes over gRPC.
"""

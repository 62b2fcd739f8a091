"""Real data for fedkit: dataset loaders, federated partitions, per-client stores.

Sub-modules (imported on demand, so ``import fedkit.data`` stays cheap):

- :mod:`fedkit.data.datasets`: loaders from canonical files, verified by checksum and cached
  (``load_dataset(name, root=None, **options)``).
- :mod:`fedkit.data.text`: character and word vocabularies, next-token windows.
- :mod:`fedkit.data.partition`: IID, Dirichlet, shards, one-class, quantity-skew and natural splits.
- :mod:`fedkit.data.spec`: the ``[data]`` section of an experiment and ``build_federated``.
- :mod:`fedkit.data.store`: per-client data and persistent client state.
"""

from __future__ import annotations

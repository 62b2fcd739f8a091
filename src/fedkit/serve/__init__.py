"""Serving trained models: bundles (:mod:`.bundle`), export from a run (:mod:`.export`), the
inference endpoint (:mod:`.app`, :mod:`.batching`) and its load test (:mod:`.loadtest`).

This package stands alone from the federated core: it imports neither ``fedkit.sim`` nor
``fedkit.net``.
"""

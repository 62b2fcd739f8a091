"""Serving trained models: bundles (:mod:`.bundle`), the inference endpoint (:mod:`.app`,
:mod:`.predictor`, :mod:`.batching`) and its load test (:mod:`.loadtest`).

This package stands alone from the federated core: it imports neither ``fedkit.sim``,
``fedkit.net`` nor ``fedkit.experiment`` (a run becomes a bundle in
:mod:`fedkit.experiment.export`).
"""

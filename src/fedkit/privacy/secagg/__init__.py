"""Secure aggregation (Bonawitz et al. 2017, "Practical Secure Aggregation for Privacy-Preserving
Machine Learning"; SecAgg+ of Bell et al. 2020): a transport-independent protocol core
(:mod:`.crypto`, :mod:`.shamir`, :mod:`.fixedpoint`, :mod:`.graph`, :mod:`.round`,
:mod:`.messages`, :mod:`.client`, :mod:`.server`), an in-process driver (:mod:`.simulate`) and
the ``secagg`` aggregator stage (:mod:`.stage`). docs/privacy.md, "Secure aggregation", says what
it guarantees and what it does not.
"""

from fedkit.privacy.secagg.errors import AbortReason, SecAggAbort, SecAggError
from fedkit.privacy.secagg.simulate import SecAggSettings, simulate_round

__all__ = ["AbortReason", "SecAggAbort", "SecAggError", "SecAggSettings", "simulate_round"]

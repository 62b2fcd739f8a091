"""Robust aggregation rules (aggregator stages that bound what a few bad clients can do)."""

from fedkit.robust.buffer import Buffered, StackAcc, TooFewUpdatesError
from fedkit.robust.bulyan import Bulyan
from fedkit.robust.krum import Krum
from fedkit.robust.median import CoordinateMedian
from fedkit.robust.trimmed_mean import TrimmedMean

__all__ = [
    "Buffered",
    "Bulyan",
    "CoordinateMedian",
    "Krum",
    "StackAcc",
    "TooFewUpdatesError",
    "TrimmedMean",
]

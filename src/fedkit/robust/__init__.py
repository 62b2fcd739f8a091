"""Robust aggregation rules (aggregator stages that bound what a few bad clients can do)."""

from fedkit.robust.buffer import Buffered, StackAcc, TooFewUpdatesError
from fedkit.robust.bulyan import Bulyan
from fedkit.robust.centered_clip import CenteredClip
from fedkit.robust.geomed import GeometricMedian
from fedkit.robust.krum import Krum
from fedkit.robust.median import CoordinateMedian
from fedkit.robust.norm_bound import NormBound
from fedkit.robust.reweight import HuberReweight
from fedkit.robust.trimmed_mean import TrimmedMean

__all__ = [
    "Buffered",
    "Bulyan",
    "CenteredClip",
    "CoordinateMedian",
    "GeometricMedian",
    "HuberReweight",
    "Krum",
    "NormBound",
    "StackAcc",
    "TooFewUpdatesError",
    "TrimmedMean",
]

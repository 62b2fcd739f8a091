"""Robust aggregation rules (aggregator stages that bound what a few bad clients can do)."""

from fedkit.robust.buffer import Buffered, StackAcc
from fedkit.robust.norm_bound import NormBound
from fedkit.robust.trimmed_mean import TrimmedMean

__all__ = ["Buffered", "NormBound", "StackAcc", "TrimmedMean"]

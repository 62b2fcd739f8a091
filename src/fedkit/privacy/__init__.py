"""Privacy stages of the aggregator chain (clipping; noise and secure sums build on them)."""

from fedkit.privacy.clip import ClipNorm

__all__ = ["ClipNorm"]

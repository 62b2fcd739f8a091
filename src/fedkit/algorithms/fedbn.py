"""FedBN: Li et al. 2021, "FedBN: Federated Learning on Non-IID Features via Local Batch
Normalization".

FedAvg in which every batch-normalisation layer stays local: its affine parameters
(``weight``, ``bias``) and its running statistics (``running_mean``, ``running_var``,
``num_batches_tracked``) are trained and kept by each client and are never averaged; all other
entries are averaged as FedAvg averages them. The client's model — global shared layers with its
own batch-norm layers — is its personal model.

A batch-norm layer is recognised by its ``running_mean`` buffer: every entry of a module that
has one is local (layers built with ``track_running_stats=False`` have no buffer and are shared).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

from torch import Tensor

from fedkit.algorithms.keep_local import KeepLocal

RUNNING_MEAN = ".running_mean"


def batchnorm_keys(params: Mapping[str, Tensor]) -> frozenset[str]:
    """Every entry of a module that keeps running statistics (batch-norm layers)."""
    modules = {k[: -len(RUNNING_MEAN)] for k in params if k.endswith(RUNNING_MEAN)}
    return frozenset(k for k in params if k.rpartition(".")[0] in modules)


@dataclasses.dataclass(frozen=True, kw_only=True)
class FedBN(KeepLocal):
    """FedAvg with local batch-norm layers (see module docstring)."""

    @property
    def name(self) -> str:
        """Algorithm identifier."""
        return "fedbn"

    def local_keys(self, params: Mapping[str, Tensor]) -> frozenset[str]:
        """The batch-norm entries (parameters and running statistics)."""
        keys = batchnorm_keys(params)
        if not keys:
            raise ValueError("fedbn: the model has no batch-norm layer (no '.running_mean')")
        return keys


__all__ = ["FedBN", "batchnorm_keys"]

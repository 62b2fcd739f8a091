"""fedkit: federated and distributed learning on PyTorch.

One algorithm definition (server half and client half in one file) runs in serial simulation,
multi-process simulation on ``torch.distributed`` and a coordinator/worker deployment over gRPC.
See ``DESIGN.md`` in the repository for the architecture.
"""

__version__ = "0.1.0"

"""Federated algorithms, one module each; every module names its paper and update rule."""

from fedkit.algorithms.fedavg import FedAvg, FedOptState, ModelDelta, ModelMessage
from fedkit.algorithms.fedprox import FedProx
from fedkit.algorithms.fedsgd import FedSGD
from fedkit.algorithms.scaffold import Scaffold

__all__ = ["FedAvg", "FedOptState", "FedProx", "FedSGD", "ModelDelta", "ModelMessage", "Scaffold"]

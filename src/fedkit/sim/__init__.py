"""Simulation executors (serial, vectorised, ``torch.distributed``) and system heterogeneity."""

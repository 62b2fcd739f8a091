"""Gloo ranks spawned on this machine over 127.0.0.1: the rank lifecycle shared by the
data-parallel track (:mod:`fedkit.parallel.launch`) and decentralised gossip
(:mod:`fedkit.decentral.ranks`).

A rank joins a ``tcp://127.0.0.1:PORT`` process group with one torch thread, does its work,
leaves together with its peers (a barrier: a rank tearing gloo down while a peer is still in its
last operations can abort the peer), destroys the group, and exits without interpreter teardown,
because gloo's background threads can still be joinable when C++ destructors run at exit, which
aborts a finished rank (seen with torch 2.13, about 1 run in 30: "terminate called without an
active exception").
"""

from __future__ import annotations

import os
import socket
import sys
from collections.abc import Callable
from datetime import timedelta

import torch
import torch.distributed as dist


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def run_loopback_rank(
    rank: int, world: int, port: int, work: Callable[[], None], *, timeout_s: float = 120.0
) -> None:
    """Run ``work`` as rank ``rank`` of ``world`` gloo ranks rendezvousing on ``port``, then
    leave together and exit the process (see the module docstring); an exception from ``work``
    propagates (the spawner reports it) after the group is destroyed."""
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo",
        init_method=f"tcp://127.0.0.1:{port}",
        rank=rank,
        world_size=world,
        timeout=timedelta(seconds=timeout_s),
    )
    try:
        work()
        dist.barrier()
    finally:
        dist.destroy_process_group()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)

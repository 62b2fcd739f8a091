"""Communication accounting and a simulated network clock for data-parallel training.

Bytes per worker per synchronisation of a model of M bytes over K workers. Both topologies count
the same thing — the bytes one worker **sends** (``bytes_per_worker``, the "MB/worker" figures) —
so ring and parameter-server numbers compare directly; each worker receives as much again:

* ring all-reduce (Patarasuk & Yuan 2009): reduce-scatter then all-gather, 2(K−1) rounds of
  M/K bytes each, so a worker sends ``2 (K − 1) / K · M`` (and receives as much);
* parameter server: a worker pushes M (gradient or model) and pulls M, so it sends ``M``
  (and receives ``M``); the server's link carries ``2 K M`` (all pushes in, all pulls out).

``directional_bytes`` gives ``(sent, received)`` per worker: ring ``(2(K−1)/K · M, 2(K−1)/K ·
M)``, parameter server ``(M, M)``.

Local methods synchronise every H steps, so their bytes per step are these divided by H; the
trainer counts actual synchronisations, which also covers adaptive H.

Simulated time of one synchronisation, with latency α and bandwidth b (bytes/s) per link:

* ring: ``2 (K − 1) · (α + M / (K b))`` — 2(K−1) sequential rounds of one M/K chunk;
* parameter server: ``2 α + 2 K M / b`` — the server link carries all K pushes and pulls.

K = 1 costs nothing.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from fedkit.parallel.spec import NetworkSpec


def model_bytes(model: nn.Module) -> int:
    """Bytes of the model's trainable parameters (what one synchronisation moves)."""
    return sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad)


def ring_bytes_per_worker(model_size: int, workers: int) -> float:
    """Bytes one worker sends in one ring all-reduce: 2(K−1)/K · M (it receives as much)."""
    return 2 * (workers - 1) / workers * model_size


def ps_bytes_per_worker(model_size: int, workers: int) -> float:
    """Bytes one worker sends per parameter-server round (its push): M (0 when K = 1).

    It receives as much (the pull), as a ring worker does, so the two compare directly.
    """
    return 0.0 if workers == 1 else float(model_size)


def ps_server_bytes(model_size: int, workers: int) -> float:
    """Bytes through the server link per round, in plus out: 2 K M (0 when K = 1)."""
    return 2 * workers * ps_bytes_per_worker(model_size, workers)


def bytes_per_worker(model_size: int, workers: int, topology: str) -> float:
    """Bytes one worker sends per synchronisation on ``topology`` (``ring`` or ``ps``)."""
    if topology == "ring":
        return ring_bytes_per_worker(model_size, workers)
    if topology == "ps":
        return ps_bytes_per_worker(model_size, workers)
    raise ValueError(f"topology = {topology!r} is invalid; allowed: ring | ps")


def directional_bytes(model_size: int, workers: int, topology: str) -> tuple[float, float]:
    """Bytes one worker sends and receives per synchronisation: ``(up, down)``.

    Both topologies are symmetric for a worker: it receives what it sends.
    """
    sent = bytes_per_worker(model_size, workers, topology)
    return sent, sent


def sync_seconds(model_size: int, workers: int, topology: str, network: NetworkSpec) -> float:
    """Simulated wall time of one synchronisation (see module docstring)."""
    if workers == 1:
        return 0.0
    lat, bw = network.latency_s, network.bandwidth_bytes_per_s
    if topology == "ring":
        return 2 * (workers - 1) * (lat + model_size / (workers * bw))
    if topology == "ps":
        return 2 * lat + ps_server_bytes(model_size, workers) / bw
    raise ValueError(f"topology = {topology!r} is invalid; allowed: ring | ps")


def push_pull_seconds(model_size: int, network: NetworkSpec) -> float:
    """Simulated time of one asynchronous push + pull on an uncontended worker link."""
    return 2 * network.latency_s + 2 * model_size / network.bandwidth_bytes_per_s


@dataclass(kw_only=True)
class CommLedger:
    """Running totals of the communication of one run (per worker unless named otherwise).

    ``bytes_per_worker`` counts bytes sent (equal to ``bytes_up_per_worker``), for both
    topologies; ``server_bytes`` is the parameter server's link, in plus out.
    """

    model_size: int
    workers: int
    topology: str
    network: NetworkSpec
    syncs: int = 0
    bytes_per_worker: float = 0.0
    bytes_up_per_worker: float = 0.0
    bytes_down_per_worker: float = 0.0
    server_bytes: float = 0.0
    comm_seconds: float = 0.0

    def record_sync(self, size: int | None = None) -> None:
        """Account one synchronisation (all-reduce or parameter-server round) of ``size`` bytes
        (the model's size unless given: a compressed gradient's)."""
        size = self.model_size if size is None else size
        self.syncs += 1
        self.bytes_per_worker += bytes_per_worker(size, self.workers, self.topology)
        up, down = directional_bytes(size, self.workers, self.topology)
        self.bytes_up_per_worker += up
        self.bytes_down_per_worker += down
        if self.topology == "ps":
            self.server_bytes += ps_server_bytes(size, self.workers)
        self.comm_seconds += sync_seconds(size, self.workers, self.topology, self.network)

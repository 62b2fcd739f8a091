"""Two "hosts" on one machine for torchrun runs: network namespaces on a private bridge.

Each host is a network namespace with one end of a veth pair (the other end on a bridge in the
root namespace) and a 10.77.S.i/24 address, and its processes get their own host name (a UTS
namespace, ``unshare --uts``), so gloo talks over the bridge, not loopback, and errors name the
host as they would on two machines. Needs root and ``ip netns`` (iproute2) and ``unshare``
(util-linux); :func:`unavailable` says why not when they are missing. Used by
``tests/integration/test_torchrun_bridge.py`` and ``benchmarks/torchrun_bridge.py``.

    with TwoHosts() as hosts:
        proc = hosts.popen(0, ["python", "-c", "import socket; print(socket.gethostname())"])
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from types import TracebackType
from typing import Any

__all__ = ["Host", "TwoHosts", "children", "torchrun_argv", "unavailable"]


@dataclasses.dataclass(frozen=True)
class Host:
    """One namespace: its name, its interface (``GLOO_SOCKET_IFNAME``), address, host name."""

    netns: str
    ifname: str
    address: str
    hostname: str


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=check)


def unavailable() -> str | None:
    """Why two namespaces cannot be made here, or ``None`` when they can."""
    if sys.platform != "linux":
        return "network namespaces need Linux"
    if os.geteuid() != 0:
        return "creating network namespaces needs root"
    for tool in ("ip", "unshare"):
        if shutil.which(tool) is None:
            return f"`{tool}` is not installed"
    probe = f"fkprobe{os.getpid() % 100000}"
    made = _ip("netns", "add", probe, check=False)
    if made.returncode != 0:
        return f"`ip netns add` failed: {made.stderr.strip()}"
    _ip("netns", "del", probe, check=False)
    return None


class TwoHosts:
    """Context manager: two namespaces on a bridge, removed (with their processes) on exit."""

    def __init__(self, tag: str | None = None) -> None:
        tag = tag or str(os.getpid() % 10000)
        subnet = 100 + os.getpid() % 100
        self.bridge = f"fkbr{tag}"
        self.hosts = tuple(
            Host(
                netns=f"fkns{i}-{tag}",
                ifname=f"fkv{i}{tag}",
                address=f"10.77.{subnet}.{i}",
                hostname=f"fkhost{i}",
            )
            for i in (1, 2)
        )
        self._peers = [f"fkp{i}{tag}" for i in (1, 2)]

    def __enter__(self) -> TwoHosts:
        try:
            _ip("link", "add", self.bridge, "type", "bridge")
            _ip("link", "set", self.bridge, "up")
            for host, peer in zip(self.hosts, self._peers, strict=True):
                _ip("netns", "add", host.netns)
                _ip("link", "add", host.ifname, "type", "veth", "peer", "name", peer)
                _ip("link", "set", peer, "master", self.bridge)
                _ip("link", "set", peer, "up")
                _ip("link", "set", host.ifname, "netns", host.netns)
                _ip("-n", host.netns, "addr", "add", f"{host.address}/24", "dev", host.ifname)
                _ip("-n", host.netns, "link", "set", host.ifname, "up")
                _ip("-n", host.netns, "link", "set", "lo", "up")
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Kill what still runs in the namespaces, then delete them and the bridge."""
        for host in self.hosts:
            pids = _ip("netns", "pids", host.netns, check=False).stdout.split()
            for pid in pids:
                with contextlib.suppress(ProcessLookupError, ValueError):
                    os.kill(int(pid), signal.SIGKILL)
            _ip("netns", "del", host.netns, check=False)  # takes its veth and the peer along
        for peer in self._peers:
            _ip("link", "del", peer, check=False)
        _ip("link", "del", self.bridge, check=False)

    def popen(
        self, index: int, argv: list[str], env: dict[str, str] | None = None, **kw: Any
    ) -> subprocess.Popen[str]:
        """Start ``argv`` on host ``index`` (0 or 1) with that host's name; ``GLOO_SOCKET_IFNAME``
        is set to the host's interface."""
        host = self.hosts[index]
        full_env = {**(env if env is not None else os.environ), "GLOO_SOCKET_IFNAME": host.ifname}
        cmd = [
            "ip",
            "netns",
            "exec",
            host.netns,
            "unshare",
            "--uts",
            "sh",
            "-c",
            f'hostname {host.hostname} && exec "$@"',
            "sh",
            *argv,
        ]
        return subprocess.Popen(cmd, env=full_env, text=True, **kw)


def torchrun_argv(
    *, nnodes: int, node_rank: int, master: str, port: int, args: list[str], nproc: int = 1
) -> list[str]:
    """``python -m torch.distributed.run`` (torchrun) for one node of a static rendezvous."""
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        f"--nnodes={nnodes}",
        f"--nproc-per-node={nproc}",
        f"--node-rank={node_rank}",
        f"--master-addr={master}",
        f"--master-port={port}",
        *args,
    ]


def children(pid: int) -> list[int]:
    """Direct children of ``pid`` (from ``/proc``)."""
    out: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        with contextlib.suppress(OSError):
            out += [int(c) for c in (task / "children").read_text().split()]
    return out

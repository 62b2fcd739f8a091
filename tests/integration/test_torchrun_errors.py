"""The torchrun group's small parts: reading the launcher's environment, peers' host entries
(hostile input), telling a transport failure from an ordinary error, and naming lost ranks."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fedkit.experiment.config import experiment_from_mapping
from fedkit.experiment.runner import checkpoint_dir
from fedkit.sim.distributed import RemoteRankError
from fedkit.sim.torchrun import (
    RankGroup,
    RankHost,
    RankLostError,
    TorchrunEnv,
    _parse_host,
    is_transport_error,
    torchrun_env,
)
from tests.integration.test_runner import tiny

GLOO_CLOSED = (
    "[/__w/pytorch/pytorch/third_party/gloo/gloo/transport/tcp/pair.cc:553] Connection closed "
    "by peer [10.77.5.2]:37577. This is typically caused by a remote worker crashing."
)

BASE = {"RANK": "1", "WORLD_SIZE": "4", "LOCAL_RANK": "1", "MASTER_ADDR": "10.0.0.1"}


def test_environment_read_as_torchrun_sets_it() -> None:
    assert torchrun_env({"PATH": "/bin"}) is None  # not launched by torchrun
    assert torchrun_env({**BASE, "MASTER_PORT": "29500"}) == TorchrunEnv(
        rank=1, world_size=4, local_rank=1, master_addr="10.0.0.1", master_port=29500
    )


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"RANK": "4"}, "RANK must be in [0, 3], got 4"),  # ranks are 0 .. WORLD_SIZE - 1
        ({"RANK": "-1"}, "RANK must be in [0, 3], got -1"),
        ({"WORLD_SIZE": "0"}, "WORLD_SIZE must be in [1, 1048576], got 0"),
        ({"MASTER_PORT": "65536"}, "MASTER_PORT must be in [1, 65535], got 65536"),
        ({"MASTER_PORT": ""}, "MASTER_PORT must be an integer, got ''"),
        ({"MASTER_ADDR": ""}, "MASTER_ADDR is not set"),
        ({"LOCAL_RANK": "x"}, "LOCAL_RANK must be an integer, got 'x'"),
    ],
)
def test_malformed_environment_names_the_variable(change: dict[str, str], message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")):
        torchrun_env({**BASE, "MASTER_PORT": "29500", **change})


@given(st.binary(max_size=300))
def test_a_peers_host_entry_is_only_a_label(raw: bytes) -> None:
    h = _parse_host(raw)
    assert isinstance(h.host, str) and isinstance(h.address, str)
    assert len(h.host) <= 255 and len(h.address) <= 255


def test_host_entries_parsed_and_cut() -> None:
    ok = json.dumps({"host": "node7", "address": "10.0.0.7"}).encode()
    assert _parse_host(ok) == RankHost("node7", "10.0.0.7")
    long = json.dumps({"host": "h" * 1000, "address": "a"}).encode()
    assert _parse_host(long) == RankHost("h" * 255, "a")
    assert _parse_host(b'{"host": 3, "address": "x"}') == RankHost("?", "?")
    assert _parse_host(b"[]") == RankHost("?", "?")


def test_transport_errors_told_from_ordinary_ones() -> None:
    assert is_transport_error(RuntimeError(GLOO_CLOSED))
    assert not is_transport_error(RemoteRankError("1 rank(s) failed — rank 1: ValueError: x"))
    assert not is_transport_error(RuntimeError("only rank 0 drives the executor"))
    assert not is_transport_error(ValueError("/gloo/ in a value error"))


def _group(rank: int = 0) -> RankGroup:
    env = TorchrunEnv(rank=rank, world_size=3, local_rank=0, master_addr="10.77.5.1", master_port=1)
    hosts = [RankHost("a", "10.77.5.1"), RankHost("b", "10.77.5.2"), RankHost("b", "10.77.5.2")]
    return RankGroup(env, hosts, timeout_s=60.0)


def test_lost_ranks_named_by_heartbeat(monkeypatch: pytest.MonkeyPatch) -> None:
    g = _group()
    monkeypatch.setattr(g, "silent_ranks", lambda: [2])
    e = g.lost(RuntimeError(GLOO_CLOSED), "round 4")
    assert isinstance(e, RankLostError) and e.ranks == (2,) and g.broken
    assert str(e).startswith("rank 2 (host b, address 10.77.5.2) stopped (no heartbeat) during ")
    assert "round 4 ([/__w/pytorch" in str(e)


def test_lost_ranks_named_by_peer_address_when_every_heartbeat_moves(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    g = _group()
    monkeypatch.setattr(g, "silent_ranks", list)
    e = g.lost(RuntimeError(GLOO_CLOSED))
    # Both ranks on the host at 10.77.5.2 are named: gloo's message gives the address only.
    assert e.ranks == (1, 2)
    assert str(e).startswith(
        "rank 1 (host b, address 10.77.5.2), rank 2 (host b, address 10.77.5.2) unreachable ("
    )
    nobody = g.lost(RuntimeError("Timed out waiting 1800000ms for recv operation"), "round 0")
    assert nobody.ranks == () and str(nobody).startswith("the process group broke during round 0")


def test_checkpoint_folder_per_run_config(tmp_path: Path) -> None:
    a = experiment_from_mapping(tiny(), name="fedavg[lr=0.1]", study="s")
    b = experiment_from_mapping(tiny(run={"seed": 8}), name="fedavg[lr=0.1]", study="s")
    assert checkpoint_dir(tmp_path, a) == checkpoint_dir(tmp_path, a)
    assert checkpoint_dir(tmp_path, a) != checkpoint_dir(tmp_path, b)  # another config
    assert checkpoint_dir(tmp_path, a).parent == tmp_path / "checkpoints"
    assert checkpoint_dir(tmp_path, a).name.startswith("fedavg_lr=0.1_-")

"""Vertical runs: PSI-aligned split learning in one process and over gRPC party processes
equals the centralised model on the common samples' concatenated features."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch

from fedkit.local import LocalTraining
from fedkit.vertical.psi import hash_to_point
from fedkit.vertical.run import (
    PartyView,
    VerticalResult,
    VerticalSpec,
    align,
    common_rows,
    holdings,
    run_vertical,
)
from fedkit.vertical.service import PartyServicer, RemoteParty, serve_party
from fedkit.vertical.split import SplitModel, row_bands, split_mlp

pytestmark = pytest.mark.timeout(120)


def _data(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 1, 6, 4, generator=g)
    y = (x[:, 0, :3].sum((1, 2)) > x[:, 0, 3:].sum((1, 2))).long()
    return x, y


def _spec(mode: str, parties: int = 2) -> VerticalSpec:
    return VerticalSpec(
        parties=parties,
        embedding=6,
        bottom_hidden=(12,),
        top_hidden=(8,),
        overlap=0.8,
        mode=mode,
        local=LocalTraining(lr=0.2, epochs=3, batch_size=16, momentum=0.5),
        seed=4,
    )


def _run(mode: str, parties: int = 2) -> VerticalResult:
    (xt, yt), (xe, ye) = _data(200, 1), _data(80, 2)
    return run_vertical(_spec(mode, parties), xt, yt, xe, ye, num_classes=2)


def test_holdings_and_common_rows() -> None:
    spec = _spec("simulation", 3)
    held = [set(holdings(spec, "train", 200, k).tolist()) for k in range(3)]
    # each party holds about 80% of 200; the common set is exactly their intersection
    assert all(120 < len(h) < 190 for h in held)
    assert set(common_rows(spec, "train", 200).tolist()) == held[0] & held[1] & held[2]
    assert len(set(map(frozenset, held))) == 3  # different subsets per party


@pytest.mark.parametrize("parties", [2, 3])
def test_simulation_equals_centralised_on_the_intersection(parties: int) -> None:
    sim, central = _run("simulation", parties), _run("centralized", parties)
    assert sim.common_train == central.common_train < 200
    want = central.model.state_dict()
    got = sim.model.state_dict()
    for k in want:
        torch.testing.assert_close(got[k], want[k], rtol=1e-5, atol=1e-6)
    assert sim.test.accuracy == pytest.approx(central.test.accuracy)
    assert sim.bytes_exchanged > 0 == central.bytes_exchanged


@pytest.mark.net
def test_grpc_party_processes_equal_simulation() -> None:
    sim, remote = _run("simulation"), _run("grpc")
    assert remote.common_train == sim.common_train
    # the label party's own bottom and top (the remote bottom stays in its process)
    want, got = sim.model.state_dict(), remote.model.state_dict()
    for k in want:
        if not k.startswith("bottoms.1."):
            torch.testing.assert_close(got[k], want[k], rtol=1e-5, atol=1e-6)
    # party 1's bottom lives only in its process: the label party's copy is still the initial
    # one (no tensor memory is shared between the processes)
    groups = row_bands((1, 6, 4), 2)
    init = split_mlp(groups, 2, embedding=6, bottom_hidden=(12,), top_hidden=(8,), seed=4)
    for k, v in init.state_dict().items():
        if k.startswith("bottoms.1."):
            assert torch.equal(got[k], v), k
            assert not torch.equal(want[k], v), k
    assert remote.test.accuracy == pytest.approx(sim.test.accuracy)
    assert remote.test.loss == pytest.approx(sim.test.loss, rel=1e-5)
    assert remote.wire_bytes > remote.bytes_exchanged > 0


def test_label_only_is_a_smaller_model() -> None:
    alone = _run("label_only")
    model = alone.model
    assert isinstance(model, SplitModel)
    assert len(model.bottoms) == 1
    first = model.top[0]
    assert isinstance(first, torch.nn.Linear)
    assert first.in_features == 6  # one embedding, not two


class _Recording(RemoteParty):
    """A stub that keeps the serialised bytes of every request and reply it exchanges."""

    def __init__(self, target: str, embedding: int) -> None:
        super().__init__(target, embedding)
        self.wire: list[bytes] = []

    def _call(self, method: Callable[..., Any], request: Any) -> Any:
        reply = super()._call(method, request)
        self.wire += [request.SerializeToString(), reply.SerializeToString()]
        return reply


@pytest.mark.net
def test_psi_over_grpc_finds_the_intersection_and_sends_no_id() -> None:
    mine = [f"user-{i:03d}" for i in range(0, 30)]
    theirs = [f"user-{i:03d}" for i in range(20, 45)]
    features = {"train": torch.arange(len(theirs), dtype=torch.float32).reshape(-1, 1)}
    bottom = torch.nn.Linear(1, 2)
    servicer = PartyServicer({"train": theirs}, features, bottom, LocalTraining())
    server, port = serve_party(servicer)
    try:
        peer = _Recording(f"127.0.0.1:{port}", embedding=2)
        common = align(PartyView(ids={"train": mine}, features={}), [peer], "train")
        assert common == [f"user-{i:03d}" for i in range(20, 30)]
        # the party's rows now hold its samples 0..9 (user-020..029), in the agreed order
        h = peer.forward("train", 0, torch.arange(10), False)
        assert h.shape == (10, 2)
        with torch.no_grad():
            want = bottom(features["train"][:10])
        torch.testing.assert_close(h, want)
        peer.close()
    finally:
        server.stop(grace=None)
    blob = b"".join(peer.wire)
    assert len(peer.wire) >= 4  # Psi and Align, requests and replies (Forward, Bye after)
    for ident in set(mine) | set(theirs):
        assert ident.encode() not in blob
        assert hash_to_point(ident) not in blob

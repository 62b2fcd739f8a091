"""PSI by commutative X25519 blinding (fedkit.vertical.psi)."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st

from fedkit.vertical.proto import vertical_pb2 as pb
from fedkit.vertical.psi import PsiError, PsiResponder, PsiSender, blind, hash_to_point


def _run(x: list[str], y: list[str]) -> tuple[list[str], list[str], list[bytes]]:
    """One PSI through the protobuf messages; the sender's and responder's aligned ids and every
    message's bytes as they cross the wire."""
    sender, responder = PsiSender(x), PsiResponder(y)
    wire = [pb.Points(split="train", points=sender.first()).SerializeToString()]
    got = pb.Points.FromString(wire[0])
    double, own = responder.respond(list(got.points))
    wire.append(pb.PsiReply(double_blinded=double, blinded=own).SerializeToString())
    reply = pb.PsiReply.FromString(wire[1])
    inter = sender.finish(list(reply.double_blinded), list(reply.blinded))
    wire.append(pb.Alignment(split="train", positions=inter.positions).SerializeToString())
    rows = responder.align(list(pb.Alignment.FromString(wire[2]).positions))
    return list(inter.ids), responder.ids_at(rows), wire


def test_blinding_commutes() -> None:
    a, b = X25519PrivateKey.generate(), X25519PrivateKey.generate()
    p = hash_to_point("sample-42")
    assert blind(a, blind(b, p)) == blind(b, blind(a, p))
    assert blind(a, p) != blind(b, p)


def test_intersection_and_order_by_hand() -> None:
    x = ["u3", "u1", "u7", "u5"]
    y = ["u5", "u9", "u3", "u8", "u1"]
    mine, theirs, _ = _run(x, y)
    # common ids in the sender's order of x: u3, u1, u5; the responder's rows name the same ids
    assert mine == ["u3", "u1", "u5"]
    assert theirs == mine


@settings(max_examples=25, deadline=None)
@given(
    st.sets(st.integers(0, 60), max_size=20),
    st.sets(st.integers(0, 60), max_size=20),
)
def test_finds_exactly_the_intersection(xs: set[int], ys: set[int]) -> None:
    x, y = [f"id{i}" for i in sorted(xs)], [f"id{i}" for i in sorted(ys, reverse=True)]
    mine, theirs, _ = _run(x, y)
    assert set(mine) == {f"id{i}" for i in xs & ys}
    assert mine == [i for i in x if i in set(y)]  # the sender's order
    assert theirs == mine  # both parties hold the same samples in the same order


def test_wire_reveals_no_id_in_the_clear() -> None:
    x = [f"patient-{i:04d}" for i in range(0, 40)]
    y = [f"patient-{i:04d}" for i in range(25, 70)]
    mine, _, wire = _run(x, y)
    assert mine == [f"patient-{i:04d}" for i in range(25, 40)]
    blob = b"".join(wire)
    for ident in set(x) | set(y):  # neither the ids nor their hashes H(x), matching or not
        assert ident.encode() not in blob
        assert hash_to_point(ident) not in blob
    # the control: the same scan finds an id that is written in clear
    assert b"patient-0001" in blob + pb.Points(split="patient-0001").SerializeToString()


def test_malformed_messages_are_refused() -> None:
    sender, responder = PsiSender(["a", "b"]), PsiResponder(["b", "c"])
    with pytest.raises(PsiError, match="32 bytes"):
        responder.respond([b"short"])
    double, own = responder.respond(sender.first())
    with pytest.raises(PsiError, match="double-blinded points for 2"):
        sender.finish(double[:1], own)
    with pytest.raises(PsiError, match="not distinct"):
        sender.finish(double, [own[0], own[0]])
    with pytest.raises(PsiError, match="small order"):
        responder.respond([bytes(32)])  # u = 0 is of small order: X25519 gives zeros
    with pytest.raises(PsiError, match="distinct and in"):
        responder.align([0, 5])
    with pytest.raises(PsiError, match="distinct and in"):
        responder.align([1, 1])
    with pytest.raises(PsiError, match="distinct"):
        PsiSender(["a", "a"])

"""One vertical run from in-memory data: who holds what, PSI, training, evaluation.

Party ``k`` of ``K`` holds the ``k``-th band of rows of every image it holds
(:func:`~fedkit.vertical.split.row_bands`); party 0 is the label party and also holds the
labels and the top model. With ``overlap < 1`` each party holds a seeded random subset of the
samples, named ``"<split>-<index>"``, so the parties must find their common samples by PSI
(:mod:`fedkit.vertical.psi`) before training.

Modes:

* ``simulation``: every party in this process (PSI and training through the same calls);
* ``grpc``: parties 1..K-1 as separate processes serving :mod:`fedkit.vertical.service` on
  127.0.0.1, each given only its own ids, columns and bottom model;
* ``centralized``: the :class:`~fedkit.vertical.split.SplitModel` (same bottoms and top) on the
  concatenated features of the common samples, trained by :func:`fedkit.local.train_local`;
* ``label_only``: what the label party could learn alone: its band, one bottom and the top.
"""

from __future__ import annotations

import contextlib
import dataclasses
import multiprocessing as mp
import time
from collections.abc import Sequence
from multiprocessing.connection import Connection
from typing import Any, Literal, Protocol, get_args

import torch
from torch import Tensor, nn

from fedkit.evaluate import EvalResult, evaluate
from fedkit.local import LocalTraining, train_local
from fedkit.rng import SERVER, derive_seed, generator
from fedkit.vertical.psi import Intersection, PsiResponder, PsiSender
from fedkit.vertical.split import (
    TEST,
    TRAIN,
    FeatureParty,
    Party,
    evaluate_vertical,
    mlp_layers,
    row_bands,
    split_mlp,
    train_vertical,
)

__all__ = ["MODES", "VerticalResult", "VerticalSpec", "run_vertical"]

Mode = Literal["simulation", "grpc", "centralized", "label_only"]
MODES: tuple[str, ...] = get_args(Mode)
SPLITS = (TRAIN, TEST)


@dataclasses.dataclass(frozen=True, kw_only=True)
class VerticalSpec:
    """A vertical run (the ``[vertical]`` table of an experiment file).

    Attributes:
        parties: number of parties (row bands), the label party included (>= 1).
        embedding: width of each bottom model's output.
        bottom_hidden: hidden widths of each bottom MLP.
        top_hidden: hidden widths of the top MLP.
        overlap: share of the samples each party holds, in (0, 1] (1: all of them).
        max_train: use only the first ``max_train`` training samples (a reduced budget).
        max_test: use only the first ``max_test`` test samples.
        mode: ``simulation``, ``grpc``, ``centralized`` or ``label_only``.
        local: optimiser, epochs and batch size of training.
        seed: model initialisation, holdings and batch order.
    """

    parties: int = 2
    embedding: int = 64
    bottom_hidden: tuple[int, ...] = (128,)
    top_hidden: tuple[int, ...] = ()
    overlap: float = 1.0
    max_train: int | None = None
    max_test: int | None = None
    mode: str = "simulation"
    local: LocalTraining = dataclasses.field(default_factory=LocalTraining)
    seed: int = 0

    def __post_init__(self) -> None:
        if not 1 <= self.parties <= 64:
            raise ValueError(f"parties must be in [1, 64], got {self.parties!r}")
        if not 1 <= self.embedding <= 65536:
            raise ValueError(f"embedding must be in [1, 65536], got {self.embedding!r}")
        if any(not 1 <= h <= 65536 for h in (*self.bottom_hidden, *self.top_hidden)):
            raise ValueError("hidden widths must be in [1, 65536]")
        if not 0.0 < self.overlap <= 1.0:
            raise ValueError(f"overlap must be in (0, 1], got {self.overlap!r}")
        for key in ("max_train", "max_test"):
            v = getattr(self, key)
            if v is not None and v < 1:
                raise ValueError(f"{key} must be >= 1 or unset, got {v!r}")
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}; got {self.mode!r}")
        if self.local.dp is not None or self.local.steps is not None:
            raise ValueError("vertical: set local.epochs (local.steps and local.dp are not used)")


@dataclasses.dataclass(frozen=True)
class VerticalResult:
    """A finished vertical run.

    Attributes:
        test: the trained model's test loss and accuracy on the common test samples.
        train_loss: mean training loss over the steps.
        common_train: number of aligned (common) training samples.
        common_test: number of aligned test samples.
        bytes_exchanged: bytes of activations and gradients that crossed party boundaries
            (tensor payloads; 0 for the centralised modes).
        wire_bytes: protobuf bytes over gRPC both ways, PSI included (``grpc`` mode only).
        model: the trained :class:`~fedkit.vertical.split.SplitModel` (bottoms of remote
            parties stay with them: their entries are the untrained ones in ``grpc`` mode).
        seconds: wall time of alignment and training.
    """

    test: EvalResult
    train_loss: float
    common_train: int
    common_test: int
    bytes_exchanged: int
    wire_bytes: int
    model: nn.Module
    seconds: float


@dataclasses.dataclass(frozen=True)
class PartyView:
    """What one party holds: its sample ids and its columns of those samples, per split."""

    ids: dict[str, list[str]]
    features: dict[str, Tensor]


def holdings(spec: VerticalSpec, split: str, n: int, party: int) -> Tensor:
    """Indices (ascending) of the samples of ``split`` that ``party`` holds."""
    if spec.overlap >= 1.0:
        return torch.arange(n)
    g = torch.Generator().manual_seed(derive_seed(spec.seed, 0, party, f"holdings-{split}"))
    return torch.nonzero(torch.rand(n, generator=g) < spec.overlap).reshape(-1)


def party_view(
    spec: VerticalSpec, data: dict[str, Tensor], groups: Sequence[Tensor], party: int
) -> PartyView:
    """Party ``party``'s ids and columns (``data``: ``{split: flattened inputs}``)."""
    ids, feats = {}, {}
    for split, x in data.items():
        held = holdings(spec, split, len(x), party)
        ids[split] = [f"{split}-{int(i)}" for i in held]
        feats[split] = x[held][:, groups[party]]
    return PartyView(ids=ids, features=feats)


def common_rows(spec: VerticalSpec, split: str, n: int) -> Tensor:
    """The samples every party holds, ascending (what PSI finds, in the same order)."""
    mask = torch.ones(n, dtype=torch.bool)
    for k in range(spec.parties):
        held = torch.zeros(n, dtype=torch.bool)
        held[holdings(spec, split, n, k)] = True
        mask &= held
    return torch.nonzero(mask).reshape(-1)


def _party_main(
    ids: dict[str, list[str]], blob: bytes, sizes: list[int], local: LocalTraining, conn: Connection
) -> None:
    """A feature party's process: rebuild its data and bottom model from plain bytes (no
    tensor shared with the label party's process), serve until the label party says goodbye."""
    from safetensors.torch import load

    from fedkit.vertical.service import PartyServicer, serve_party

    torch.set_num_threads(1)
    tensors = load(blob)
    bottom = mlp_layers(sizes)
    bottom.load_state_dict({k[len("bottom.") :]: v for k, v in tensors.items() if k[0] == "b"})
    features = {k[len("x.") :]: v for k, v in tensors.items() if k[0] == "x"}
    servicer = PartyServicer(ids, features, bottom, local)
    server, port = serve_party(servicer)
    conn.send(port)
    servicer.done.wait(timeout=3600)
    server.stop(grace=2).wait()


class Peer(Party, Protocol):
    """A feature party as the label party drives it: PSI, alignment, then training."""

    def psi(self, split: str, sender: PsiSender) -> Intersection:
        """PSI for ``split`` with the label party as the sender."""
        ...

    def align(self, split: str, positions: Sequence[int]) -> int:
        """The agreed order of ``split``, as positions into the peer's blinded list."""
        ...


class LocalPeer:
    """A feature party in this process, with the same calls as a ``RemoteParty``."""

    def __init__(self, view: PartyView, bottom: nn.Module, local: LocalTraining) -> None:
        self._view = view
        self._psi: dict[str, PsiResponder] = {}
        self._aligned: dict[str, Tensor] = {}
        self._party = FeatureParty(bottom, self._aligned, local)

    def psi(self, split: str, sender: PsiSender) -> Intersection:
        self._psi[split] = PsiResponder(self._view.ids[split])
        return sender.finish(*self._psi[split].respond(sender.first()))

    def align(self, split: str, positions: Sequence[int]) -> int:
        order = self._psi[split].align(positions)
        self._aligned[split] = self._view.features[split][order]
        return len(order)

    def forward(self, split: str, step: int, rows: Tensor, train: bool) -> Tensor:
        return self._party.forward(split, step, rows, train)

    def backward(self, step: int, grad: Tensor) -> None:
        self._party.backward(step, grad)


def align(label: PartyView, peers: Sequence[Peer], split: str) -> list[str]:
    """PSI of the label party with each peer, then each peer's alignment to the samples all
    parties hold; returns those ids in the label party's order."""
    found = []
    for peer in peers:
        inter = peer.psi(split, PsiSender(label.ids[split]))
        found.append(dict(zip(inter.ids, inter.positions, strict=True)))
    common = [i for i in label.ids[split] if all(i in f for f in found)]
    for peer, f in zip(peers, found, strict=True):
        peer.align(split, [f[i] for i in common])
    return common


def _start_remote(
    view: PartyView, bottom: nn.Module, sizes: list[int], spec: VerticalSpec
) -> tuple[Any, Peer]:
    """Spawn a feature party process with its own ids, columns and bottom (``sizes``, initial
    weights) as bytes; its process and the label party's stub for it."""
    from safetensors.torch import save

    from fedkit.vertical.service import RemoteParty

    tensors = {f"x.{k}": v.contiguous() for k, v in view.features.items()}
    tensors.update({f"bottom.{k}": v.contiguous() for k, v in bottom.state_dict().items()})
    ctx = mp.get_context("spawn")
    recv, send = ctx.Pipe(duplex=False)
    args = (view.ids, save(tensors), sizes, spec.local, send)
    proc = ctx.Process(target=_party_main, args=args, daemon=True)
    proc.start()
    for _ in range(120):  # wait for its port; stop early if it died
        if recv.poll(1.0) or not proc.is_alive():
            break
    if not recv.poll(0):
        proc.terminate()
        raise RuntimeError(
            f"a vertical party process did not start (exit code {proc.exitcode}); see its stderr"
        )
    return proc, RemoteParty(f"127.0.0.1:{recv.recv()}", spec.embedding)


def run_vertical(
    spec: VerticalSpec,
    x_train: Tensor,
    y_train: Tensor,
    x_test: Tensor,
    y_test: Tensor,
    num_classes: int,
) -> VerticalResult:
    """Align, train and evaluate one vertical run (see the module docstring for the modes)."""
    t0 = time.perf_counter()
    if spec.max_train is not None:
        x_train, y_train = x_train[: spec.max_train], y_train[: spec.max_train]
    if spec.max_test is not None:
        x_test, y_test = x_test[: spec.max_test], y_test[: spec.max_test]
    groups = row_bands(tuple(x_train.shape[1:]), spec.parties)
    model = split_mlp(
        groups,
        num_classes,
        embedding=spec.embedding,
        bottom_hidden=spec.bottom_hidden,
        top_hidden=spec.top_hidden,
        seed=spec.seed,
    )
    flat = {TRAIN: x_train.reshape(len(x_train), -1), TEST: x_test.reshape(len(x_test), -1)}
    labels = {TRAIN: y_train, TEST: y_test}
    batches = generator(spec.seed, 0, SERVER, "vertical-batches")
    if spec.mode in ("centralized", "label_only"):
        rows = {s: common_rows(spec, s, len(flat[s])) for s in SPLITS}
        if spec.mode == "label_only":
            model = type(model)(model.groups[:1], [model.bottoms[0]], _label_top(spec, num_classes))
        xs = {s: flat[s][rows[s]] for s in SPLITS}
        stats = train_local(
            model, xs[TRAIN], labels[TRAIN][rows[TRAIN]], spec.local, generator=batches
        )
        test = evaluate(model, xs[TEST], labels[TEST][rows[TEST]])
        return VerticalResult(
            test=test,
            train_loss=stats.mean_loss,
            common_train=len(rows[TRAIN]),
            common_test=len(rows[TEST]),
            bytes_exchanged=0,
            wire_bytes=0,
            model=model,
            seconds=time.perf_counter() - t0,
        )
    views = [party_view(spec, flat, groups, k) for k in range(spec.parties)]
    label_rows = {s: holdings(spec, s, len(flat[s]), 0) for s in SPLITS}
    procs: list[Any] = []
    peers: list[Peer] = []
    try:
        for k in range(1, spec.parties):
            if spec.mode == "grpc":
                sizes = [len(groups[k]), *spec.bottom_hidden, spec.embedding]
                proc, peer = _start_remote(views[k], model.bottoms[k], sizes, spec)
                procs.append(proc)
            else:
                peer = LocalPeer(views[k], model.bottoms[k], spec.local)
            peers.append(peer)
        aligned: dict[str, Tensor] = {}
        for split in SPLITS:
            common = align(views[0], peers, split)
            index = {f"{split}-{int(i)}": j for j, i in enumerate(label_rows[split])}
            aligned[split] = torch.tensor([index[i] for i in common], dtype=torch.int64)
        own = FeatureParty(
            model.bottoms[0], {s: views[0].features[s][aligned[s]] for s in SPLITS}, spec.local
        )
        parties: list[Party] = [own, *peers]
        y = {s: labels[s][label_rows[s][aligned[s]]] for s in SPLITS}
        vstats = train_vertical(parties, model.top, y[TRAIN], spec.local, generator=batches)
        test = evaluate_vertical(parties, model.top, y[TEST])
        wire = sum(getattr(p, "bytes_sent", 0) + getattr(p, "bytes_received", 0) for p in peers)
        return VerticalResult(
            test=test,
            train_loss=vstats.mean_loss,
            common_train=len(aligned[TRAIN]),
            common_test=len(aligned[TEST]),
            bytes_exchanged=sum(vstats.bytes_per_party[1:]),  # the label party's own stay
            wire_bytes=wire,
            model=model,
            seconds=time.perf_counter() - t0,
        )
    finally:
        for peer in peers:
            close = getattr(peer, "close", None)
            if close is not None:
                with contextlib.suppress(Exception):  # a dead party: its process is ended below
                    close()
        for proc in procs:
            proc.join(timeout=30)
            if proc.is_alive():
                proc.terminate()


def _label_top(spec: VerticalSpec, num_classes: int) -> nn.Module:
    """A top model over one bottom's output (the label party alone), from the same seed."""
    torch.manual_seed(derive_seed(spec.seed, 0, 0, "label-only-top"))
    return mlp_layers([spec.embedding, *spec.top_hidden, num_classes])

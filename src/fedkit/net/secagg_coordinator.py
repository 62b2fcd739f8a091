"""Secure aggregation on the coordinator: routes the protocol's messages between workers and
sums masked vectors; it never holds an unmasked individual update (Bonawitz et al. 2017, Fig. 4,
server side; SecAgg+ of Bell et al. 2020 with ``neighbours = k``).

:class:`CoordinatorSecAgg` is both halves the coordinator needs:

* the remote executor's :class:`RoundHook`: before each training attempt
  (:meth:`~CoordinatorSecAgg.before_train`) it plays rounds 0 and 1 with the attempt's clients
  as ``SECAGG`` tasks through the :class:`~fedkit.net.broker.Broker` — *advertise* (the round's
  public setup out, two X25519 public keys back), *share* (each client's neighbours' adverts
  out, its encrypted shares back), *inbox* (the shares addressed to each client out, an
  acknowledgement back) — and asks only the clients whose inbox arrived to train; each masked
  update is screened as it arrives (:meth:`~CoordinatorSecAgg.screen`: its sender is the
  authenticated client, its packed words are in range) before the aggregator adds it;
* the ``secagg`` stage's :class:`~fedkit.privacy.secagg.stage.SecAggWire` (bound by
  :func:`~fedkit.privacy.secagg.stage.with_wire`): the stage's ``open`` hands it the masked sum,
  and :meth:`~CoordinatorSecAgg.unmask` plays round 3 (*unmask*: who dropped and who survived
  out, shares back) and removes the masks.

Every worker message is checked on its own (:mod:`fedkit.net.secagg_wire`, then the server
session's checks); a client whose message fails is dropped from the round with a warning and
the others go on. When fewer than ``t`` remain at any step the attempt is not trained (rounds
0–1: the executor's quorum then aborts the attempt) or the stage raises
:class:`~fedkit.privacy.secagg.errors.SecAggAbort` (round 3): the run loop does not commit the
round and the model is unchanged. The public seed of each attempt's SecAgg+ graph comes from
``os.urandom``; the coordinator has no secret of any client.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

from torch import Tensor

from fedkit.algorithm import Algorithm, RoundInfo
from fedkit.net.broker import Assignment, Broker
from fedkit.net.codec import Buffer, split
from fedkit.net.errors import ErrorCode, NetError
from fedkit.net.proto import fedkit_pb2 as pb
from fedkit.net.secagg_wire import (
    Message,
    Setup,
    body_of,
    inbox_body,
    message,
    parse_advert,
    parse_share_keys,
    parse_unmask_response,
    roster_body,
    setup_message,
    unmask_request_message,
)
from fedkit.params import tree_leaves
from fedkit.privacy.secagg.client import check_advert
from fedkit.privacy.secagg.crypto import KEY_BYTES
from fedkit.privacy.secagg.errors import AbortReason, SecAggAbort, SecAggError
from fedkit.privacy.secagg.packing import unpack
from fedkit.privacy.secagg.round import RoundSetup
from fedkit.privacy.secagg.server import ServerSession
from fedkit.privacy.secagg.stage import MaskedUpdate, SecureSum, find_secure_sum, with_wire

__all__ = ["CoordinatorSecAgg", "bind_coordinator", "masked_length"]

log = logging.getLogger("fedkit.coordinator")

T = TypeVar("T")
MAX_STEP_BYTES = 64 << 20
"""Largest secure-aggregation result accepted (64 MiB; a step's body is kilobytes per peer)."""


def masked_length(template: MaskedUpdate) -> int:
    """The words of one masked input: every coordinate of the update, then the weight."""
    return sum(math.prod(t.shape[:-1]) for _, t in tree_leaves(template.masked)) + 1


class CoordinatorSecAgg:
    """The coordinator's side of secure aggregation (see the module docstring).

    Args:
        broker: the coordinator's task board.
        stage: the experiment's ``secagg`` stage (its settings).
        length: the words of one masked input (:func:`masked_length`).
        deadline_s: how long each step waits for the workers.
        committed: rounds already committed (a restarted coordinator's checkpoint).
    """

    def __init__(
        self,
        broker: Broker,
        stage: SecureSum,
        *,
        length: int,
        deadline_s: float,
        committed: int = 0,
    ) -> None:
        self.committed = committed
        """Rounds committed so far: told to workers with each setup, so that a client's new
        state is kept only when its round committed (an unmasked round commits)."""
        self.broker = broker
        self.stage = stage
        self.length = length
        self.deadline_s = deadline_s
        self._session: ServerSession | None = None
        self._round = -1

    # -- rounds 0 and 1 (the executor's hook) ------------------------------------------------

    def before_train(self, asked: Sequence[int], info: RoundInfo) -> list[int]:
        """Rounds 0 and 1 with ``asked``; the clients that may train (their inbox arrived).

        Returns an empty list when fewer than ``t`` clients remain (the attempt then misses its
        quorum and is retried or aborted by the executor)."""
        self._session, self._round = None, info.round
        setup = self.stage.setup(info.round, sorted(asked), self.length, os.urandom(KEY_BYTES))
        server = ServerSession(setup)
        try:
            return self._setup(setup, server)
        except SecAggAbort as err:
            log.warning("round %d: %s", info.round, err)
            return []

    def _setup(self, setup: RoundSetup, server: ServerSession) -> list[int]:
        r = setup.round
        task = setup_message(
            Setup(r, setup.cohort, setup.public_seed, setup.length, setup.bits, setup.degree,
                  setup.threshold, self.committed)
        )  # fmt: skip
        adverts = self._step(r, "advertise", dict.fromkeys(setup.cohort, task), parse_advert)
        adverts = self._keep(adverts, lambda a: check_advert(setup, a))
        rosters = server.collect_adverts(list(adverts.values()))
        tasks = {u: message("share", r, roster_body(rosters[u])) for u in rosters}
        n = len(setup.cohort)
        shares = self._step(r, "share", tasks, lambda u, b: parse_share_keys(u, b, max_cohort=n))
        shares = self._keep(shares, server.check_share_keys)
        inboxes = server.route_shares(list(shares.values()))
        tasks = {u: message("inbox", r, inbox_body(inboxes[u])) for u in inboxes}
        acks = self._step(r, "inbox", tasks, _empty)
        self._session = server
        return sorted(acks)

    # -- the masked inputs -------------------------------------------------------------------

    def screen(self, client: int, update: Any) -> None:
        """Refuse (``MALFORMED``) a masked update that names another sender, or whose packed
        words are out of range, before the aggregator adds it."""
        if not isinstance(update, MaskedUpdate):
            raise NetError(ErrorCode.MALFORMED, "a secure-aggregation result is a MaskedUpdate")
        try:
            if update.sender.numel() != 1 or int(update.sender[0]) != client:
                raise SecAggError(f"client {client}'s masked update names another sender")
            for _, t in tree_leaves(update.masked):
                unpack(t, self.stage.bits)
            unpack(update.weight, self.stage.bits)
        except SecAggError as err:
            raise NetError(ErrorCode.MALFORMED, str(err)) from None

    # -- round 3 (the stage's wire) ----------------------------------------------------------

    def session(self, round_: int, client: int) -> Any:
        """Not on the coordinator (the stage's client side runs on workers)."""
        raise SecAggError("the coordinator plays no client of secure aggregation")

    def unmask(self, round_: int, total: Tensor, senders: Sequence[int]) -> tuple[Tensor, int]:
        """Round 3: ask the survivors for shares and remove the masks (see the module
        docstring).

        Raises:
            SecAggAbort: no setup for this round, fewer than ``t`` survivors or answers, or a
                reconstructed secret that fails its check.
        """
        server, self._session = self._session, None
        if server is None or self._round != round_:
            raise SecAggAbort(AbortReason.TOO_FEW_SHARED, f"round {round_} has no key setup")
        try:
            request = server.collect_sum(total, list(senders))
        except SecAggError as err:  # a repeated or unknown sender: screened, so not expected
            raise SecAggAbort(AbortReason.TOO_FEW_MASKED, str(err)) from None
        task = unmask_request_message(round_, request)
        n = len(server.setup.cohort)
        answers = self._step(
            round_,
            "unmask",
            dict.fromkeys(request.survivors, task),
            lambda u, b: parse_unmask_response(u, b, max_cohort=n),
        )
        answers = self._keep(answers, server.check_response)
        try:
            total = server.finish(list(answers.values()))
        except SecAggError as err:
            raise SecAggAbort(AbortReason.BAD_SECRET, str(err)) from None
        self.committed = max(self.committed, round_ + 1)
        return total, n

    # -- one step ----------------------------------------------------------------------------

    def _step(
        self,
        round_: int,
        step: str,
        tasks: Mapping[int, bytes],
        parse: Callable[[int, bytes], T],
    ) -> dict[int, T]:
        """Send ``tasks`` as ``SECAGG`` tasks, wait for the answers, parse each (a client whose
        answer fails is left out)."""
        if not tasks:
            return {}
        assignments = {
            str(u): Assignment.of(split(p), len(p), kind=pb.SECAGG) for u, p in tasks.items()
        }
        self.broker.open_round(
            round_, assignments, deadline_s=self.deadline_s, result_check=_checker(step, round_)
        )
        results = self.broker.collect(want=len(tasks))
        out: dict[int, T] = {}
        for cid, res in sorted(results.items()):
            u = int(cid)
            try:
                msg = body_of(res.payload, max_bytes=MAX_STEP_BYTES)
                out[u] = parse(u, msg.body)
            except SecAggError as err:
                log.warning("round %d, %s: client %d dropped: %s", round_, step, u, err)
        missing = sorted(set(tasks) - {int(c) for c in results})
        if missing:
            log.warning("round %d, %s: no answer from %s", round_, step, missing)
        return out

    @staticmethod
    def _keep(msgs: dict[int, T], check: Callable[[T], object]) -> dict[int, T]:
        """The messages that pass the session's own check (the others' senders dropped)."""
        out = {}
        for u, m in msgs.items():
            try:
                check(m)
            except SecAggError as err:
                log.warning("secure aggregation: client %d dropped: %s", u, err)
                continue
            out[u] = m
        return out


def _empty(sender: int, body: bytes) -> None:
    if body:
        raise SecAggError(f"client {sender}: the inbox acknowledgement must be empty")


def _checker(step: str, round_: int) -> Callable[[Buffer, bool], None]:
    """The broker's check of an arriving result: a step payload of this step and round
    (``MALFORMED`` otherwise, and the worker is told)."""

    def check(payload: Buffer, complete: bool) -> None:
        if not complete:
            return
        try:
            msg: Message = body_of(payload, max_bytes=MAX_STEP_BYTES)
        except SecAggError as err:
            raise NetError(ErrorCode.MALFORMED, str(err)) from None
        if msg.step != step or msg.round != round_:
            raise NetError(
                ErrorCode.MALFORMED, f"expected the {step} step of round {round_}, got {msg.step}"
            )

    return check


def bind_coordinator(
    algorithm: Algorithm[Any, Any, Any, Any],
    broker: Broker,
    template: Any,
    deadline_s: float,
    committed: int = 0,
) -> tuple[Algorithm[Any, Any, Any, Any], CoordinatorSecAgg | None]:
    """``algorithm`` with its ``secagg`` stage bound to a new :class:`CoordinatorSecAgg` (the
    executor's round hook too), and that wire; ``(algorithm, None)`` without such a stage.
    ``template`` is the prepared update (a :class:`MaskedUpdate`); ``committed`` the rounds the
    checkpoint holds."""
    stage = find_secure_sum(algorithm.aggregator)
    if stage is None:
        return algorithm, None
    wire = CoordinatorSecAgg(
        broker, stage, length=masked_length(template), deadline_s=deadline_s, committed=committed
    )
    bound = with_wire(algorithm.aggregator, wire)
    return dataclasses.replace(algorithm, aggregator=bound), wire  # type: ignore[type-var]

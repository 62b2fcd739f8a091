"""Secure aggregation on a worker: each client it serves plays its own half of the protocol
(Bonawitz et al. 2017, Fig. 4, client side) with secrets from the OS CSPRNG.

:class:`WorkerSecAgg` answers the coordinator's ``SECAGG`` tasks (:mod:`fedkit.net.secagg_wire`)
for each client id: *advertise* — check the round's public setup against the worker's own
experiment file and open a :class:`~fedkit.privacy.secagg.client.ClientSession` whose X25519 keys,
self-mask seed and Shamir polynomials come from ``os.urandom``
(:class:`~fedkit.privacy.secagg.crypto.OsEntropy`; nothing derives from a seed the coordinator
knows); *share* — encrypt the shares for its neighbours; *inbox* — keep the shares addressed to
it; *unmask* — answer with shares, never both of one client's secrets. It is also the ``secagg``
stage's :class:`~fedkit.privacy.secagg.stage.SecAggWire` on the worker: the training task's
``prepare`` masks the update with the client's session. A multi-client worker keeps one session
per client id, each with its own keys. Whatever the coordinator sends is checked first; a bad
step raises :class:`~fedkit.privacy.secagg.errors.SecAggError` and the worker answers nothing
(that client drops out of the round, the worker keeps serving).
"""

from __future__ import annotations

import dataclasses
from typing import Any

from torch import Tensor

from fedkit.algorithm import Algorithm
from fedkit.client import prepared_template
from fedkit.net.codec import Buffer
from fedkit.net.secagg_coordinator import MAX_STEP_BYTES, masked_length
from fedkit.net.secagg_wire import (
    advert_body,
    body_of,
    message,
    parse_inbox,
    parse_roster,
    parse_setup,
    parse_unmask_request,
    share_keys_body,
    unmask_response_body,
)
from fedkit.params import Params
from fedkit.privacy.secagg.client import ClientSession
from fedkit.privacy.secagg.crypto import OsEntropy
from fedkit.privacy.secagg.errors import SecAggError
from fedkit.privacy.secagg.stage import SecureSum, find_secure_sum, with_wire

__all__ = ["WorkerSecAgg", "bind_worker"]


class WorkerSecAgg:
    """The worker's side of secure aggregation (see the module docstring).

    Args:
        stage: the experiment's ``secagg`` stage (the settings every setup must match).
        length: the words of one masked input of this experiment's update.
        max_cohort: the population size (no cohort is larger).
    """

    def __init__(self, stage: SecureSum, *, length: int, max_cohort: int) -> None:
        self.stage = stage
        self.length = length
        self.max_cohort = max_cohort
        self._sessions: dict[int, ClientSession] = {}
        self.committed = 0
        """The most rounds the coordinator has said are committed (``secagg:committed``)."""
        self.round = -1
        """The latest round a setup arrived for."""

    def session(self, round_: int, client: int) -> ClientSession:
        """``client``'s session of round ``round_`` (the stage's ``prepare`` masks with it).

        Raises:
            SecAggError: no key setup of that round reached this client.
        """
        s = self._sessions.get(client)
        if s is None or s.setup.round != round_:
            raise SecAggError(f"client {client}: no secure-aggregation setup for round {round_}")
        return s

    def unmask(self, round_: int, total: Tensor, senders: Any) -> tuple[Tensor, int]:
        """Not on a worker (the coordinator unmasks)."""
        raise SecAggError("a worker does not unmask sums")

    def handle(self, client: int, round_: int, payload: Buffer) -> bytes:
        """Answer one ``SECAGG`` task for ``client`` in round ``round_``; returns the result
        payload.

        Raises:
            SecAggError: a malformed task, a setup that differs from this experiment's
                settings, a step out of order, or any protocol check of the session.
        """
        msg = body_of(payload, max_bytes=MAX_STEP_BYTES)
        if msg.round != round_:
            raise SecAggError(f"step for round {msg.round} in a task of round {round_}")
        if msg.step == "advertise":
            session = self._open(client, msg)
            return message("advertise", round_, advert_body(session.advertise()))
        session = self.session(round_, client)
        n = len(session.setup.cohort)
        if msg.step == "share":
            roster = parse_roster(msg.body, max_cohort=n)
            return message("share", round_, share_keys_body(session.share_keys(roster)))
        if msg.step == "inbox":
            session.receive(parse_inbox(client, msg.body, max_cohort=n))
            return message("inbox", round_, b"")
        response = session.unmask(parse_unmask_request(msg, max_cohort=n))
        del self._sessions[client]  # done: its secrets go with it
        return message("unmask", round_, unmask_response_body(response))

    def _open(self, client: int, msg: Any) -> ClientSession:
        s = parse_setup(msg, max_cohort=self.max_cohort, max_length=self.length)
        mine = self.stage
        ours = (self.length, mine.bits, mine.degree, mine.threshold)
        if (s.length, s.bits, s.degree, s.threshold) != ours:
            raise SecAggError(
                f"client {client}: the round's setup (length {s.length}, bits {s.bits}, degree "
                f"{s.degree}, threshold {s.threshold}) differs from this experiment's (length "
                f"{self.length}, bits {mine.bits}, degree {mine.degree}, threshold "
                f"{mine.threshold})"
            )
        try:
            setup = mine.setup(s.round, s.cohort, s.length, s.public_seed)
        except ValueError as err:  # a repeated id, an empty cohort
            raise SecAggError(f"client {client}: bad setup: {err}") from None
        session = ClientSession(client, setup, OsEntropy())  # refuses a cohort without it
        self._sessions[client] = session
        self.committed = max(self.committed, s.committed)
        self.round = max(self.round, s.round)
        return session


def bind_worker(
    algorithm: Algorithm[Any, Any, Any, Any], init: Params, seed: int, max_cohort: int
) -> tuple[Algorithm[Any, Any, Any, Any], WorkerSecAgg | None]:
    """``algorithm`` with its ``secagg`` stage bound to a new :class:`WorkerSecAgg`, and that
    wire; ``(algorithm, None)`` when the chain has no such stage."""
    stage = find_secure_sum(algorithm.aggregator)
    if stage is None:
        return algorithm, None
    template = prepared_template(algorithm, init, seed)
    wire = WorkerSecAgg(stage, length=masked_length(template), max_cohort=max_cohort)
    bound = with_wire(algorithm.aggregator, wire)
    return dataclasses.replace(algorithm, aggregator=bound), wire  # type: ignore[type-var]

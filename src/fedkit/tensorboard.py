"""TensorBoard: a run callback that writes each round's scalars as event files.

``[run] tensorboard = true`` adds it to a simulated run (``OUT/tensorboard/<run id>-<name>``: one
subdirectory per run, so each arm of a study is its own curve) and to a deployment's coordinator
(``OUT/tensorboard``); ``tensorboard = "DIR"`` (or ``fedkit run --tensorboard DIR``) writes under
``DIR`` instead (:func:`tensorboard_root`). Watch it live with::

    tensorboard --logdir OUT/tensorboard

Tags (the x axis is the round, counted from 1 as in reports and progress):

- ``test/accuracy``, ``test/loss``: the central test evaluation, on rounds that have one;
- ``train/loss``: the cohort's mean local training loss;
- ``federated/mean``, ``federated/weighted_mean``, ``federated/p10``, ``federated/min``:
  per-client test accuracy across clients (Li et al. 2020's fairness view), when evaluated;
- ``bytes/up``, ``bytes/down``: the round's traffic; ``clients/completed``, ``clients/dropped``;
- ``metrics/<name>``: every :attr:`fedkit.run.RoundRecord.metrics` value (``dp_epsilon``,
  ``backdoor_accuracy`` …);
- ``clients/seconds_mean`` and ``clients/seconds_max``; in deployment also
  ``worker_rtt/<client id>``, each worker's round trip (send, train, receive) in seconds.

A ``[parallel]`` (data-parallel) run writes one step per evaluation point (step k: the k-th
point), with ``test/accuracy``, ``test/loss``, ``train/loss``, ``bytes/up``, ``bytes/down`` and
every field of its :class:`~fedkit.parallel.result.EvalPoint` as ``parallel/<field>`` (samples,
epoch, compute and communication seconds, H, batch size, learning rate …), through
:meth:`TensorBoardCallback.scalars`.

The writer is the ``tensorboard`` package's own (:class:`tensorboard.summary.Writer`), so the
files are what ``tensorboard`` and its ``EventAccumulator`` read.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path

from tensorboard.summary import Writer

from fedkit.params import Params
from fedkit.run import RoundRecord

__all__ = ["TensorBoardCallback", "tensorboard_root"]


def tensorboard_root(setting: bool | str, out_dir: Path) -> Path | None:
    """Where ``[run] tensorboard`` puts the event files: ``None`` when off, ``OUT/tensorboard``
    for ``true``, the directory itself when it is a string."""
    if setting is False:
        return None
    return out_dir / "tensorboard" if setting is True else Path(setting)


class TensorBoardCallback:
    """Run-loop callback (:class:`fedkit.run.Callback`) writing one step per round.

    Args:
        logdir: Folder of the event files (created).
        per_worker: Also write each client's seconds as ``worker_rtt/<id>`` (deployment, where
            the executor reports each worker's round-trip time).
    """

    def __init__(self, logdir: Path, *, per_worker: bool = False) -> None:
        logdir.mkdir(parents=True, exist_ok=True)
        self.logdir = logdir
        self.per_worker = per_worker
        self._writer = Writer(str(logdir))

    def _scalar(self, tag: str, value: float | None, step: int) -> None:
        if value is not None and math.isfinite(value):
            self._writer.add_scalar(tag, float(value), step)

    def __call__(self, record: RoundRecord, params: Params) -> None:
        """Write the round's scalars and flush (so a live TensorBoard sees them)."""
        step = record.round + 1
        s = self._scalar
        if record.central is not None:
            s("test/accuracy", record.central.accuracy, step)
            s("test/loss", record.central.loss, step)
        s("train/loss", record.train_loss, step)
        fed = record.federated
        if fed is not None:
            s("federated/mean", fed.mean, step)
            s("federated/weighted_mean", fed.weighted_mean, step)
            s("federated/p10", fed.p10, step)
            s("federated/min", fed.minimum, step)
        s("bytes/up", record.bytes_up, step)
        s("bytes/down", record.bytes_down, step)
        s("clients/completed", len(record.clients), step)
        s("clients/dropped", len(record.dropped), step)
        for name, value in sorted(record.metrics.items()):
            s(f"metrics/{name}", value, step)
        seconds = [c.seconds for c in record.clients]
        if seconds:
            s("clients/seconds_mean", sum(seconds) / len(seconds), step)
            s("clients/seconds_max", max(seconds), step)
        if self.per_worker:
            for c in record.clients:
                s(f"worker_rtt/{c.client_id}", c.seconds, step)
        self._writer.flush()

    def scalars(self, step: int, values: Mapping[str, float | int | None]) -> None:
        """Write ``values`` (tag -> number; ``None`` and non-finite values are skipped) at
        ``step`` and flush: what a run that is not a federated round loop reports."""
        for tag, value in values.items():
            self._scalar(tag, None if value is None else float(value), step)
        self._writer.flush()

    def close(self) -> None:
        """Flush and close the event file."""
        self._writer.close()

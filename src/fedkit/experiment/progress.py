"""Progress of runs on standard error: round, training loss, test accuracy and ETA.

It writes to standard error, so a command's standard output stays machine-readable (``fedkit run
--json``). On a terminal it draws a rich bar per run (a study shows its runs one after another);
when standard error is not a terminal (a log file, a pipe, CI) bars would be cut or repeated, so
it prints plain lines instead: one when a run starts, one per round, one when it ends. Each loss
is named for what it is: ``train loss`` is the clients' example-weighted training loss of the
round (the results database's ``train_loss``), ``test acc`` the global model's centralised test
accuracy (``test_accuracy``; ``--json``'s ``final_loss`` is the *test* loss). Rounds count from 1
here, as in reports; ``fedkit runs show``/``export`` list the stored 0-based ``round`` index.
With ``runs=N`` (a study of N runs, one at a time) every run is labelled ``[k/N]``.
"""

from __future__ import annotations

import math
import time
from types import TracebackType

from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

__all__ = ["RunProgress"]


def _fmt(value: float | None, spec: str) -> str:
    return "—" if value is None or math.isnan(value) else format(value, spec)


def _clock(seconds: float | None) -> str:
    """``h:mm:ss`` (``-:--:--`` when unknown), as rich's elapsed and remaining columns."""
    if seconds is None or not math.isfinite(seconds):
        return "-:--:--"
    s = round(seconds)
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}"


class RunProgress:
    """Progress of the runs of one command (a context manager).

    Args:
        enabled: Draw nothing when false (``--quiet``, tests).
        console: Where to draw (default: standard error).
        runs: The number of runs the command will start one after another (a study), to label
            each ``[k/N]``; ``None``: no label.
        plain: Plain lines instead of bars (default: when ``console`` is not a terminal).
    """

    def __init__(
        self,
        *,
        enabled: bool = True,
        console: Console | None = None,
        runs: int | None = None,
        plain: bool | None = None,
    ) -> None:
        self.enabled = enabled
        console = console or Console(stderr=True)
        self.plain = (not console.is_terminal) if plain is None else plain
        self._console = console
        self._runs = runs
        self._started = 0
        self._line: tuple[str, int, float] | None = None  # plain mode: name, total, start time
        self._progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("train loss {task.fields[loss]}  test acc {task.fields[acc]}"),
            TimeElapsedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            console=console,
            disable=not enabled or self.plain,
            transient=False,
        )
        self._task: TaskID | None = None

    def __enter__(self) -> RunProgress:
        self._progress.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._progress.stop()

    def _say(self, text: str) -> None:
        if self.enabled:
            self._console.print(text, markup=False, highlight=False, soft_wrap=True)

    def start_run(self, name: str, total: int) -> None:
        """Begin a bar (or a plain line) for run ``name`` of ``total`` rounds."""
        self._started += 1
        if self._runs is not None:
            name = f"[{self._started}/{self._runs}] {name}"
        if self.plain:
            self._line = (name, total, time.monotonic())
            self._say(f"{name}: started, {total} rounds")
            return
        self._task = self._progress.add_task(escape(name), total=total, loss="—", acc="—")

    def update(self, completed: int, *, loss: float | None, accuracy: float | None) -> None:
        """Show ``completed`` rounds done, the latest training loss and test accuracy.

        An accuracy of ``None`` (round not evaluated) keeps the last one shown (in plain mode
        it is shown as ``—``).
        """
        if self._line is not None:
            name, total, t0 = self._line
            spent = time.monotonic() - t0
            eta = spent / completed * (total - completed) if 0 < completed <= total else None
            self._say(
                f"{name}: round {completed}/{total}  train loss {_fmt(loss, '.4f')}  "
                f"test acc {_fmt(accuracy, '.4f')}  elapsed {_clock(spent)}  "
                f"ETA {_clock(eta)}"
            )
            return
        if self._task is None:
            return
        if accuracy is not None and not math.isnan(accuracy):
            self._progress.update(
                self._task, completed=completed, loss=_fmt(loss, ".4f"), acc=_fmt(accuracy, ".4f")
            )
        else:
            self._progress.update(self._task, completed=completed, loss=_fmt(loss, ".4f"))

    def end_run(self, status: str) -> None:
        """Close the current bar, appending the run's final status to its description."""
        if self._line is not None:
            name, _, t0 = self._line
            self._say(f"{name}: {status} after {_clock(time.monotonic() - t0)}")
            self._line = None
            return
        if self._task is None:
            return
        task = self._progress.tasks[-1]
        self._progress.update(self._task, description=f"{task.description} ({status})")
        self._task = None

    def log(self, message: str) -> None:
        """Print a line above the bars (or to standard error when disabled)."""
        if self.enabled:
            self._progress.console.print(message)

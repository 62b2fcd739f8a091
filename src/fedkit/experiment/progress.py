"""A rich progress bar for runs: round, training loss, test accuracy and ETA.

It draws on standard error, so a command's standard output stays machine-readable (``fedkit run
--json``). One bar per run; a study shows its runs one after another.
"""

from __future__ import annotations

import math
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


class RunProgress:
    """Progress of the runs of one command (a context manager).

    Args:
        enabled: Draw nothing when false (``--quiet``, tests).
        console: Where to draw (default: standard error).
    """

    def __init__(self, *, enabled: bool = True, console: Console | None = None) -> None:
        self.enabled = enabled
        self._progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]}  acc {task.fields[acc]}"),
            TimeElapsedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            console=console or Console(stderr=True),
            disable=not enabled,
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

    def start_run(self, name: str, total: int) -> None:
        """Begin a bar for run ``name`` of ``total`` rounds."""
        self._task = self._progress.add_task(escape(name), total=total, loss="—", acc="—")

    def update(self, completed: int, *, loss: float | None, accuracy: float | None) -> None:
        """Show ``completed`` rounds done, the latest training loss and test accuracy.

        An accuracy of ``None`` (round not evaluated) keeps the last one shown.
        """
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
        if self._task is None:
            return
        task = self._progress.tasks[-1]
        self._progress.update(self._task, description=f"{task.description} ({status})")
        self._task = None

    def log(self, message: str) -> None:
        """Print a line above the bars (or to standard error when disabled)."""
        if self.enabled:
            self._progress.console.print(message)

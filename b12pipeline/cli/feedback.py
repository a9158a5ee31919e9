"""Progress of long commands on stderr: what step, with counts, and how long so far.

On a terminal it is a Rich status line that each step replaces (finished steps stay printed above
it); anywhere else (a log file, a scheduler, a pipe) it is one plain line per step, so logs show
where a night was when it stopped. `--quiet` prints nothing. stdout keeps only the results.

Steps come from the library through b12pipeline.progress (file names and counts, never row values).
"""

from __future__ import annotations

import sys
import time
from contextlib import contextmanager
from typing import Iterator

import typer
from rich.markup import escape

from b12pipeline import progress
from b12pipeline.cli.common import err_console

QUIET_HELP = "Print no progress lines on stderr (results and errors still print)."
quiet_option = typer.Option(False, "--quiet", "-q", help=QUIET_HELP)


class Feedback:
    def __init__(self, title: str, started: float, status=None):
        self.title, self.started, self.status = title, started, status

    def step(self, text: str) -> None:
        elapsed = time.perf_counter() - self.started
        if self.status is None:  # plain lines: flushed at once, a scheduler's log shows them live
            sys.stderr.write(f"[{elapsed:6.1f}s] {self.title}: {text}\n")
            sys.stderr.flush()
        else:
            # steps name files: text, never Rich markup
            line = escape(f"{self.title}: {text}")
            err_console.print(f"[dim][{elapsed:6.1f}s][/] {line}", highlight=False, soft_wrap=True)
            self.status.update(line)


class _Silent(Feedback):
    def step(self, text: str) -> None:
        pass


@contextmanager
def feedback(title: str, quiet: bool = False) -> Iterator[Feedback]:
    """Show the library's progress steps (and the caller's own, via .step) while the block runs."""
    started = time.perf_counter()
    if quiet:
        yield _Silent(title, started)
        return
    if err_console.is_terminal:
        with err_console.status(f"{title}: starting") as status:
            shown = Feedback(title, started, status)
            with _listening(shown):
                yield shown
    else:
        shown = Feedback(title, started)
        with _listening(shown):
            yield shown


@contextmanager
def _listening(shown: Feedback) -> Iterator[None]:
    stop = progress.listen(lambda event, data: shown.step(data["text"]) if event == "step" else None)
    try:
        yield
    finally:
        stop()

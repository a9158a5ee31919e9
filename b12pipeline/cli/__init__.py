"""The b12pipeline command line: argument handling and calls into the library, nothing else.

Exit codes: 0 processed (with or without findings), 1 a file was rejected, 2 usage error,
3 another run holds the output folder (see runguard.py).
"""

from __future__ import annotations

import os
import sys

import typer

import b12pipeline  # noqa: F401  (telemetry defaults first)

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    rich_markup_mode="rich",
    help="Check every vitamin B12 injection against billing rules before the claim goes out.",
)

from b12pipeline.cli import backfill as _backfill  # noqa: E402
from b12pipeline.cli import queue as _queue  # noqa: E402
from b12pipeline.cli import reference as _reference  # noqa: E402
from b12pipeline.cli import review as _review  # noqa: E402
from b12pipeline.cli import rules as _rules  # noqa: E402
from b12pipeline.cli import run as _run  # noqa: E402
from b12pipeline.cli import serve as _serve  # noqa: E402

_run.register(app)
_backfill.register(app)
_rules.register(app)
_queue.register(app)
_reference.register(app)
_serve.register(app)
_review.register(app)

from b12pipeline.cli import pull as _pull  # noqa: E402
from b12pipeline.cli import synth as _synth  # noqa: E402

_synth.register(app)
_pull.register(app)


def main() -> None:
    # Quiet Prefect's own INFO chatter on the terminal; the CLI prints its own summary.
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
    try:
        app()
        code = 0
    except KeyboardInterrupt:
        code = 130
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        if isinstance(exc.code, str):
            print(exc.code, file=sys.stderr)
    exit_now(code)


def _send_what_prefect_holds() -> None:
    """Prefect sends logs and events from background workers that drain at interpreter shutdown,
    in threading's exit hooks, which os._exit skips, and after the temporary server's exit handler
    would have stopped it: they are drained here first (up to 5 s each), while the server still
    answers. A night's warnings (a rejected file) are in Prefect's log of the run because of this."""
    if "prefect.logging.handlers" not in sys.modules:
        return
    from prefect.logging.handlers import APILogWorker

    _drain(APILogWorker)
    if "prefect.events.worker" in sys.modules:
        from prefect.events.worker import EventsWorker

        _drain(EventsWorker)


def _drain(worker) -> None:
    try:
        worker.drain_all(timeout=5)
    except Exception:  # never stop the exit: what is not sent is Prefect's own loss, said by it
        pass


def exit_now(code: int) -> None:
    """Exit without tearing the interpreter down object by object.

    After a night the process holds Prefect, GX and Polars object graphs; Python's own shutdown took
    10-17 s of a 70-row night on a busy 2-core machine, after the summary was printed. The exit
    handlers still run first (they stop Prefect's temporary server and flush its logs and events,
    and close logging), then the streams are flushed and the process ends.
    """
    import atexit

    try:
        _send_what_prefect_holds()
        atexit._run_exitfuncs()
    finally:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):
                pass
        os._exit(code)

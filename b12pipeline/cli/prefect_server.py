"""Prefect's API for a CLI run: a running server (PREFECT_API_URL), else Prefect's temporary one.

The temporary server is a separate process that takes seconds to start (more on a busy machine),
so the CLI starts it in a background thread and meanwhile prepares what the night needs in this
process (Great Expectations' suite, the ICD-10-CM codes): the two overlap instead of adding up.
Prefect gives it 20 s by default and then fails the run with a RuntimeError traceback; here it gets
PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS (default 60 s), one more try with twice that, and
then one line saying what to do, exit 4 (the environment failed the run, not the data).
"""

from __future__ import annotations

import os
import threading

import typer

from b12pipeline.cli.common import EXIT_ENVIRONMENT, err_console

TIMEOUT_VARIABLE = "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"
DEFAULT_TIMEOUT_S = 60


class ServerStart:
    """Starts the temporary server in a thread (nothing to do with PREFECT_API_URL); wait() joins it."""

    def __init__(self) -> None:
        from prefect.settings import PREFECT_API_URL, PREFECT_SERVER_EPHEMERAL_ENABLED

        self.error, self.failed = "", False
        self.thread: threading.Thread | None = None
        if PREFECT_API_URL.value() or not PREFECT_SERVER_EPHEMERAL_ENABLED.value():
            return  # a running server (or none allowed: Prefect says so itself)
        self.timeout = int(os.environ.get(TIMEOUT_VARIABLE) or DEFAULT_TIMEOUT_S)
        self.thread = threading.Thread(target=self._start, name="prefect-temporary-server", daemon=True)
        self.thread.start()

    @property
    def temporary(self) -> bool:
        return self.thread is not None

    def _start(self) -> None:
        from prefect.server.api.server import SubprocessASGIServer

        for timeout in (self.timeout, 2 * self.timeout):
            server = SubprocessASGIServer()
            try:
                server.start(timeout=timeout)
                return
            except Exception as exc:  # Prefect raises RuntimeError (timeout) or an HTTP error
                self.error = f"{type(exc).__name__} after {timeout} s"
                server.stop()
        self.failed = True
        self.error = (
            f"Prefect's temporary server did not start ({self.error}, tried twice); the machine may be "
            f"overloaded: set {TIMEOUT_VARIABLE} higher, or PREFECT_API_URL to a running Prefect server"
        )

    def wait(self) -> None:
        if self.thread is None:
            return
        self.thread.join()
        if self.failed:
            err_console.print(f"[bold red]error:[/] {self.error}", soft_wrap=True)
            raise typer.Exit(EXIT_ENVIRONMENT)


def warm_up() -> None:
    """Build what every night needs in this process while the server starts (both are cached)."""
    from b12pipeline.icd10 import billable_codes
    from b12pipeline.validate import suite_runner

    suite_runner()
    billable_codes()

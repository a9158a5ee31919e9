"""Prefect's API for a CLI run: a running server (PREFECT_API_URL), else a temporary one.

The temporary server is the one Prefect itself would start (its API app under uvicorn, in a
separate process, UI and background services off), started here instead of through Prefect's
`SubprocessASGIServer` for three reasons:
- that class lives in Prefect's server package, whose import costs this process about 3 s of CPU
  that the night never uses; the server runs in its own process anyway;
- the process is started at once, from the main thread, so its seconds of start-up overlap the
  night's own preparation (Great Expectations' suite, the ICD-10-CM codes) instead of adding up;
- on Linux it is tied to this process (PR_SET_PDEATHSIG): a run that is killed, even with SIGKILL,
  takes its temporary server with it instead of leaving it running under pid 1.
Once the server answers, PREFECT_API_URL points at it for the rest of the run, so Prefect's clients
and workers use it as they would a running server. Prefect gives a temporary server 20 s and then
fails the run with a RuntimeError traceback; here it gets PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS
(default 60 s), one more try with twice that, then one line saying what to do, exit 4 (the
environment failed the run, not the data).
"""

from __future__ import annotations

import atexit
import contextlib
import importlib.util
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import typer

from b12pipeline.cli.common import EXIT_ENVIRONMENT, err_console
from b12pipeline.imports import imports_kept_for_the_run

TIMEOUT_VARIABLE = "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"
DEFAULT_TIMEOUT_S = 60
PORT_IN_USE = 3  # uvicorn's exit code when its port was taken between choosing and binding it
PR_SET_PDEATHSIG = 1


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _tied_to_this_process():
    """A pre-exec hook that has the kernel send SIGTERM to the server when this process ends."""
    if not sys.platform.startswith("linux"):
        return None
    import ctypes

    prctl = ctypes.CDLL(None, use_errno=True).prctl  # looked up before the fork: the child only calls it
    return lambda: prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


class ServerStart:
    """Starts the temporary server now (nothing to start with PREFECT_API_URL); wait() until it answers."""

    def __init__(self) -> None:
        from prefect.settings import PREFECT_API_URL, PREFECT_SERVER_EPHEMERAL_ENABLED

        self.error = ""
        self.process: subprocess.Popen | None = None
        if PREFECT_API_URL.value() or not PREFECT_SERVER_EPHEMERAL_ENABLED.value():
            return  # a running server (or none allowed: Prefect says so itself)
        self.timeout = int(os.environ.get(TIMEOUT_VARIABLE) or DEFAULT_TIMEOUT_S)
        self._launch()
        atexit.register(self.stop)  # before Prefect's own exit handlers register, so it runs after them

    @property
    def temporary(self) -> bool:
        return self.process is not None

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/api"

    def _launch(self) -> None:
        from prefect.settings import get_current_settings

        self.port = _free_port()
        spec = importlib.util.find_spec("prefect")
        assert spec is not None and spec.origin is not None
        env = {
            **os.environ,
            "PREFECT_UI_ENABLED": "0",
            "PREFECT__SERVER_EPHEMERAL": "1",  # Prefect's own marker: no UI, no background services
            "PREFECT__SERVER_FINAL": "1",
            **get_current_settings().to_environment_variables(exclude_unset=True),
        }
        self.started = time.monotonic()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "--app-dir", str(Path(spec.origin).parent.parent)]
            + ["--factory", "prefect.server.api.server:create_app", "--host", "127.0.0.1", "--port", str(self.port)]
            + ["--log-level", "error", "--lifespan", "on"],
            env=env,
            stdin=subprocess.DEVNULL,
            preexec_fn=_tied_to_this_process(),
        )

    def _answers(self, timeout: int) -> bool:
        while True:
            assert self.process is not None
            code = self.process.poll()
            if code == PORT_IN_USE:
                self._launch()
                continue
            if code is not None:
                self.error = f"it exited with code {code}"
                return False
            try:
                with urllib.request.urlopen(f"{self.api_url}/health", timeout=2) as response:
                    if response.status == 200:
                        return True
            except (urllib.error.URLError, OSError):
                pass
            if time.monotonic() - self.started >= timeout:
                self.error = f"no answer after {timeout} s"
                return False
            time.sleep(0.1)

    def wait(self) -> None:
        """Block until the server answers, then point Prefect at it; one retry, then exit 4."""
        if self.process is None:
            return
        for attempt, timeout in enumerate((self.timeout, 2 * self.timeout)):
            if attempt:
                self._launch()
            if self._answers(timeout):
                self._use()
                return
            self.stop()
        err_console.print(
            f"[bold red]error:[/] Prefect's temporary server did not start ({self.error}, tried twice); the "
            f"machine may be overloaded: set {TIMEOUT_VARIABLE} higher, or PREFECT_API_URL to a running "
            "Prefect server",
            soft_wrap=True,
        )
        raise typer.Exit(EXIT_ENVIRONMENT)

    def _use(self) -> None:
        """PREFECT_API_URL for this process and its children, in Prefect's process-wide settings too
        (threads Prefect starts later read those, not this thread's context)."""
        import prefect.context

        os.environ["PREFECT_API_URL"] = self.api_url
        prefect.context.refresh_global_settings_context()

    def stop(self) -> None:
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def warm_up_in_background() -> threading.Thread:
    """Build what every night needs in this process (the ICD-10-CM list, and GX's runner unless
    GX has a process of its own: gx_process.gx_in_its_own_process; both cached), and import the
    worklog's modules (SQLAlchemy, Alembic: ~0.4 s that a million-row night's single-threaded end
    waited for), in a thread started now, after Prefect's import, so the work overlaps the
    temporary server's start-up and the night's first steps (starting the flow, hashing and
    reading the extracts, which wait on the server or release the GIL). Validation waits for it
    (suite_runner holds a lock while it builds). Its imports are kept as imports_kept_for_the_run
    keeps them. A failure here is not reported here: the night builds the runner again where it
    needs it, and that failure is reported there."""

    def build() -> None:
        with imports_kept_for_the_run(), contextlib.suppress(Exception):
            from b12pipeline.icd10 import billable_codes
            from b12pipeline.validate import suite_runner

            suite_runner()
            billable_codes()
            import alembic.command  # noqa: F401  (worklog.store.upgrade's imports)
            import alembic.config  # noqa: F401

            import b12pipeline.worklog  # noqa: F401

    thread = threading.Thread(target=build, name="b12pipeline-warm-up", daemon=True)
    thread.start()
    return thread


HEARTBEAT_VARIABLES = ("PREFECT_FLOWS_HEARTBEAT_FREQUENCY", "PREFECT_RUNNER_HEARTBEAT_FREQUENCY")


@contextlib.contextmanager
def flow_run_settings():
    """Prefect settings for a flow run this command starts and waits for.

    Flow run heartbeats only serve an automation that marks silent runs Crashed, which a site
    creates itself and enables by setting PREFECT_FLOWS_HEARTBEAT_FREQUENCY (Prefect's "detect
    zombie flows" guide). Left at Prefect's default, the heartbeat thread costs every run up to 1 s
    at its end: the flow waits for the thread's one-second sleep to finish. So here heartbeats are
    sent only when the site has set a frequency (environment or profile); `serve` keeps Prefect's
    default."""
    from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, get_current_settings, temporary_settings
    from prefect.settings.models.flows import FlowsSettings

    default = FlowsSettings.model_fields["heartbeat_frequency"].default
    configured = any(os.environ.get(v) for v in HEARTBEAT_VARIABLES)
    if configured or get_current_settings().flows.heartbeat_frequency != default:
        yield
        return
    with temporary_settings(updates={PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}):
        yield

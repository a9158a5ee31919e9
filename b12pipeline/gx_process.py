"""GX in a process of its own, for the nights the command line runs.

GX's import costs ~2.5 s of CPU (pandas, SciPy and SQLAlchemy come with its expectation modules).
In the night's own process it ran beside the night's first steps and took a core from them. In a
process of its own it starts with the command once its arguments and rules have passed their
checks (cli/run.py gx_started), before Prefect, on the core Prefect's single-threaded start leaves
idle, and the night's process never imports it.

Validation sends each column's values to check (distinct values: small frames) through a pipe and
gets back what validate.SuiteRunner returns. Nothing is logged from here. The process ends with
the command's night (gx_in_its_own_process). If it cannot start or stops, the night builds the
runner in its own process and reports any failure there, as it does without this process.

Run as `python -m b12pipeline.gx_process SUITE`: requests on stdin, answers on stdout.

GX's own import brings modules for expectations a suite here cannot hold (every expectation needs a
row-mask translation, validate.py): SciPy's statistics for the distribution tests and Altair for the
KL-divergence chart, ~1.2 s of the process's ~4 s of CPU and 80 MB. The process defers them: each
loads on its first use, so nothing GX does with them changes, only when they are read.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import os
import subprocess
import sys
import threading
import types
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from b12pipeline.paths import suite_file

_started: dict[Path, SuiteProcess] = {}  # by suite: processes gx_process_started holds open


@contextmanager
def gx_process_started(suite_path: Path | None = None) -> Iterator[SuiteProcess | None]:
    """GX's process for the suite (the shipped one by default), started now and ended with the
    block; gx_in_its_own_process inside the block serves validation from it. Starting it imports
    no GX, Polars or validation code here: a command that stops at its argument checks is as quick
    as without it."""
    path = suite_file(suite_path)
    try:
        process = SuiteProcess(path)
    except OSError:  # no process to be had: GX in this process, as without one
        yield None
        return
    _started[path] = process
    try:
        yield process
    finally:
        _started.pop(path, None)
        process.close()


@contextmanager
def gx_in_its_own_process(suite_path: Path | None = None) -> Iterator[SuiteProcess | None]:
    """While the block runs, validation of the suite (the shipped one by default) goes to GX's own
    process: the one gx_process_started holds, else one started now and ended with the block."""
    from b12pipeline.validate import served_by

    held = _started.get(suite_file(suite_path))
    with nullcontext(held) if held is not None else gx_process_started(suite_path) as process:
        if process is None:
            yield None
            return
        with served_by(process, suite_path):
            yield process


class SuiteProcess:
    """validate.SuiteRunner's interface (spec, columns, run, failing_values), served by GX's process."""

    def __init__(self, suite_path: Path):
        self.path = suite_path
        self.spec = json.loads(suite_path.read_text())
        self._lock = threading.Lock()
        self._local: Any = None  # the runner built here, once the process has failed
        self._process = subprocess.Popen(
            [sys.executable, "-m", "b12pipeline.gx_process", str(suite_path)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,  # GX's own chatter; the night reports failures itself
        )
        assert self._process.stdin is not None and self._process.stdout is not None
        self._send = Connection(os.dup(self._process.stdin.fileno()), readable=False)
        self._receive = Connection(os.dup(self._process.stdout.fileno()), writable=False)
        self._process.stdin.close()
        self._process.stdout.close()

    def close(self) -> None:
        """End the process now (it holds nothing to keep; it may still be importing GX)."""
        self._send.close()
        self._receive.close()
        self._process.kill()
        self._process.wait()

    @property
    def columns(self) -> list[str]:
        from b12pipeline.validate import suite_columns

        return suite_columns(self.spec)

    def run(self, values: dict):
        return self._call("run", values)

    def failing_values(self, values, name: str):
        return self._call("failing_values", values, name)

    def _call(self, method: str, *args):
        with self._lock:
            if self._local is None:
                try:
                    self._send.send((method, args))
                    kind, value = self._receive.recv()
                except (EOFError, OSError):  # the process is gone: GX in this process from now on
                    self._local = self._runner_here()
                else:
                    if kind == "error":
                        raise value
                    return value
        return getattr(self._local, method)(*args)

    def _runner_here(self):
        from b12pipeline.validate import SuiteRunner

        self._process.kill()
        return SuiteRunner(self.path)


def _serve(suite: Path, requests: Connection, answers: Connection) -> None:
    from b12pipeline.imports import imports_kept_for_the_run

    try:
        with imports_kept_for_the_run():  # GX's import and context
            from b12pipeline.validate import SuiteRunner

            runner: SuiteRunner | None = SuiteRunner(suite)
        failed: BaseException | None = None
    except Exception as exc:  # answered to every request: the night reports it where it validates
        runner, failed = None, exc
    while True:
        try:
            method, args = requests.recv()
        except EOFError:  # the command has ended
            return
        try:
            if runner is None:
                raise failed  # type: ignore[misc]
            answers.send(("ok", getattr(runner, method)(*args)))
        except Exception as exc:
            answers.send(("error", _sendable(exc)))


def _sendable(exc: Exception) -> Exception:
    """`exc` if it survives the pipe, else a RuntimeError naming its type (GX's own exceptions do
    not all pickle; their text can quote a value, so it is not carried over)."""
    import pickle

    try:
        pickle.loads(pickle.dumps(exc))
        return exc
    except Exception:
        return RuntimeError(f"{type(exc).__name__} in GX's process")


# Modules GX imports for expectations that no suite here holds (see the module's docstring).
DEFERRED = ("scipy.stats", "altair")


class DeferredModule(types.ModuleType):
    """Stands in sys.modules for a module until one of its attributes is first read; it then imports
    the module and hands over every attribute from it. An importer that ran before holds this object,
    which answers as the module does."""

    def __getattr__(self, attr: str):  # only for attributes this object does not have itself
        name = self.__name__
        if sys.modules.get(name) is self:
            del sys.modules[name]
            importlib.import_module(name)
        return getattr(sys.modules[name], attr)


def defer(name: str) -> bool:
    """Put a DeferredModule for `name` in sys.modules (nothing of it runs yet); False when `name` is
    imported already or cannot be found (then nothing changes)."""
    if name in sys.modules:
        return False
    try:
        spec = importlib.util.find_spec(name)  # imports the parent package only (SciPy's is small)
    except ImportError:
        return False
    if spec is None:
        return False
    module = DeferredModule(name)
    module.__spec__, module.__loader__, module.__file__ = spec, spec.loader, spec.origin
    sys.modules[name] = module
    return True


if __name__ == "__main__":
    for deferred in DEFERRED:
        defer(deferred)
    _serve(Path(sys.argv[1]), Connection(os.dup(0), writable=False), Connection(os.dup(1), readable=False))

"""Progress events from the library to whoever displays them (the CLI's progress lines).

The library calls emit(); nothing happens unless a listener is registered. Events carry file names
and counts only, never row values.
"""

from __future__ import annotations

from typing import Callable

_listeners: list[Callable[[str, dict], None]] = []


def listen(callback: Callable[[str, dict], None]) -> Callable[[], None]:
    _listeners.append(callback)
    return lambda: _listeners.remove(callback)


def emit(event: str, **data) -> None:
    for callback in list(_listeners):
        callback(event, data)


# Logging `extra` for a flow's line that a command's summary also prints (a rejected file): the
# command keeps the log line off its terminal, and Prefect's API and a worker's console still get it.
SAID_IN_SUMMARY = {"said_in_summary": True}


def step(text: str) -> None:
    """A step of long work, said in a few words with counts (shown by the CLI on stderr)."""
    emit("step", text=text)

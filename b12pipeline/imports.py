"""Imports that live as long as the process, made without the cyclic garbage collector."""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Iterator


@contextlib.contextmanager
def imports_kept_for_the_run() -> Iterator[None]:
    """Prefect's and Great Expectations' imports make over a million objects that live as long as
    the process. Python's cyclic garbage collector scans every one of them again at each full
    collection: about 1.2 s of CPU in a 70-row night, most of it during the imports themselves, and
    ~0.3 s of the ~2.3 s GX's own process (gx_process.py) spends building its runner. It is off while
    they import; then everything they made is frozen (gc.freeze: never scanned again) and it is back
    on for the night's own objects (about 0.1 s of collection in the same night)."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        gc.freeze()
        if enabled:
            gc.enable()

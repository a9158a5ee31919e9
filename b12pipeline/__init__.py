"""b12pipeline: nightly revenue-integrity checks of vitamin B12 injections.

Data flows one way: ingest -> validate -> normalize -> evaluate -> write (queues).
"""

from __future__ import annotations

import os

__version__ = "0.1.0"

# Telemetry stays off unless the operator explicitly turns it on: this software touches PHI.
# setdefault: an explicit environment value wins. Must run before prefect / GX are imported.
TELEMETRY_DEFAULTS = {
    "DO_NOT_TRACK": "1",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "GX_ANALYTICS_ENABLED": "False",
}
for _key, _value in TELEMETRY_DEFAULTS.items():
    os.environ.setdefault(_key, _value)

# Polars allocates through its own jemalloc, whose build keeps freed pages for reuse: each stage of
# a large night then stacked on the pages of the stages before it. Freed pages go back to the
# system 0.3 s after they are freed (a background thread does it, off the working threads): a
# 1M-row night peaked at 1.96 GB, 1.59 GB with this, no slower (docs/decisions.md). Takes effect
# only where polars is imported after this package; an operator's own _RJEM_MALLOC_CONF wins.
os.environ.setdefault("_RJEM_MALLOC_CONF", "background_thread:true,dirty_decay_ms:300,muzzy_decay_ms:0")

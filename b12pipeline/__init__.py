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

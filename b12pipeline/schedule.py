"""Which night a scheduled run processes: the date of its scheduled start, in the site's time zone.

A run scheduled for 02:30 America/New_York on 2024-03-03 processes night 2024-03-03 even when it
starts late (a worker was down, the server was busy) or is re-run by hand days later: the night is
a property of the schedule slot, never of the wall clock when the code happens to run.
"""

from __future__ import annotations

import datetime as dt
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError


def check_timezone(tz: str) -> ZoneInfo:
    try:
        return ZoneInfo(tz)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"unknown time zone {tz!r} (use an IANA name such as America/New_York)") from None


def night_of(scheduled_start: dt.datetime, tz: str) -> dt.date:
    """The calendar date of `scheduled_start` in `tz` (a naive time is taken as UTC, as Prefect stores it)."""
    if scheduled_start.tzinfo is None:
        scheduled_start = scheduled_start.replace(tzinfo=dt.timezone.utc)
    return scheduled_start.astimezone(check_timezone(tz)).date()

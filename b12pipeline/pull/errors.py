"""The one failure a pull reports: its source could not be reached (after Prefect's retries)."""

from __future__ import annotations


class SourceUnreachable(Exception):
    """str() names the source and what failed; never a credential, a URL's secret or a row value."""

    def __init__(self, source: str, reason: str):
        self.source, self.reason = source, reason
        super().__init__(f"source {source}: {reason}")


class HostKeyRefused(SourceUnreachable):
    """The SFTP server's host key is not in known_hosts (or differs): never retried, never accepted."""

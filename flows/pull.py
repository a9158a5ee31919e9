"""The pull flow: fetch the night from a configured source, then process it as a landing folder.

Thin by design: the fetch is one task that Prefect retries (bounded, per source) when the source
cannot be reached; everything after it is the landing flow, unchanged.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from prefect import flow, get_run_logger, task

import b12pipeline  # noqa: F401  (telemetry defaults before prefect is imported)
from b12pipeline import pull
from b12pipeline.runguard import guard_output
from flows.nightly import landing_flow


def _retry_unreachable(task, task_run, state) -> bool:
    """Retry a source that could not be reached, never a refused host key or a configuration error."""
    try:
        state.result()
    except pull.HostKeyRefused:
        return False
    except pull.SourceUnreachable:
        return True
    except Exception:
        return False
    return False


@task(name="fetch-source")
def fetch_source(sources_file: str, source: str, out: str, night: dt.date) -> list[str]:
    return [str(p) for p in pull.fetch(pull.load_sources(Path(sources_file))[source], out, night)]


@flow(name="b12-pull", log_prints=False)
def pull_flow(
    source: str,
    out: str,
    sources_file: str,
    night: dt.date | None = None,
    tz: str = "UTC",
    rules_dir: str | None = None,
    engine: str = "polars",
) -> dict:
    """Fetch `source` for `night` (default: the scheduled start's date in `tz`) and process what is new."""
    from prefect.runtime import flow_run

    from b12pipeline.schedule import night_of

    logger = get_run_logger()
    config = pull.load_sources(Path(sources_file))[source]
    night = night or night_of(flow_run.scheduled_start_time, tz)
    fetch = fetch_source.with_options(
        retries=config.retries, retry_delay_seconds=config.retry_delay_seconds, retry_condition_fn=_retry_unreachable
    )
    with guard_output(out):
        fetched = fetch(sources_file, source, out, night)
        logger.info("night %s: %d file(s) fetched from source %s", night, len(fetched), source)
        result = landing_flow(
            landing=str(pull.incoming_dir(out, source)),
            out=out,
            night=night,
            rules_dir=rules_dir,
            source=config.format,
            engine=engine,
        )
        pull.clear_processed(out, source, result["checksums"])
    return {**result, "source": source, "fetched": len(fetched)}


def pull_deployment(source: str, out: str, sources_file: str, cron: str, tz: str, name: str, rules_dir: str | None):
    """The scheduled deployment of `pull_flow` (what `b12pipeline serve --source` serves)."""
    from prefect.schedules import Cron

    from b12pipeline.schedule import check_timezone

    check_timezone(tz)
    return pull_flow.to_deployment(
        name=name,
        schedules=[Cron(cron, timezone=tz)],
        parameters={"source": source, "out": out, "sources_file": sources_file, "tz": tz, "rules_dir": rules_dir},
        description=f"Pull source {source} and process the night, on '{cron}' ({tz}).",
    )

"""`b12pipeline serve`: register the nightly deployment with its cron schedule and run it when due."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from b12pipeline.cli.common import EXIT_ENVIRONMENT, console, err_console, usage_error
from b12pipeline.cli.pull import checked_sources_file


def register(app: typer.Typer) -> None:
    @app.command()
    def serve(
        landing: Optional[Path] = typer.Option(None, help="Landing folder the nightly extracts arrive in."),
        source: Optional[str] = typer.Option(None, "--source", help="Pull this source instead (see `pull`)."),
        sources: Optional[Path] = typer.Option(None, "--sources", help="Sources file for --source."),
        out: Path = typer.Option(Path("var"), "--out", "-o", help="Output root."),
        cron: str = typer.Option("30 2 * * *", help="When to run, as a cron expression in --tz."),
        tz: str = typer.Option("UTC", help="IANA time zone of --cron and of the night's date."),
        name: str = typer.Option("nightly", help="Deployment name (flow b12-nightly-landing)."),
        rules: Optional[Path] = typer.Option(None, help="Rules folder (default: the project's rules/)."),
    ) -> None:
        """Serve the nightly run on a schedule (needs a Prefect server: PREFECT_API_URL).

        Each scheduled run processes the files in LANDING not processed before, as the night of its
        scheduled start date in --tz (a late or re-run slot still processes its own night). With
        --source, each run first pulls the night from that source (SQL or SFTP) instead.
        """
        if (landing is None) == (source is None):
            raise usage_error("give one of --landing FOLDER or --source NAME")
        if landing is not None and not landing.is_dir():
            raise usage_error(f"--landing {landing} is not a folder")
        if rules is not None and not rules.is_dir():
            raise usage_error(f"--rules {rules} is not a folder")
        from b12pipeline.deployments import RulesetError, check_requested

        try:
            check_requested(out, rules)
        except RulesetError as exc:
            raise usage_error(str(exc)) from None
        rules_dir = str(rules.resolve()) if rules else None
        if source is not None:
            sources_file = checked_sources_file(source, sources)
        check_api()
        from prefect import serve as prefect_serve

        from flows.nightly import landing_deployment
        from flows.pull import pull_deployment

        try:
            if source is not None:
                deployment = pull_deployment(
                    source, str(out.resolve()), str(sources_file.resolve()), cron, tz, name, rules_dir
                )
            else:
                assert landing is not None
                deployment = landing_deployment(str(landing.resolve()), str(out.resolve()), cron, tz, name, rules_dir)
        except ValueError as exc:  # an unknown time zone, or Prefect's check of the cron expression
            raise usage_error(
                f"--cron {cron!r} / --tz {tz!r}: {str(exc).splitlines()[-1] if str(exc) else exc}"
            ) from None
        what = f"b12-pull/{name}: source {source}" if source else f"b12-nightly-landing/{name}: landing {landing}"
        console.print(f"serving {what}, '{cron}' {tz}, out {out} (Ctrl-C to stop)")
        prefect_serve(deployment)


def check_api() -> None:
    """`serve` registers a deployment and waits for its schedule: that needs a Prefect server that
    stays up. Prefect's temporary server would vanish with this process, so say so and stop."""
    import httpx
    from prefect.settings import PREFECT_API_URL

    url = PREFECT_API_URL.value()
    if not url:
        err_console.print(
            "[bold red]error:[/] serve needs a running Prefect server: start one (`prefect server start`) "
            "and set PREFECT_API_URL, e.g. http://127.0.0.1:4200/api",
            soft_wrap=True,
        )
        raise typer.Exit(EXIT_ENVIRONMENT)
    try:
        httpx.get(f"{url.rstrip('/')}/health", timeout=10).raise_for_status()
    except httpx.HTTPError as exc:
        err_console.print(
            f"[bold red]error:[/] PREFECT_API_URL {url} is not reachable ({type(exc).__name__}); "
            "start the Prefect server or correct PREFECT_API_URL",
            soft_wrap=True,
        )
        raise typer.Exit(EXIT_ENVIRONMENT) from None

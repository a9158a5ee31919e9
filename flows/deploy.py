"""Deploying a ruleset on an output root: gates, snapshot, pointer switch, re-evaluation, record.

Thin: the gates, snapshots and report are library calls; the re-evaluation is the backfill flow.
`rules deploy`, `rules rollback` and `backfill --rules` all come through deploy_rules.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import b12pipeline  # noqa: F401  (telemetry defaults before prefect is imported)
from b12pipeline import deployments, pipeline, progress
from b12pipeline.backfill import rerun_range
from b12pipeline.files import write_json
from b12pipeline.paths import OutputLayout
from b12pipeline.ruleset_changes import gate_failures, rule_changes
from b12pipeline.runguard import guard_output


class GatesFailed(deployments.RulesetError):
    """The candidate ruleset failed a deploy gate; `reasons` lists every failure."""

    def __init__(self, folder: Path, reasons: list[str]):
        self.reasons = reasons
        super().__init__(f"{folder}: not deployed, {len(reasons)} gate failure(s)")


def deploy_rules(
    folder: Path | str,
    out: Path | str,
    start: dt.date | None = None,
    end: dt.date | None = None,
    *,
    kind: str = "deploy",
    chunk_days: int | None = None,
    dask_address: str | None = None,
    workers: int | None = None,
    deployed_by: str | None = None,
) -> dict:
    """Deploy `folder` on `out` and re-evaluate the range with it; returns the run's manifest.

    The gates run before anything is written, and the output lock is taken before the first write:
    a refusal (GatesFailed, RulesetError, runguard.OutputLocked) changes nothing under `out`."""
    from flows.backfill import reevaluate

    folder, out = Path(folder), str(out)
    active = deployments.read_active(out)
    baseline = deployments.snapshot_dir(out, active.version) if active else None
    progress.step(f"checking {folder.name}: lint, cases, version bumps")
    reasons = gate_failures(folder, baseline)
    if reasons:
        raise GatesFailed(folder, reasons)
    progress.step("gates passed")
    candidate = pipeline.Rules.load(folder)
    try:
        span = rerun_range(out, candidate, start, end)
    except ValueError as exc:
        raise deployments.RulesetError(str(exc)) from None
    with guard_output(out):
        if deployments.read_active(out) != active:
            raise deployments.RulesetError(f"{out}: the active ruleset changed while the gates ran; deploy again")
        deployed_at = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
        version = deployments.snapshot(out, folder)
        previous = active.version if active else ""
        if active and active.version == version:  # a redeploy: keep what a rollback would return to
            previous = active.previous_version
        deployment = deployments.Deployment(
            version=version,
            deployed_at=deployed_at,
            deployed_by=deployed_by or deployments.operator_name(),
            kind=kind,
            previous_version=previous,
            source=str(folder),
        )
        # Switch first: if the re-evaluation dies, the next night already uses the new rules and
        # running the deploy again finishes the range.
        deployments.write_active(out, deployment)
        progress.step(f"ruleset {version} active (was {previous or 'none'})")
        snapshot = deployments.snapshot_dir(out, version)
        record: dict = {
            "kind": kind,
            "by": deployment.deployed_by,
            "at": deployed_at,
            "from_version": active.version if active else "",
            "to_version": version,
            "source": str(folder),
        }
        if span is None:
            return {"run_id": "", "deployment": record, "diff": None}
        # The worklog records each finding this resolves, reopens or brings in with the deployment as cause.
        cause = f"{kind} of ruleset {record['from_version'] or '(none)'} -> {version}"
        manifest = reevaluate(
            span[0], span[1], out, str(snapshot), chunk_days, dask_address, workers, cause, deployment.deployed_by
        )
        record["counts"] = manifest["diff"]["total"]
        record["worklog"] = manifest.get("worklog", {})
        manifest["deployment"] = record
        changes = rule_changes(baseline, snapshot)
        manifest["rules_changed"] = sorted(changes.changed_rule_ids)
        manifest["settings_changed"] = sorted(changes.other_files)
        manifest["change_report"] = f"runs/{manifest['run_id']}/changes.html"
        write_json(OutputLayout(Path(out)).run_dir(manifest["run_id"]) / "manifest.json", manifest)
        from b12pipeline.change_report import write_change_report

        write_change_report(out, manifest, changes)
        progress.step("change report written")
        deployments.write_active(out, deployments.Deployment(**{**deployment.to_dict(), "run_id": manifest["run_id"]}))
        return manifest


def rollback(out: Path | str, to_version: str | None = None, start: dt.date | None = None, **options) -> dict:
    """Redeploy an earlier snapshot of `out` (default: the one the active deployment replaced)."""
    active = deployments.read_active(out)
    if active is None:
        raise deployments.RulesetError(f"{out}: no ruleset has been deployed here")
    target = to_version or active.previous_version
    if not target:
        raise deployments.RulesetError(f"{out}: ruleset {active.version} replaced nothing; give --to VERSION")
    known = deployments.known_versions(out)
    if target not in known:
        raise deployments.RulesetError(
            f"{out}: no ruleset {target} was deployed here; known: {', '.join(known) or 'none'}"
        )
    return deploy_rules(deployments.snapshot_dir(out, target), out, start, kind="rollback", **options)

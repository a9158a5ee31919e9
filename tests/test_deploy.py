"""One active ruleset per output root: a deployed rules change holds through later nights; deploy
gates refuse and change nothing; rollback restores the earlier findings; preview writes only
<out>/previews/."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest
from history_support import (
    FIRST_DOS,
    NIGHTS,
    PROJECT,
    copy_out,
    night_file,
    queue_frame,
    without_run_id,
)
from rules_support import FEW
from rules_support import rules_copy as copy_rules
from typer.testing import CliRunner

from b12pipeline.cli import app
from b12pipeline.pipeline import Rules
from b12pipeline.rulesets import ruleset_version, versioned_files

# Every test here runs the real flows on a multi-night history (the module fixture runs nine nights).
pytestmark = pytest.mark.slow

CHANGED_DAY = dt.date(2024, 3, 6)  # where the FREQ-001 change shows in the history fixture


def invoke(*args: str, env: dict | None = None):
    return CliRunner().invoke(app, list(args), env=env)


def tree(out: Path, skip: str | None = None) -> dict[str, str]:
    """Every file under `out` (except the `skip` folder) with the SHA-256 of its bytes."""
    return {
        str(p.relative_to(out)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(out.rglob("*"))
        if p.is_file() and not (skip and p.relative_to(out).parts[0] == skip)
    }


def rules_copy(tmp: Path, name: str, source: Path = PROJECT / "rules", only: tuple[str, ...] = ()) -> Path:
    return copy_rules(tmp / name, source, only)


@pytest.fixture(scope="module")
def base(shipped_nights, changed_rules_nights, tmp_path_factory) -> dict:
    """Nights 1-4 with the shipped rules; all five nights, fresh, with FREQ-001 changed (version 2).
    Shared with the history and backfill tests: each test works on a copy."""
    return {
        "tmp": tmp_path_factory.mktemp("deploy"),
        "rules_b": changed_rules_nights["rules"],
        "four": shipped_nights["four"],
        "fresh": changed_rules_nights["out"],
    }


def active_record(out: Path) -> dict:
    return json.loads((out / "rulesets" / "active.json").read_text())


def test_the_first_run_deploys_the_shipped_rules_as_a_snapshot(base):
    out = base["four"]
    record = active_record(out)
    shipped = PROJECT / "rules"
    assert record["version"] == ruleset_version(shipped) and record["kind"] == "initial"
    snapshot = out / "rulesets" / record["version"]
    # The snapshot holds exactly what the version hashes, byte for byte.
    want = {p.relative_to(shipped).as_posix(): p.read_bytes() for p in versioned_files(shipped)}
    got = {p.relative_to(snapshot).as_posix(): p.read_bytes() for p in snapshot.rglob("*") if p.is_file()}
    assert got == want and "site.yaml" in got and "reference/products.csv" in got
    assert ruleset_version(snapshot) == record["version"]
    assert set(queue_frame(out)["ruleset_version"]) == {record["version"]}


def test_a_run_given_another_rules_folder_refuses_and_names_the_deploy_command(base, tmp_path):
    out = copy_out(base["four"], tmp_path / "out")
    before = tree(out)
    version_b = ruleset_version(base["rules_b"])
    for env in (None, {"B12_RULES_DIR": str(base["rules_b"])}):
        extra = () if env else ("--rules", str(base["rules_b"]))
        result = invoke("run", "--extract", str(night_file(NIGHTS[4])), "--out", str(out), *extra, env=env)
        assert result.exit_code == 2, result.output
        text = " ".join(result.output.split())
        assert version_b in text and active_record(out)["version"] in text
        assert "b12pipeline rules deploy --rules" in text
        assert "Traceback" not in result.output
    landing = tmp_path / "landing"
    landing.mkdir()
    shutil.copy2(night_file(NIGHTS[4]), landing)
    result = invoke("nightly", "--landing", str(landing), "--out", str(out), "--rules", str(base["rules_b"]))
    assert result.exit_code == 2 and version_b in " ".join(result.output.split())
    assert [p.name for p in landing.iterdir()] == [night_file(NIGHTS[4]).name]
    assert tree(out) == before
    # The library path too: a backfill with other rules is refused; new rules come in by deploying.
    from b12pipeline.deployments import RulesetMismatch
    from flows.backfill import run_backfill

    with pytest.raises(RulesetMismatch, match="rules deploy"):
        run_backfill(FIRST_DOS, NIGHTS[3], str(out), rules_dir=str(base["rules_b"]))
    assert tree(out, skip=".lock") == tree(base["four"], skip=".lock")


def test_a_deployed_change_holds_through_the_next_nightly(base, tmp_path):
    """Deploy FREQ-001 v2, then a nightly without --rules that re-evaluates the changed date."""
    out = copy_out(base["four"], tmp_path / "out")
    old = queue_frame(out)
    result = invoke("rules", "deploy", "--rules", str(base["rules_b"]), "--out", str(out), "--from", str(FIRST_DOS))
    assert result.exit_code == 0, result.output
    version_b = ruleset_version(base["rules_b"])
    assert active_record(out)["version"] == version_b
    deployed = queue_frame(out)
    assert not without_run_id(deployed).equals(without_run_id(old))  # the change changed findings

    landing = tmp_path / "landing"
    landing.mkdir()
    shutil.copy2(night_file(NIGHTS[4]), landing)
    result = invoke("nightly", "--landing", str(landing), "--out", str(out), "--night", NIGHTS[4].isoformat())
    assert result.exit_code == 0, result.output
    (manifest,) = [
        json.loads(p.read_text())
        for p in (out / "runs").glob("night-2024-03-08-*/manifest.json")
        if json.loads(p.read_text())["kind"] == "night"
    ]
    assert CHANGED_DAY.isoformat() in manifest["dates_evaluated"]  # the night did re-evaluate the change
    assert manifest["ruleset_version"] == version_b
    after = queue_frame(out)
    assert without_run_id(after).equals(without_run_id(queue_frame(base["fresh"])))
    freq = after.filter((pl.col("rule_id") == "FREQ-001") & (pl.col("service_date") == CHANGED_DAY))
    assert set(freq["ruleset_version"]) == {version_b}

    shown = invoke("rules", "active", "--out", str(out))
    assert shown.exit_code == 0 and version_b in shown.output and "deploy" in shown.output


def _edited(tmp: Path, name: str, rule: str, edits: list[tuple[str, str]]) -> Path:
    folder = rules_copy(tmp, name, only=FEW)
    path = next(folder.rglob(f"{rule}.yaml"))
    text = path.read_text()
    for old, new in edits:
        assert old in text, old
        text = text.replace(old, new, 1)
    path.write_text(text)
    return folder


def test_deploy_refuses_failing_cases_and_unbumped_changes_and_changes_nothing(base, tmp_path):
    out = copy_out(base["four"], tmp_path / "out")
    before = tree(out)
    unbumped = _edited(tmp_path, "unbumped", "DOC-001", [("severity: warning", "severity: error")])
    result = invoke("rules", "deploy", "--rules", str(unbumped), "--out", str(out))
    assert result.exit_code == 2, result.output
    text = " ".join(result.output.split())
    assert "DOC-001 version 1: severity changed; give the rule a new version" in text
    assert tree(out) == before

    # A changed condition under a new version, whose own cases now fail.
    failing = _edited(
        tmp_path,
        "failing",
        "DOC-001",
        [
            ('version: "1"', 'version: "2"'),
            ("{field: lot_number, is_null: true}", "{field: lot_number, is_null: false}"),
        ],
    )
    result = invoke("rules", "deploy", "--rules", str(failing), "--out", str(out))
    assert result.exit_code == 2, result.output
    assert "case: DOC-001 fires[1] did not fire" in " ".join(result.output.split())
    assert "refused version:" not in " ".join(result.output.split())  # the bump gate itself passed
    assert tree(out) == before

    broken = rules_copy(tmp_path, "broken")
    (broken / "coding" / "UNITS-001.yaml").write_text("id: [unclosed\n")
    result = invoke("rules", "deploy", "--rules", str(broken), "--out", str(out))
    assert result.exit_code == 2 and "UNITS-001.yaml" in "".join(result.output.split())
    assert "Traceback" not in result.output
    assert tree(out) == before

    # `rules check`, the same gates for a compliance CI job: exit 1 on a gate failure, 0 when clean.
    for baseline in (("--out", str(out)), ("--against", str(PROJECT / "rules"))):
        checked = invoke("rules", "check", str(unbumped), *baseline)
        assert checked.exit_code == 1 and "DOC-001 version 1: severity changed" in " ".join(checked.output.split())
    rules_b = rules_copy(tmp_path, "rules_b", base["rules_b"], only=FEW)
    assert invoke("rules", "check", str(rules_b), "--against", str(PROJECT / "rules")).exit_code == 0
    assert invoke("rules", "check", str(unbumped)).exit_code == 0  # nothing to compare versions with
    assert invoke("rules", "check", str(broken)).exit_code == 2
    assert tree(out) == before


def test_deploy_while_a_run_holds_the_output_exits_3_and_changes_nothing(base, tmp_path):
    out = copy_out(base["four"], tmp_path / "out")
    before = tree(out)
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import fcntl, os, sys, time\n"
            "fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT, 0o600)\n"
            "fcntl.flock(fd, fcntl.LOCK_EX)\nprint('held', flush=True)\ntime.sleep(120)\n",
            str(out / ".lock"),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        # The gates pass before the lock is asked for: a folder of the changed rule alone passes them sooner.
        rules_b = rules_copy(tmp_path, "rules_b", base["rules_b"], only=FEW)
        result = invoke("rules", "deploy", "--rules", str(rules_b), "--out", str(out))
        assert result.exit_code == 3, result.output
        assert "in use by another b12pipeline run" in " ".join(result.output.split())
    finally:
        holder.kill()
        holder.wait()
    assert tree(out) == before


def test_rollback_restores_the_earlier_findings_exactly(base, tmp_path):
    out = copy_out(base["four"], tmp_path / "out")
    old = queue_frame(out)
    old_version = active_record(out)["version"]
    assert invoke("rules", "deploy", "--rules", str(base["rules_b"]), "--out", str(out)).exit_code == 0
    after_deploy = queue_frame(out)
    assert not without_run_id(after_deploy).equals(without_run_id(old))

    before = tree(out)
    unknown = invoke("rules", "rollback", "--out", str(out), "--to", "0123456789ab")
    assert unknown.exit_code == 2 and "no ruleset 0123456789ab was deployed" in " ".join(unknown.output.split())
    assert tree(out) == before

    result = invoke("rules", "rollback", "--out", str(out))
    assert result.exit_code == 0, result.output
    back = queue_frame(out)
    assert without_run_id(back).equals(without_run_id(old))  # ruleset_version included
    keys = ["finding_id", "admin_id", "rule_id", "service_date", "source_file", "source_row"]
    assert back.select(keys).sort(keys).equals(old.select(keys).sort(keys))
    record = active_record(out)
    assert (record["version"], record["kind"]) == (old_version, "rollback")
    assert record["previous_version"] == ruleset_version(base["rules_b"])

    # The coders' worklog: the deploy resolved the finding, the rollback reopened it; one history.
    from b12pipeline.worklog import history, open_worklog

    (added,) = set(after_deploy["finding_id"]) - set(old["finding_id"])
    assert invoke("rules", "deploy", "--rules", str(base["rules_b"]), "--out", str(out)).exit_code == 0
    trail = [
        (h["interface"], h["before"], h["after"], h["cause"].split(" of ")[0])
        for h in history(open_worklog(out), added)
    ]
    assert trail == [
        ("deploy", None, "new", "deploy"),
        ("deploy", "new", "resolved", "rollback"),
        ("deploy", "resolved", "reopened", "deploy"),
    ]


def test_preview_writes_only_under_previews_and_matches_the_deploy(base, tmp_path):
    out = copy_out(base["four"], tmp_path / "out")
    before = tree(out)
    result = invoke("rules", "preview", "--rules", str(base["rules_b"]), "--out", str(out), "--from", str(FIRST_DOS))
    assert result.exit_code == 0, result.output
    assert tree(out, skip="previews") == before
    (folder,) = (out / "previews").iterdir()
    summary = json.loads((folder / "preview.json").read_text())
    assert [r["rule_id"] for r in summary["rules"]] == ["FREQ-001"]
    old_v, new_v = (Rules.load(f).ruleset.by_id("FREQ-001")[0].version for f in (PROJECT / "rules", base["rules_b"]))
    assert summary["rules"][0]["old_versions"] == [old_v] and summary["rules"][0]["new_versions"] == [new_v]
    page = (folder / "report.html").read_text()
    assert "FREQ-001" in page and f"+version: &quot;{new_v}&quot;" in page
    detail = pl.read_parquet(folder / "diff_findings.parquet")
    assert set(detail.filter(pl.col("change") != "unchanged")["rule_id"]) == {"FREQ-001"}
    assert summary["work"]["rows"] == []  # the change adds findings; nobody's work resolves
    for p in folder.rglob("*"):
        assert p.stat().st_mode & 0o077 == 0, p  # owner-only, as everything under --out

    deployed = invoke("rules", "deploy", "--rules", str(base["rules_b"]), "--out", str(out), "--from", str(FIRST_DOS))
    assert deployed.exit_code == 0
    (run,) = [p for p in (out / "runs").glob("backfill-*") if (p / "changes.html").is_file()]
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["diff"]["total"] == summary["diff"]["total"]  # the preview said what the deploy did
    assert manifest["deployment"]["to_version"] == ruleset_version(base["rules_b"])
    assert "FREQ-001" in (run / "changes.html").read_text()

    # Previewing the way back: the finding the deploy added is in the worklog as new work.
    before = tree(out, skip="previews")
    back = invoke("rules", "preview", "--rules", str(PROJECT / "rules"), "--out", str(out), "--from", str(FIRST_DOS))
    assert back.exit_code == 0, back.output
    assert tree(out, skip="previews") == before  # the worklog database included
    (folder,) = [p for p in (out / "previews").iterdir() if p.name.startswith(ruleset_version(PROJECT / "rules"))]
    work = json.loads((folder / "preview.json").read_text())["work"]["rows"]
    assert work == [{"queue": "medical_necessity", "status": "new", "would_resolve": 1, "would_return": 0}]


def test_bad_ranges_are_one_line_usage_errors(base, tmp_path):
    out = copy_out(base["four"], tmp_path / "out")
    before = tree(out)
    result = invoke(
        "rules",
        "preview",
        "--rules",
        str(base["rules_b"]),
        "--out",
        str(out),
        "--from",
        "2024-03-08",
        "--to",
        "2024-03-01",
    )
    assert result.exit_code == 2 and "before --from" in result.output
    result = invoke("rules", "deploy", "--rules", str(tmp_path / "missing"), "--out", str(out))
    assert result.exit_code == 2 and "is not a folder" in " ".join(result.output.split())
    assert tree(out) == before

"""Progress lines on stderr for the long commands besides `run`/`nightly` (tests/test_cli_feel.py):
`backfill`, `rules preview`, `rules deploy`, `synth`, `queue import`.

Each runs through the real CLI in-process (stderr is captured, not a terminal, as under a scheduler)
on one copy of the two nights the queue tests share (conftest.two_nights), and again with --quiet,
which prints no progress line.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
from rules_support import FEW, rules_copy
from typer.testing import CliRunner

from b12pipeline.cli import app

PROJECT = Path(__file__).resolve().parent.parent
# "[  1.2s] title: step text", one per line
STEP = re.compile(r"^\[\s*\d+\.\ds\] (?P<title>[^:]+): (?P<text>.+)$", re.MULTILINE)


def steps(stderr: str, title: str) -> list[str]:
    return [m["text"] for m in STEP.finditer(stderr) if m["title"] == title]


def invoke(*args: str, quiet: bool = False, refused: bool = False):
    result = CliRunner().invoke(app, [*args, *(["--quiet"] if quiet else [])])
    assert result.exit_code == (2 if refused else 0), result.output
    assert "\x1b[" not in result.stderr  # plain lines: no terminal control codes in a log
    if quiet:
        assert not STEP.search(result.stderr), result.stderr
    return result


@pytest.fixture(scope="module")
def out(two_nights, tmp_path_factory) -> Path:
    return Path(shutil.copytree(two_nights[0], tmp_path_factory.mktemp("progress") / "out"))


def test_synth_progress(tmp_path):
    shown = invoke("synth", "--rows", "200", "--seed", "3", "--out", str(tmp_path / "a.csv"))
    said = steps(shown.stderr, "synth seed 3")
    assert said[0] == "generating 200 rows" and said[-1] == "done", said
    assert re.fullmatch(r"generated \d+ B12 rows, \d+ expected findings; writing csv", said[1]), said
    quiet = invoke("synth", "--rows", "200", "--seed", "3", "--out", str(tmp_path / "b.csv"), quiet=True)
    assert quiet.stderr == "" and (tmp_path / "a.csv").read_bytes() == (tmp_path / "b.csv").read_bytes()


def test_queue_import_progress(out, tmp_path):
    workbook = tmp_path / "coding.xlsx"
    invoke("queue", "export", "coding", "--to", str(workbook), "--out", str(out))
    shown = invoke("queue", "import", str(workbook), "--out", str(out), "--as", "ana")
    said = steps(shown.stderr, "import coding.xlsx")
    assert re.fullmatch(r"read coding\.xlsx: [1-9]\d* row\(s\), 0 edited", said[0]), said
    assert said[1:] == ["applied in one transaction: 0 changed", "done"]
    invoke("queue", "import", str(workbook), "--out", str(out), "--as", "ana", quiet=True)


def test_rules_preview_progress(out):
    args = ("rules", "preview", "--rules", str(PROJECT / "rules"), "--out", str(out))
    said = steps(invoke(*args).stderr, "preview rules")
    assert re.fullmatch(r"ruleset \S+: \d+ date\(s\) to evaluate", said[0]), said
    assert any(re.fullmatch(r"evaluated \S+\.\.\S+: \d+ finding\(s\)", s) for s in said), said
    assert said[-2].startswith("report written: previews/") and said[-1] == "done", said
    invoke(*args, quiet=True)


def test_rules_deploy_and_backfill_progress(out, tmp_path):
    """A deploy re-evaluates its dates through the backfill flow. Of a few rules: the gates run every
    case of the folder, and the steps are the same for the whole catalog."""
    folder = rules_copy(tmp_path / "rules", only=FEW)
    args = ("rules", "deploy", "--rules", str(folder), "--out", str(out), "--from", "2024-02-28")
    said = steps(invoke(*args).stderr, "deploy rules")
    assert said[:2] == ["checking rules: lint, cases, version bumps", "gates passed"], said
    assert re.fullmatch(r"ruleset \S+ active \(was \S+\)", said[2]), said
    n = int(re.fullmatch(r"re-evaluating 4 date\(s\) in (\d+) chunk\(s\)", said[3])[1])
    assert [s.split(":")[0] for s in said[4 : 4 + n]] == [f"chunk {i} of {n} re-evaluated" for i in range(1, n + 1)]
    assert said[4 + n].startswith("worklog: ") and said[-2:] == ["change report written", "done"], said
    assert re.fullmatch(r"diff: \d+ new, \d+ resolved, \d+ unchanged finding\(s\)", said[5 + n]), said
    # --quiet: the gates' own run is as long as the re-evaluation, so a folder refused at once shows it
    broken = shutil.copytree(PROJECT / "rules", out.parent / "broken")
    (broken / "coding" / "UNITS-001.yaml").write_text("id: [unclosed\n")
    for quiet in (False, True):
        said = steps(invoke(*args[:3], str(broken), *args[4:], quiet=quiet, refused=True).stderr, "deploy broken")
        assert said == ([] if quiet else ["checking broken: lint, cases, version bumps"])

    backfill = ("backfill", "--from", "2024-02-20", "--to", "2024-03-02", "--out", str(out), "--chunk-days", "6")
    said = steps(invoke(*backfill).stderr, "backfill 2024-02-20..2024-03-02")
    assert said[0] == "starting Prefect" and said[-1] == "done", said
    assert "re-evaluating 12 date(s) in 2 chunk(s)" in said, said
    assert [s for s in said if s.startswith("chunk ")] == [
        "chunk 1 of 2 re-evaluated: 2024-02-20..2024-02-25",
        "chunk 2 of 2 re-evaluated: 2024-02-26..2024-03-02",
    ]
    assert any(s.startswith("diff: ") for s in said), said
    invoke(*backfill, quiet=True)

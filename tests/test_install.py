"""A non-editable install (`pip install .`) runs a night from any folder: rules/ and schemas/ ship
inside the wheel (setup.py) while they stay top-level folders of the repository.

The wheel is built from this checkout and installed into a fresh virtual environment. Its
dependencies are taken from the test environment through a .pth line (no download of Polars,
Prefect, GX again); that line adds plain folders, so the test environment's editable install of
b12pipeline is not seen and the installed copy is the one that runs.
"""

from __future__ import annotations

import os
import shutil
import site
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest

PROJECT = Path(__file__).resolve().parent.parent
FIXTURE = PROJECT / "data" / "fixtures" / "emar_2024-03-01.csv"


def run(args: list, **kwargs) -> subprocess.CompletedProcess:
    done = subprocess.run([str(a) for a in args], capture_output=True, text=True, timeout=900, **kwargs)
    assert done.returncode == 0, f"{args}\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}"
    return done


@pytest.mark.slow
def test_wheel_install_runs_a_night_from_another_folder(prefect_harness, tmp_path):
    from prefect.settings import PREFECT_API_URL

    wheels, venv, elsewhere = tmp_path / "wheels", tmp_path / "venv", tmp_path / "elsewhere"
    run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", PROJECT, "-w", wheels])
    (wheel,) = wheels.glob("b12pipeline-*.whl")
    run([sys.executable, "-m", "venv", "--without-pip", venv])  # this pip installs into it (--python)
    python = venv / "bin" / "python"
    target = Path(run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"]).stdout.strip())
    (target / "b12-test-dependencies.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    run([sys.executable, "-m", "pip", "--python", python, "install", "--quiet", "--no-deps", "--no-index", wheel])

    elsewhere.mkdir()
    extract = shutil.copy2(FIXTURE, elsewhere / FIXTURE.name)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "B12_RULES_DIR", "B12_SCHEMAS_DIR")}
    env["PREFECT_API_URL"] = PREFECT_API_URL.value()
    where = run(
        [python, "-c", "import b12pipeline.paths as p; print(p.rules_dir()); print(p.schemas_dir())"],
        cwd=elsewhere,
        env=env,
    ).stdout.split()
    assert all(Path(p).is_relative_to(venv) for p in where), where  # the installed copies, not the checkout

    night = run(
        [venv / "bin" / "b12pipeline", "run", "-e", extract, "--out", "out", "--night", "2024-03-02", "--quiet"],
        cwd=elsewhere,
        env=env,
    )
    assert "run record:" in night.stdout
    findings = pl.read_parquet(elsewhere / "out" / "queues" / "*" / "*" / "*.parquet")
    assert findings.height > 0 and set(findings["rule_id"]) <= {p.stem for p in (PROJECT / "rules").rglob("*-*.yaml")}

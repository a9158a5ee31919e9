"""Copies of the rules folder for tests that change or check one rule.

The gates and `rules test` run every case of the folder they are given (about 300, some 15 s for
the whole catalog on 2 cores); a test about one rule needs that rule, the settings, reference
tables and payer files, not the other rules. The whole catalog's cases are run by test_rule_cases.py.
"""

from __future__ import annotations

import shutil
from pathlib import Path

PROJECT = Path(__file__).resolve().parent.parent
QUEUE_FOLDERS = ("coding", "documentation", "medical_necessity")
# DOC-001 and FREQ-001 are the rules the tests change; the shipped payer files' cases check FREQ-001 and MOD-002.
FEW = ("DOC-001", "FREQ-001", "MOD-002")


def rules_copy(target: Path, source: Path = PROJECT / "rules", only: tuple[str, ...] = ()) -> Path:
    """A copy of `source` at `target`; with `only`, of just those rules' files (every version), all
    settings, reference and payer files kept. Removing a rule is no deploy gate failure, so only
    the rules kept decide what the gates say."""
    shutil.copytree(source, target)
    if only:
        for path in target.glob("*/*.yaml"):
            if path.parent.name in QUEUE_FOLDERS and path.name.split(".")[0] not in only:
                path.unlink()
    return target

"""Where the project's data folders live, and the layout of an output root.

rules/ and schemas/ are top-level folders of the repository, beside the package. A non-editable
install carries copies of them inside the package (b12pipeline/_bundled/, see setup.py), used when
present. An installation may point elsewhere with B12_RULES_DIR / B12_SCHEMAS_DIR or --rules.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent
BUNDLED = Path(__file__).resolve().parent / "_bundled"


def _data_dir(name: str) -> Path:
    bundled = BUNDLED / name
    return bundled if bundled.is_dir() else PROJECT_ROOT / name


def rules_dir() -> Path:
    return Path(os.environ.get("B12_RULES_DIR") or _data_dir("rules"))


def schemas_dir() -> Path:
    return Path(os.environ.get("B12_SCHEMAS_DIR") or _data_dir("schemas"))


# The GX expectation suite validation uses unless given another, under schemas/.
DEFAULT_SUITE = "expectations/canonical_extract.json"


def suite_file(suite_path: Path | str | None = None) -> Path:
    """The suite a validation uses: `suite_path`, else the shipped one."""
    return Path(suite_path) if suite_path else schemas_dir() / DEFAULT_SUITE


def cache_dir() -> Path:
    """Derived public data (never patient data) kept between runs: B12_CACHE_DIR, else the user cache."""
    if os.environ.get("B12_CACHE_DIR"):
        return Path(os.environ["B12_CACHE_DIR"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "b12pipeline"


@dataclass(frozen=True)
class OutputLayout:
    """Every folder a run writes under one output root (work-queues.md)."""

    root: Path

    @property
    def queues(self) -> Path:
        return self.root / "queues"

    @property
    def quarantine(self) -> Path:
        return self.root / "quarantine"

    @property
    def rejected(self) -> Path:
        return self.root / "rejected"

    @property
    def runs(self) -> Path:
        return self.root / "runs"

    @property
    def history(self) -> Path:
        return self.root / "history"

    @property
    def archive(self) -> Path:
        return self.root / "archive"

    @property
    def staging(self) -> Path:
        return self.root / "staging"

    @property
    def rulesets(self) -> Path:
        return self.root / "rulesets"

    @property
    def previews(self) -> Path:
        return self.root / "previews"

    def run_dir(self, run_id: str) -> Path:
        return self.runs / run_id

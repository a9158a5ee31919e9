"""The canonical extract contract (schemas/extract_contract.yaml) as Python facts."""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import yaml

from b12pipeline.paths import schemas_dir

LINEAGE_COLUMNS = ("source_file", "source_row")


@dataclass(frozen=True)
class Contract:
    version: int
    columns: dict[str, dict]
    presence_tracked: tuple[str, ...]
    identifiers: tuple[str, ...]

    @property
    def names(self) -> list[str]:
        return list(self.columns)

    @property
    def required_in_file(self) -> list[str]:
        return [c for c, spec in self.columns.items() if spec.get("required") in ("row", "file")]

    def of_type(self, *types: str) -> list[str]:
        return [c for c, spec in self.columns.items() if spec["type"] in types]


@lru_cache(maxsize=4)
def load_contract(path: Path | None = None) -> Contract:
    path = Path(path) if path else schemas_dir() / "extract_contract.yaml"
    raw = yaml.safe_load(path.read_text())
    return Contract(
        version=int(raw["version"]),
        columns=dict(raw["columns"]),
        presence_tracked=tuple(raw.get("presence_tracked", ())),
        identifiers=tuple(raw.get("identifiers", ())),
    )

"""Site configuration (rules/site.yaml): the catalog's defaults, loaded strictly."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path

import yaml

from b12pipeline.paths import rules_dir


class ConfigError(ValueError):
    """The site configuration is malformed; the message names the file and the key."""


@dataclass(frozen=True)
class SiteConfig:
    given_actions: tuple[str, ...] = (
        "given",
        "administered",
        "push",
        "new bag",
        "given by other",
        "new syringe/cartridge",
        "given during downtime",
    )
    code_for_ingredient: dict[str, str] = field(
        default_factory=lambda: {"cyanocobalamin": "J3420", "hydroxocobalamin": "J3490", "methylcobalamin": "J3490"}
    )
    unclassified_codes: tuple[str, ...] = ("J3490", "J3590")
    covered_dx_payers: tuple[str, ...] = ("medicare",)
    frequency_payers: tuple[str, ...] = ("medicare",)
    ndc_required_payers: tuple[str, ...] = ("medicaid",)
    facility_pos: tuple[str, ...] = ("19", "21", "22", "23", "24", "26", "51", "52", "61")
    mod002_institutional: bool = False
    jwjz_payers: tuple[str, ...] = ("medicare",)
    antidote_ndcs: tuple[str, ...] = ("50633031011",)
    antidote_min_dose_mg: float = 100
    covered_dx_prefixes: tuple[str, ...] = ()
    duplicate_window_minutes: int = 60
    frequency_window_days: int = 30
    loading_phase_days: int = 56
    frequency_lookback_days: int = 365
    max_quarantine_share: float = 0.5
    # Why a coder may dismiss a finding (the worklog refuses any other reason).
    dismiss_reasons: tuple[str, ...] = (
        "false positive",
        "payer exception",
        "documented elsewhere",
        "corrected outside b12pipeline",
        "not billable",
    )

    def get(self, name: str):
        """A configuration value by name, as rule conditions reference it ({config: name})."""
        if name not in {f.name for f in fields(self)}:
            raise KeyError(name)
        return getattr(self, name)


def load_site_config(path: Path | None = None) -> SiteConfig:
    path = Path(path) if path else rules_dir() / "site.yaml"
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping of settings")
    known = {f.name: f for f in fields(SiteConfig)}
    unknown = sorted(set(raw) - set(known))
    if unknown:
        raise ConfigError(f"{path}: unknown setting(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    values = {}
    for key, value in raw.items():
        default = getattr(SiteConfig(), key)
        if isinstance(default, tuple):
            if not isinstance(value, list):
                raise ConfigError(f"{path}: {key} must be a list")
            value = tuple(str(v).strip() for v in value)
            if key in ("given_actions",) or key.endswith("_payers"):
                # Compared with normalize.enum_text values: case and runs of whitespace do not matter.
                value = tuple(" ".join(v.split()).lower() for v in value)
        elif isinstance(default, bool):
            if not isinstance(value, bool):
                raise ConfigError(f"{path}: {key} must be true or false")
        elif isinstance(default, (int, float)):
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ConfigError(f"{path}: {key} must be a number")
        elif isinstance(default, dict):
            if not isinstance(value, dict):
                raise ConfigError(f"{path}: {key} must be a mapping")
            value = {str(k).lower(): str(v).upper() for k, v in value.items()}
        values[key] = value
    return SiteConfig(**values)

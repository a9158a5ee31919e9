"""The site's settings (rules/site.yaml) as the engine reads them: the catalog's defaults and the
check of one setting's value. Reading site.yaml is b12pipeline/config.py."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field, fields


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
    reference_max_age_quarters: int = 2
    covered_dx_prefixes: tuple[str, ...] = ()
    duplicate_window_minutes: int = 60
    frequency_window_days: int = 30
    loading_phase_days: int = 56
    frequency_lookback_days: int = 365
    max_quarantine_share: float = 0.5
    # The IANA zone the site's eMAR records local times in: a time written without an offset is
    # read in it for the instant DUP-001 compares, and a time-zone-typed Parquet column is
    # converted to it before the date of service is taken (docs/decisions.md).
    time_zone: str = "UTC"
    # Plausible dates of service: rows outside earliest_service_date .. night +
    # service_date_max_days_after_night are quarantined (a typo'd year is not a dose to bill).
    earliest_service_date: dt.date = dt.date(2000, 1, 1)
    service_date_max_days_after_night: int = 1
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


def coerce_setting(key: str, value, where: str):
    """One setting's value, checked against the type of its default and normalised as the rules
    compare it; ConfigError names `where` and the key. Shared by site.yaml and payer files."""
    default = getattr(SiteConfig(), key)
    if isinstance(default, tuple):
        if not isinstance(value, list):
            raise ConfigError(f"{where}: {key} must be a list")
        value = tuple(str(v).strip() for v in value)
        if key in ("given_actions",) or key.endswith("_payers"):
            # Compared with normalize.enum_text values: case and runs of whitespace do not matter.
            value = tuple(" ".join(v.split()).lower() for v in value)
    elif isinstance(default, bool):
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: {key} must be true or false")
    elif isinstance(default, (int, float)):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: {key} must be a number")
    elif isinstance(default, dt.date):
        if isinstance(value, str):
            try:
                value = dt.date.fromisoformat(value)
            except ValueError:
                raise ConfigError(f"{where}: {key} must be a date (YYYY-MM-DD)") from None
        if not isinstance(value, dt.date) or isinstance(value, dt.datetime):
            raise ConfigError(f"{where}: {key} must be a date (YYYY-MM-DD)")
    elif isinstance(default, str):
        if not isinstance(value, str) or not value.strip():
            raise ConfigError(f"{where}: {key} must be text")
        value = value.strip()
    elif isinstance(default, dict):
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: {key} must be a mapping")
        value = {str(k).lower(): str(v).upper() for k, v in value.items()}
    return value

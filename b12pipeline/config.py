"""Site configuration (rules/site.yaml): the catalog's defaults, loaded strictly."""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path

import yaml

from b12pipeline.engine.settings import ConfigError, SiteConfig, coerce_setting
from b12pipeline.paths import rules_dir
from b12pipeline.schedule import check_timezone


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
    config = SiteConfig(**{key: coerce_setting(key, value, str(path)) for key, value in raw.items()})
    try:
        check_timezone(config.time_zone)
    except ValueError as exc:
        raise ConfigError(f"{path}: time_zone: {exc}") from None
    if config.service_date_max_days_after_night < 0:
        raise ConfigError(f"{path}: service_date_max_days_after_night must be 0 or more")
    return config

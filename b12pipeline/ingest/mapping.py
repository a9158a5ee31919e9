"""Source mappings (schemas/sources/<name>.yaml): a site's delimited extract -> the canonical frame.

A mapping is data: column renames, derived columns (admin_id = ORDER_MED_ID-LINE), date formats
rewritten to ISO 8601, and code -> value maps. A code that a map does not list is not guessed:
with `unknown: quarantine` (the default) the row goes to quarantine with a reason naming the
column and the map (never the code: the quarantined row holds it), so an unmapped MAR action can
never silently become "not given".
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import polars as pl
import yaml

from b12pipeline.contract import load_contract
from b12pipeline.paths import schemas_dir

KINDS = ("delimited", "fhir")
_TOP_KEYS = {
    "name",
    "kind",
    "delimiter",
    "signature",
    "columns",
    "derived",
    "dates",
    "values",
    "description",
    "encoding",
    "extensions",
    "fhir",
}


class MappingError(ValueError):
    """A source mapping file is malformed; the message names the file and the key."""


@dataclass(frozen=True)
class ValueMap:
    column: str  # canonical column the map applies to
    map: dict[str, str]
    unknown: str = "quarantine"  # quarantine | keep


@dataclass(frozen=True)
class SourceMapping:
    name: str
    kind: str
    path: Path
    delimiter: str = ","
    signature: tuple[str, ...] = ()
    columns: dict[str, str] = field(default_factory=dict)  # source -> canonical
    derived: dict[str, dict] = field(default_factory=dict)  # canonical -> {join: [...], separator}
    dates: dict[str, dict] = field(default_factory=dict)  # canonical -> {type, formats}
    values: dict[str, ValueMap] = field(default_factory=dict)  # canonical -> ValueMap
    raw: dict = field(default_factory=dict)  # the whole file (format-specific keys)

    @property
    def source_for(self) -> dict[str, str]:
        """canonical -> source column."""
        return {v: k for k, v in self.columns.items()}

    def required_source_columns(self) -> list[str]:
        """Source columns whose absence rejects the file: those feeding a required canonical column."""
        required = load_contract().required_in_file
        need = [src for src, canon in self.columns.items() if canon in required]
        for canon, spec in self.derived.items():
            if canon in required:
                need += [c for c in spec["join"] if c not in need]
        return need

    def matches_header(self, header: list[str]) -> bool:
        names = {h.strip().upper() for h in header}
        return bool(self.signature) and all(s.upper() in names for s in self.signature)


def mappings_dir() -> Path:
    return schemas_dir() / "sources"


def _fail(path: Path, msg: str) -> MappingError:
    return MappingError(f"{path}: {msg}")


def parse_mapping(raw: dict, path: Path) -> SourceMapping:
    if not isinstance(raw, dict):
        raise _fail(path, "a source mapping must be a mapping of keys")
    unknown = sorted(set(raw) - _TOP_KEYS)
    if unknown:
        raise _fail(path, f"unknown key(s) {', '.join(unknown)}; allowed: {', '.join(sorted(_TOP_KEYS))}")
    name, kind = raw.get("name"), raw.get("kind", "delimited")
    if not name or name != path.stem:
        raise _fail(path, f"name must equal the file name without .yaml ({path.stem!r})")
    if kind not in KINDS:
        raise _fail(path, f"kind {kind!r} is not one of {', '.join(KINDS)}")
    contract = load_contract()
    columns = {str(k): str(v) for k, v in (raw.get("columns") or {}).items()}
    bad = sorted({v for v in columns.values() if v not in contract.columns})
    if bad:
        raise _fail(path, f"columns: {', '.join(bad)} are not canonical contract columns")
    derived = dict(raw.get("derived") or {})
    for canon, spec in derived.items():
        if canon not in contract.columns:
            raise _fail(path, f"derived: {canon} is not a canonical contract column")
        if not isinstance(spec, dict) or not isinstance(spec.get("join"), list) or not spec["join"]:
            raise _fail(path, f"derived.{canon} needs join: [source columns]")
    dates = dict(raw.get("dates") or {})
    for canon, spec in dates.items():
        if not isinstance(spec, dict) or spec.get("type") not in ("date", "datetime") or not spec.get("formats"):
            raise _fail(path, f"dates.{canon} needs type (date|datetime) and formats: [...]")
    values = {}
    for canon, spec in (raw.get("values") or {}).items():
        if canon not in contract.columns:
            raise _fail(path, f"values: {canon} is not a canonical contract column")
        if not isinstance(spec, dict) or not isinstance(spec.get("map"), dict):
            raise _fail(path, f"values.{canon} needs map: {{code: value}}")
        policy = spec.get("unknown", "quarantine")
        if policy not in ("quarantine", "keep"):
            raise _fail(path, f"values.{canon}.unknown must be quarantine or keep")
        values[canon] = ValueMap(canon, {str(k).strip(): str(v) for k, v in spec["map"].items()}, policy)
    delimiter = str(raw.get("delimiter", ","))
    if kind == "delimited" and len(delimiter) != 1:
        raise _fail(path, "delimiter must be one character")
    return SourceMapping(
        name=name,
        kind=kind,
        path=path,
        delimiter=delimiter,
        signature=tuple(str(s) for s in raw.get("signature") or ()),
        columns=columns,
        derived=derived,
        dates=dates,
        values=values,
        raw=raw,
    )


@lru_cache(maxsize=32)
def load_mapping(name: str) -> SourceMapping:
    path = mappings_dir() / f"{name}.yaml"
    if not path.is_file():
        raise FileNotFoundError(path)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise _fail(path, f"not valid YAML: {str(exc).splitlines()[0]}") from None
    return parse_mapping(raw, path)


def available_mappings(kind: str | None = None) -> list[SourceMapping]:
    folder = mappings_dir()
    found = [load_mapping(p.stem) for p in sorted(folder.glob("*.yaml"))] if folder.is_dir() else []
    return [m for m in found if kind is None or m.kind == kind]


# --- applying a mapping -------------------------------------------------------------------------


def _parse_dates(expr: pl.Expr, spec: dict) -> pl.Expr:
    """First format that parses -> ISO text; otherwise the original text (validation judges it)."""
    parsed = []
    for fmt in spec["formats"]:
        if spec["type"] == "datetime":
            parsed.append(expr.str.strptime(pl.Datetime("us"), fmt, strict=False).dt.strftime("%Y-%m-%dT%H:%M:%S"))
        elif "%d" in fmt:
            parsed.append(expr.str.strptime(pl.Date, fmt, strict=False).dt.strftime("%Y-%m-%d"))
        else:  # month/year on a vial keeps month precision, as the contract allows (YYYY-MM)
            parsed.append(("01 " + expr).str.strptime(pl.Date, "%d " + fmt, strict=False).dt.strftime("%Y-%m"))
    return pl.coalesce(*parsed, expr)


def unmapped_reason(mapping: SourceMapping, canon: str) -> str:
    """Why a row whose code the map does not list is quarantined: the column and the map, never the
    code (a cell's value stays out of reasons; the quarantined row itself holds it)."""
    src = mapping.source_for.get(canon, canon)
    return f"{src} code is not in the {mapping.name} mapping (schemas/sources/{mapping.path.name} values.{canon})"


def apply_mapping(raw: pl.DataFrame, mapping: SourceMapping) -> tuple[pl.DataFrame, pl.Series]:
    """Raw all-text source frame -> (frame with canonical column names, per-row quarantine reason).

    Source columns the mapping does not name are dropped (they are reported as ignored by the
    caller). The reason series is null for rows that mapped cleanly.
    """
    cols = {c.strip().upper(): c for c in raw.columns}
    text = {
        src: pl.col(cols[src.upper()]).cast(pl.String).str.strip_chars()
        for src in set(mapping.columns) | {c for d in mapping.derived.values() for c in d["join"]}
        if src.upper() in cols
    }
    text = {k: pl.when(v == "").then(None).otherwise(v) for k, v in text.items()}
    exprs: dict[str, pl.Expr] = {}
    for src, canon in mapping.columns.items():
        if src in text:
            exprs[canon] = text[src]
    for canon, spec in mapping.derived.items():
        parts = [text[c] for c in spec["join"] if c in text]
        if len(parts) == len(spec["join"]):
            joined = pl.concat_str(parts, separator=str(spec.get("separator", "-")))
            exprs[canon] = joined
    reasons = []
    for canon, vmap in mapping.values.items():
        if canon not in exprs:
            continue
        code = exprs[canon]
        mapped = code.replace_strict(vmap.map, default=None, return_dtype=pl.String)
        if vmap.unknown == "quarantine":
            reasons.append(pl.when(code.is_not_null() & mapped.is_null()).then(pl.lit(unmapped_reason(mapping, canon))))
        # An unlisted code stays in its column: kept rows pass it on, quarantined rows show it
        # there (the quarantine is where values belong) since the reason never quotes it.
        exprs[canon] = pl.coalesce(mapped, code)
    for canon, spec in mapping.dates.items():
        if canon in exprs:
            exprs[canon] = _parse_dates(exprs[canon], spec)
    out = raw.select([e.alias(c) for c, e in exprs.items()] or [pl.lit(None).alias("_empty")])
    if reasons:
        joined = pl.concat_list(reasons).list.drop_nulls().list.join("; ")
        why = raw.select(pl.when(joined == "").then(None).otherwise(joined).alias("r"))["r"]
    else:
        why = pl.Series("r", [None] * raw.height, dtype=pl.String)
    return out, why

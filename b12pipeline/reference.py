"""Product reference: the FDA-derived NDC table, with the site formulary overlay winning over it."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import polars as pl

from b12pipeline.cms import CmsTable, load_cms_tables
from b12pipeline.paths import rules_dir

PRODUCT_COLUMNS = [
    "ndc11",
    "ndc_level",
    "product_ndc",
    "ingredient",
    "mcg_per_ml",
    "ml_per_container",
    "container_type",
    "labeler",
    "source",
]
INGREDIENTS = ("cyanocobalamin", "hydroxocobalamin", "methylcobalamin")
CONTAINER_TYPES = ("single_dose", "multi_dose", "unknown")


class ReferenceError(ValueError):
    """A reference table is malformed; the message names the file, row and field."""


def _read_products(path: Path) -> pl.DataFrame:
    frame = pl.read_csv(path, infer_schema=False)
    missing = [c for c in PRODUCT_COLUMNS if c not in frame.columns]
    if missing:
        raise ReferenceError(f"{path}: missing column(s) {', '.join(missing)}")
    frame = frame.select(PRODUCT_COLUMNS)
    for i, rec in enumerate(frame.iter_rows(named=True), start=1):
        if not (rec["ndc11"] or "").isdigit() or len(rec["ndc11"]) != 11:
            raise ReferenceError(f"{path}: row {i}: ndc11 {rec['ndc11']!r} is not 11 digits")
        if rec["ingredient"] not in INGREDIENTS:
            raise ReferenceError(f"{path}: row {i}: ingredient {rec['ingredient']!r} not in {INGREDIENTS}")
        if rec["container_type"] not in CONTAINER_TYPES:
            raise ReferenceError(f"{path}: row {i}: container_type {rec['container_type']!r} not in {CONTAINER_TYPES}")
    return frame.with_columns(
        pl.col("mcg_per_ml").cast(pl.Float64, strict=False),
        pl.col("ml_per_container").cast(pl.Float64, strict=False),
    )


@dataclass(frozen=True)
class Reference:
    products: pl.DataFrame  # one row per ndc11; overlay rows replace FDA rows
    rxnorm: pl.DataFrame  # rxnorm_code -> ingredient
    cms: dict[str, CmsTable] = field(default_factory=dict)  # imported CMS quarterly tables (cms.py)
    products_version: str = ""  # checksum prefix of the product tables

    @property
    def versions(self) -> dict[str, str]:
        """Table -> version, for the findings that used them."""
        return {"products": self.products_version, **{name: t.version for name, t in self.cms.items()}}

    @property
    def ndcs(self) -> pl.Series:
        return self.products["ndc11"]


def load_reference(directory: Path | None = None) -> Reference:
    directory = Path(directory) if directory else rules_dir() / "reference"
    fda = _read_products(directory / "products.csv").with_columns(pl.lit("fda").alias("origin"))
    overlay_path = directory / "formulary_overlay.csv"
    if overlay_path.exists():
        overlay = _read_products(overlay_path).with_columns(pl.lit("site_overlay").alias("origin"))
        products = pl.concat([overlay, fda.filter(~pl.col("ndc11").is_in(overlay["ndc11"].implode()))])
    else:
        products = fda
    if products["ndc11"].is_duplicated().any():
        dupes = products.filter(pl.col("ndc11").is_duplicated())["ndc11"].unique().to_list()
        raise ReferenceError(f"{directory}: NDC(s) listed twice in one table: {', '.join(sorted(dupes))}")
    rxnorm = pl.read_csv(directory / "b12_rxnorm.csv", infer_schema=False).select("rxnorm_code", "ingredient")
    digest = hashlib.sha256()
    for name in ("products.csv", "formulary_overlay.csv", "b12_rxnorm.csv"):
        if (directory / name).is_file():
            digest.update((directory / name).read_bytes())
    return Reference(
        products=products.sort("ndc11"),
        rxnorm=rxnorm,
        cms=load_cms_tables(directory),
        products_version=digest.hexdigest()[:8],
    )

"""Clarity-shaped tables for the SQL pull tests: a flat Clarity-style extract split into the tables
`schemas/sources/clarity.sql` reads, loaded into a real database.

Only rows a reporting database could hold are loaded (a typed TAKEN_TIME and EXP_DATE); both the
table rows and the flat CSV the findings are compared with are made from the same kept rows.
"""

from __future__ import annotations

import datetime as dt

import polars as pl

TABLES = {
    "MAR_ADMIN_INFO": (
        "ORDER_MED_ID VARCHAR(40), LINE INTEGER, MAR_ENC_CSN VARCHAR(40), TAKEN_TIME TIMESTAMP, "
        "MAR_ACTION_C VARCHAR(10), SIG VARCHAR(60), DOSE_UNIT_C VARCHAR(10), ROUTE_C VARCHAR(10), "
        "SITE_C VARCHAR(10), USER_ID VARCHAR(40)"
    ),
    "MAR_ADDL_INFO": (
        "ORDER_MED_ID VARCHAR(40), LINE INTEGER, NDC_CODE VARCHAR(40), LOT_NUM VARCHAR(40), EXP_DATE DATE, "
        "WASTE_MCG VARCHAR(20)"
    ),
    "ORDER_MED": "ORDER_MED_ID VARCHAR(40), PAT_ID VARCHAR(40), MEDICATION_ID INTEGER, AUTHRZING_PROV_ID INTEGER",
    "PATIENT": "PAT_ID VARCHAR(40), PAT_MRN_ID VARCHAR(40)",
    "CLARITY_MEDICATION": (
        "MEDICATION_ID INTEGER, NAME VARCHAR(200), CONC_MCG_PER_ML VARCHAR(20), CONTAINER_TYPE VARCHAR(20), "
        "CONTAINER_VOL_ML VARCHAR(20)"
    ),
    "RXNORM_CODES": "MEDICATION_ID INTEGER, LINE INTEGER, RXNORM_CODE VARCHAR(20)",
    "CLARITY_SER_2": "PROV_ID INTEGER, NPI VARCHAR(20)",
    "ORDER_DX_MED": "ORDER_MED_ID VARCHAR(40), LINE INTEGER, DX_ID INTEGER",
    "EDG_CURRENT_ICD10": "DX_ID INTEGER, CODE VARCHAR(20)",
    "PAT_ENC": "PAT_ENC_CSN_ID VARCHAR(40), POS_CODE VARCHAR(10), BILLING_SYSTEM VARCHAR(10), FIN_CLASS_C VARCHAR(10)",
    "HSP_TRANSACTIONS": (
        "TX_ID INTEGER, ORDER_ID VARCHAR(40), PAT_ENC_CSN_ID VARCHAR(40), SERVICE_DATE DATE, "
        "HCPCS_CODE VARCHAR(20), CPT_CODE VARCHAR(20), QUANTITY VARCHAR(20), MODIFIERS VARCHAR(40)"
    ),
    "HSP_TX_NDC_CODES": "TX_ID INTEGER, NDC_CODE_ADMIN_AMT VARCHAR(20), NDC_CODE_UNIT_C VARCHAR(10)",
}


def _parse(value: str | None, formats: tuple[str, ...]):
    if value is None or not value.strip():
        return None, True
    for fmt in formats:
        try:
            return dt.datetime.strptime(value.strip(), fmt), True
        except ValueError:
            continue
    return None, False


def loadable(flat: pl.DataFrame) -> pl.DataFrame:
    """The rows a database could hold: one administration per order and date of service (the charge
    link), a TAKEN_TIME and EXP_DATE that parse as a full date, one set of same-day E/M codes and
    encounter values per encounter and date, one product per medication name."""
    rows = []
    seen_order_day: set[tuple[str, str]] = set()
    encounter_day: dict[tuple[str, str], tuple] = {}
    for r in flat.iter_rows(named=True):
        taken, ok = _parse(r["TAKEN_TIME"], ("%m/%d/%Y %H:%M:%S", "%m/%d/%Y %H:%M", "%Y-%m-%d %H:%M:%S"))
        expiry, ok_exp = _parse(r["EXP_DATE"], ("%m/%d/%Y", "%Y-%m-%d"))
        if not ok or taken is None or not ok_exp or r["ORDER_MED_ID"] is None or r["LINE"] is None:
            continue
        day = taken.date().isoformat()
        if (r["ORDER_MED_ID"], day) in seen_order_day:
            continue
        enc_values = (r["SAME_DAY_EM"], r["POS_CODE"], r["BILLING_SYSTEM"], r["FIN_CLASS_C"])
        if encounter_day.setdefault((r["MAR_ENC_CSN"], day), enc_values) != enc_values:
            continue
        seen_order_day.add((r["ORDER_MED_ID"], day))
        rows.append({**r, "TAKEN_TIME": taken.strftime("%Y-%m-%d %H:%M:%S"), "EXP_DATE": expiry})
    frame = pl.DataFrame(rows, schema={**dict.fromkeys(flat.columns, pl.String), "EXP_DATE": pl.Datetime})
    # One encounter's values must agree across its dates too (PAT_ENC has one row per encounter).
    enc = frame.group_by("MAR_ENC_CSN").agg(
        pl.col(c).n_unique().alias(c) for c in ("POS_CODE", "BILLING_SYSTEM", "FIN_CLASS_C", "PAT_MRN_ID")
    )
    bad = enc.filter(pl.any_horizontal(pl.col(c) > 1 for c in enc.columns[1:]))["MAR_ENC_CSN"]
    frame = frame.filter(~pl.col("MAR_ENC_CSN").is_in(bad.implode()))
    orders = frame.group_by("ORDER_MED_ID").agg(
        pl.col(c).n_unique().alias(c)
        for c in (
            "PAT_MRN_ID",
            "DX_ICD10_LIST",
            "ORD_PROV_NPI",
            "MED_NAME",
            "RXNORM_CODE",
            "CONC_MCG_PER_ML",
            "CONTAINER_TYPE",
            "CONTAINER_VOL_ML",
        )
    )
    bad = orders.filter(pl.any_horizontal(pl.col(c) > 1 for c in orders.columns[1:]))["ORDER_MED_ID"]
    return frame.filter(~pl.col("ORDER_MED_ID").is_in(bad.implode()))


def as_flat_csv(frame: pl.DataFrame) -> pl.DataFrame:
    """The kept rows as the flat Clarity-style CSV (dates as the database would export them)."""
    return frame.with_columns(
        pl.col("EXP_DATE").dt.strftime("%Y-%m-%d"),
    )


def load(conn, frame: pl.DataFrame) -> None:
    """Create the tables and insert `frame` (the output of `loadable`) through a DB-API connection."""
    cur = conn.cursor()
    for name, columns in TABLES.items():
        cur.execute(f"CREATE TABLE {name} ({columns})")
    meds: dict[tuple, int] = {}
    provs: dict[str, int] = {}
    dxs: dict[str, int] = {}
    orders: set[str] = set()
    encounters: set[str] = set()
    tx = 0
    for r in frame.iter_rows(named=True):
        order, line = r["ORDER_MED_ID"], int(r["LINE"])
        taken = dt.datetime.strptime(r["TAKEN_TIME"], "%Y-%m-%d %H:%M:%S")
        cur.execute(
            "INSERT INTO MAR_ADMIN_INFO VALUES (%s,%s,%s,%s,%s,%s,%s,%s,%s,%s)",
            (
                order,
                line,
                r["MAR_ENC_CSN"],
                taken,
                r["MAR_ACTION_C"],
                r["SIG"],
                r["DOSE_UNIT_C"],
                r["ROUTE_C"],
                r["SITE_C"],
                r["USER_ID"],
            ),
        )
        cur.execute(
            "INSERT INTO MAR_ADDL_INFO VALUES (%s,%s,%s,%s,%s,%s)",
            (order, line, r["NDC_CODE"], r["LOT_NUM"], r["EXP_DATE"], r["WASTE_MCG"]),
        )
        if order not in orders:
            orders.add(order)
            med_key = (
                r["MED_NAME"],
                r["RXNORM_CODE"],
                r["CONC_MCG_PER_ML"],
                r["CONTAINER_TYPE"],
                r["CONTAINER_VOL_ML"],
            )
            if med_key not in meds:
                meds[med_key] = len(meds) + 1
                cur.execute(
                    "INSERT INTO CLARITY_MEDICATION VALUES (%s,%s,%s,%s,%s)",
                    (meds[med_key], r["MED_NAME"], r["CONC_MCG_PER_ML"], r["CONTAINER_TYPE"], r["CONTAINER_VOL_ML"]),
                )
                if r["RXNORM_CODE"] is not None:
                    cur.execute("INSERT INTO RXNORM_CODES VALUES (%s,1,%s)", (meds[med_key], r["RXNORM_CODE"]))
            prov = None
            if r["ORD_PROV_NPI"] is not None:
                if r["ORD_PROV_NPI"] not in provs:
                    provs[r["ORD_PROV_NPI"]] = len(provs) + 1
                    cur.execute(
                        "INSERT INTO CLARITY_SER_2 VALUES (%s,%s)", (provs[r["ORD_PROV_NPI"]], r["ORD_PROV_NPI"])
                    )
                prov = provs[r["ORD_PROV_NPI"]]
            cur.execute("INSERT INTO ORDER_MED VALUES (%s,%s,%s,%s)", (order, "P" + order, meds[med_key], prov))
            cur.execute("INSERT INTO PATIENT VALUES (%s,%s)", ("P" + order, r["PAT_MRN_ID"]))
            for i, code in enumerate((r["DX_ICD10_LIST"] or "").split(";")):
                if not code:
                    continue
                if code not in dxs:
                    dxs[code] = len(dxs) + 1
                    cur.execute("INSERT INTO EDG_CURRENT_ICD10 VALUES (%s,%s)", (dxs[code], code))
                cur.execute("INSERT INTO ORDER_DX_MED VALUES (%s,%s,%s)", (order, i + 1, dxs[code]))
        csn = r["MAR_ENC_CSN"]
        if csn not in encounters:
            encounters.add(csn)
            cur.execute(
                "INSERT INTO PAT_ENC VALUES (%s,%s,%s,%s)", (csn, r["POS_CODE"], r["BILLING_SYSTEM"], r["FIN_CLASS_C"])
            )
        day = taken.date()
        if r["HCPCS_CODE"] is not None or r["QUANTITY"] is not None or r["MODIFIERS"] is not None:
            tx += 1
            cur.execute(
                "INSERT INTO HSP_TRANSACTIONS VALUES (%s,%s,%s,%s,%s,%s,%s,%s)",
                (tx, order, csn, day, r["HCPCS_CODE"] or "", None, r["QUANTITY"], r["MODIFIERS"]),
            )
            if r["NDC_CODE_ADMIN_AMT"] is not None or r["NDC_CODE_UNIT_C"] is not None:
                cur.execute(
                    "INSERT INTO HSP_TX_NDC_CODES VALUES (%s,%s,%s)",
                    (tx, r["NDC_CODE_ADMIN_AMT"], r["NDC_CODE_UNIT_C"]),
                )
        if r["ADMIN_CPT_CODE"] is not None:
            tx += 1
            cur.execute(
                "INSERT INTO HSP_TRANSACTIONS VALUES (%s,%s,%s,%s,%s,%s,%s,%s)",
                (tx, order, csn, day, None, r["ADMIN_CPT_CODE"], None, None),
            )
    # Same-day E/M lines: once per encounter and date.
    em_days: set[tuple[str, dt.date]] = set()
    for r in frame.iter_rows(named=True):
        day = dt.datetime.strptime(r["TAKEN_TIME"], "%Y-%m-%d %H:%M:%S").date()
        if not r["SAME_DAY_EM"] or (r["MAR_ENC_CSN"], day) in em_days:
            continue
        em_days.add((r["MAR_ENC_CSN"], day))
        for item in r["SAME_DAY_EM"].split(";"):
            code, _, modifiers = item.partition("-")
            tx += 1
            cur.execute(
                "INSERT INTO HSP_TRANSACTIONS VALUES (%s,%s,%s,%s,%s,%s,%s,%s)",
                (tx, None, r["MAR_ENC_CSN"], day, None, code, None, modifiers or None),
            )
    conn.commit()

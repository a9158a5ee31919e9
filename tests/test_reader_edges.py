"""Readers on values of the wrong shape: never a silent scope decision, never last-wins."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from b12pipeline.ingest import FileRejected
from b12pipeline.ingest.read import read_extract

PROJECT = Path(__file__).resolve().parent.parent
FHIR = PROJECT / "data" / "fixtures" / "sources" / "emar_2024-03-01.fhir.ndjson"


@pytest.mark.parametrize("column", ["medication_name", "ndc", "rxnorm_code"])
@pytest.mark.parametrize("shape", ["struct", "list"])
def test_a_nested_scope_column_in_parquet_rejects_the_file(fixtures_dir, tmp_path, column, shape):
    table = pq.read_table(fixtures_dir / "emar_2024-03-02.parquet")
    values = table.column(column).to_pylist()
    nested = pa.array([{"text": v} for v in values]) if shape == "struct" else pa.array([[v] for v in values])
    table = table.set_column(table.schema.get_field_index(column), column, nested)
    path = tmp_path / "nested.parquet"
    pq.write_table(table, path)
    with pytest.raises(FileRejected) as caught:
        read_extract(path)
    assert column in caught.value.reason and "lists or structs" in caught.value.reason


def test_fhir_duplicate_keys_quarantine_the_resource(tmp_path):
    lines = FHIR.read_text().splitlines()
    first = lines[0]
    assert first.count('"subject":') == 1
    doubled = first.replace('"subject":', '"subject":{"reference":"Patient/OTHER"},"subject":', 1)
    json.loads(doubled)  # valid JSON as far as a last-wins parser goes
    spaced = lines[1].replace('"id":', '"id" : "X1", "id" :', 1)  # whitespace before the colon too
    path = tmp_path / "dups.ndjson"
    path.write_text("\n".join([doubled, spaced] + lines[2:]) + "\n")
    extract = read_extract(path)
    assert extract.rows == len(lines)
    held = {r["source_row"]: r["failure_reasons"] for r in extract.quarantine.iter_rows(named=True)}
    assert set(held) == {1, 2}
    assert "duplicate key subject" in held[1] and "duplicate key id" in held[2]
    assert "OTHER" not in held[1]
    # a colon inside a text value is not a duplicate
    text = lines[2].replace('"text":"', '"text":"a\\":b ', 1)
    clean = tmp_path / "colon.ndjson"
    clean.write_text(text + "\n")
    assert read_extract(clean).quarantined_rows == 0


def test_fhir_extension_value_key_is_named_only_when_it_is_an_element_name(tmp_path):
    """An extension's value[x] key is text from the file: a key that is no element name stays out."""
    resources = [json.loads(line) for line in FHIR.read_text().splitlines()[:2]]
    resources[0]["extension"][0]["valueBoolean"] = resources[0]["extension"][0].pop("valueString") == "x"
    resources[1]["extension"][0]["value MRN CANARY-42"] = [resources[1]["extension"][0].pop("valueString")]
    path = tmp_path / "ext.ndjson"
    path.write_text("".join(json.dumps(r) + "\n" for r in resources))
    held = {r["source_row"]: r["failure_reasons"] for r in read_extract(path).quarantine.iter_rows(named=True)}
    assert held == {
        1: "line 1: extension[0].valueBoolean must be a string or a number",
        2: "line 2: extension[0].value[x] must be a string or a number",
    }

"""--embedding-column at ingest: good vectors pass in the embed layout, bad ones are quarantined or refused clearly."""

from __future__ import annotations

import json

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tasks.config import IngestConfig
from tasks.ingest import IngestError, ingest

ROWS = [
    ("a", [0.1, 0.2, 0.3]),
    ("b", [0.1, float("nan"), 0.3]),   # NaN
    ("c", None),                       # null
    ("d", [0.1, 0.2]),                 # ragged: shorter than the catalog's dimension
    ("e", [1.0, 2.0, 3.0]),
    ("f", [1.0, None, 3.0]),           # a null element
    ("g", [1.0, float("inf"), 3.0]),   # inf
    ("h", [0.5, 0.5, 0.5, 0.5]),       # ragged: longer
]
BAD = {"b", "c", "d", "f", "g", "h"}


def _run(src, tmp_path, column="vec"):
    return ingest(catalog_uri=str(src), work_uri=str(tmp_path / "work"), config=IngestConfig(embedding_column=column))


def _check(m):
    assert (m.input, m.valid, m.quarantined) == (8, 2, 6) and m.dim == 3
    assert m.quarantine_reasons["bad_embedding"] == 6
    vectors = pq.read_table(m.vectors)
    assert vectors.schema.field("vector").type == pa.list_(pa.float32(), 3)
    assert vectors["item_id"].to_pylist() == ["a", "e"]
    assert np.allclose(np.array(vectors["vector"].to_pylist()), [[0.1, 0.2, 0.3], [1.0, 2.0, 3.0]])
    quarantine = pl.read_parquet(m.quarantine)
    assert set(quarantine["item_id"]) == BAD and set(quarantine["reason"]) == {"bad_embedding"}
    assert quarantine.schema["vec"] == pl.String, "quarantined rows keep their input values, as text"


def test_parquet_list_column(tmp_path):
    src = tmp_path / "c.parquet"
    pl.DataFrame({"item_id": [r[0] for r in ROWS], "title": [r[0].upper() for r in ROWS], "vec": [r[1] for r in ROWS]},
                 schema={"item_id": pl.String, "title": pl.String, "vec": pl.List(pl.Float64)}).write_parquet(src)
    _check(_run(src, tmp_path))


def test_jsonl_arrays(tmp_path):  # JSON has no NaN/inf: they arrive as null elements
    src = tmp_path / "c.jsonl"
    src.write_text("".join(json.dumps({"item_id": i, "title": i.upper(), "vec": v}).replace("NaN", "null").replace("Infinity", "null") + "\n" for i, v in ROWS))
    _check(_run(src, tmp_path))


def test_fixed_size_list_and_refusals(tmp_path):
    src = tmp_path / "f.parquet"
    pq.write_table(pa.table({"item_id": ["x", "y"], "title": ["X", "Y"],
                             "vec": pa.FixedSizeListArray.from_arrays(pa.array([1.0, 2.0, 3.0, 4.0], pa.float32()), 2)}), src)
    m = _run(src, tmp_path)
    assert (m.valid, m.quarantined, m.dim) == (2, 0, 2)
    with pytest.raises(IngestError, match="embedding column 'nope' not found"):
        _run(src, tmp_path, column="nope")
    with pytest.raises(IngestError, match="must be a list of numbers"):
        _run(src, tmp_path, column="title")

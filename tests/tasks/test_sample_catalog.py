"""tasks.sample_catalog: deterministic, realistic, fast, and ingestible."""

from __future__ import annotations

import time
from pathlib import Path

import polars as pl

from tasks.config import IngestConfig
from tasks.ingest import ingest
from tasks.sample_catalog import COLUMNS, write_sample_catalog


def _read(path: Path) -> pl.DataFrame:
    return pl.read_csv(path, infer_schema=False)


def test_deterministic_by_seed(tmp_path: Path) -> None:
    a, b, c = tmp_path / "a.csv", tmp_path / "b.csv", tmp_path / "c.csv"
    assert write_sample_catalog(out_path=str(a), n=500, seed=3) == 500
    write_sample_catalog(out_path=str(b), n=500, seed=3)
    write_sample_catalog(out_path=str(c), n=500, seed=4)
    assert a.read_bytes() == b.read_bytes()
    assert a.read_bytes() != c.read_bytes()


def test_rows_columns_ids_and_categories(tmp_path: Path) -> None:
    path = tmp_path / "cat.csv"
    start = time.perf_counter()
    n = write_sample_catalog(out_path=str(path), n=3000, seed=0)
    assert time.perf_counter() - start < 1.0
    df = _read(path)
    assert n == 3000 and df.height == 3000
    assert df.columns == COLUMNS
    assert df["item_id"].n_unique() == 3000
    assert df["item_id"].str.contains(r"^P\d{6}$").all()
    assert df["item_id"][0] == "P000000" and df["item_id"][-1] == "P002999"
    for col in COLUMNS:
        assert (df[col].str.strip_chars().str.len_chars() > 0).all(), col
    top = df["categories"].str.split(" > ").list.first()
    assert top.n_unique() >= 8
    assert {"Beauty", "Electronics", "Books", "Kitchen", "Sports"} <= set(top)
    assert (df["categories"].str.split(" > ").list.len() == 3).all()
    assert df["categories"].n_unique() >= 40
    assert (df["price"].cast(pl.Float64) > 0).all()
    # Brands belong to one top category each, so the catalog has real structure.
    assert (df.group_by("brand").agg(pl.col("categories").str.split(" > ").list.first().n_unique())["categories"] == 1).all()
    assert df["title"].n_unique() > 1500
    assert (df["description"].str.len_chars() > 30).all()


def test_small_and_zero(tmp_path: Path) -> None:
    assert write_sample_catalog(out_path=str(tmp_path / "one.csv"), n=1) == 1
    assert _read(tmp_path / "one.csv").height == 1
    assert write_sample_catalog(out_path=str(tmp_path / "zero.csv"), n=0) == 0
    assert (tmp_path / "zero.csv").read_text().strip() == ",".join(COLUMNS)


def test_ingests_cleanly(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "cat.csv"
    write_sample_catalog(out_path=str(path), n=300, seed=1)
    m = ingest(catalog_uri=str(path), work_uri=str(tmp_path / "w"), config=IngestConfig())
    assert (m.input, m.valid, m.quarantined) == (300, 300, 0)
    assert m.text_columns == ["title", "brand", "categories", "description"]
    text = pl.read_parquet(m.items)["text"]
    assert text.str.starts_with("title: ").all() and text.str.contains(r"\| categories: \w").all()

"""--embedding-column through the whole flow: the embed stage is skipped, bad vectors are quarantined, counts reconcile."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from flows.cli import main
from tasks import storage
from tests.flows.conftest import TINY

pytestmark = pytest.mark.slow


def test_flow_with_own_embeddings_skips_embed_and_quarantines_bad_vectors(tmp_path, capsys):
    rng = np.random.default_rng(0)
    n, dim = 400, 16
    centers = rng.normal(size=(20, dim))
    x = centers[rng.integers(20, size=n)] + 0.05 * rng.normal(size=(n, dim))
    vectors = [row.tolist() for row in x] + [None, [0.0] * (dim - 1), [float("nan")] * dim]
    ids = [f"I{i:04d}" for i in range(n + 3)]
    catalog = tmp_path / "own.parquet"
    pl.DataFrame({"item_id": ids, "title": [f"item {i}" for i in ids], "emb": vectors},
                 schema={"item_id": pl.String, "title": pl.String, "emb": pl.List(pl.Float64)}).write_parquet(catalog)
    config = tmp_path / "tiny.json"
    config.write_text(__import__("json").dumps(TINY))
    out = tmp_path / "out"
    code = main(["run", "--catalog", str(catalog), "--out", str(out), "--name", "own", "--run-id", "r1",
                 "--embedding-column", "emb", "--config", str(config)])
    assert code == 0, capsys.readouterr().err
    prefix = out / "own" / "r1"
    manifest = storage.read_json(str(prefix / "manifest.json"))
    assert manifest["counts"] == {"input": n + 3, "ided": n, "quarantined": 3}
    assert manifest["quarantine_reasons"]["bad_embedding"] == 3
    assert manifest["stages"]["embed"]["embedded"] == 0 and manifest["stages"]["embed"]["dim"] == dim
    assert storage.read_json(str(prefix / "model" / "config.json"))["input_dim"] == dim
    ids_table = pl.read_parquet(prefix / "semantic_ids")
    assert ids_table.height == n and ids_table["sid"].n_unique() == n

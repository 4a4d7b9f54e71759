"""semid run --interactions through the whole flow (own vectors, so no MiniLM): fused vectors, identity, refusal of another snapshot."""

from __future__ import annotations

import json

import numpy as np
import polars as pl
import pytest

from flows.cli import main
from tasks import storage
from tests.flows.conftest import TINY

pytestmark = pytest.mark.slow


def test_run_with_interactions_fits_on_fused_vectors_and_a_frozen_model_refuses_other_interactions(tmp_path, capsys):
    rng = np.random.default_rng(0)
    n, dim = 300, 16
    x = rng.normal(size=(20, dim))[rng.integers(20, size=n)] + 0.05 * rng.normal(size=(n, dim))
    ids = [f"I{i:04d}" for i in range(n)]
    catalog = tmp_path / "shop.parquet"
    pl.DataFrame({"item_id": ids, "title": ids, "emb": [r.tolist() for r in x]},
                 schema={"item_id": pl.String, "title": pl.String, "emb": pl.List(pl.Float64)}).write_parquet(catalog)
    seqs = tmp_path / "seq.txt"
    seqs.write_text("".join(f"u{u} " + " ".join(rng.choice(ids[(u % 10) * 30 : (u % 10) * 30 + 30], size=6)) + "\n" for u in range(200)))
    config = tmp_path / "tiny.json"
    config.write_text(json.dumps({**TINY, "collab": {"dim": 8}}))
    out = tmp_path / "out"
    base = ["--catalog", str(catalog), "--out", str(out), "--name", "shop", "--embedding-column", "emb", "--config", str(config)]

    assert main(["run", *base, "--run-id", "r1", "--interactions", str(seqs)]) == 0, capsys.readouterr().err
    prefix = out / "shop" / "r1"
    manifest = storage.read_json(str(prefix / "manifest.json"))
    collab = manifest["stages"]["collab"]
    assert collab["dim"] == dim + 8 and collab["text_dim"] == dim and collab["users"] == 200 and collab["holdout_last"] == 2
    assert collab["items_with_interactions"] + collab["cold_items"] == n
    assert storage.read_json(str(prefix / "model" / "config.json"))["input_dim"] == dim + 8
    assert manifest["embedding"]["dim"] == dim + 8 and "interactions_sha256" in manifest["embedding"]["weights"]
    assert manifest["counts"] == {"input": n, "ided": n, "quarantined": 0}
    assert pl.read_parquet(prefix / "semantic_ids")["sid"].n_unique() == n

    # The frozen model only serves the same collaborative space: another snapshot of the interactions is refused, clearly.
    capsys.readouterr()
    seqs.write_text(seqs.read_text() + "u999 I0000 I0001 I0002\n")
    assert main(["run", *base, "--run-id", "r2", "--interactions", str(seqs), "--prior-run", "latest"]) == 2
    err = capsys.readouterr().err
    assert "interactions_sha256" in err and "--reembed" in err, err

"""The run chain through the real flow (real Ray, Prefect, MiniLM): gates, embedding identity, retrain lineage, drift, latest."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from prefect import flow, task

from flows.cli import main
from flows.retokenize import _retry_unless_bad_input, retokenize
from tasks.chain import EmbeddingMismatch, latest_published
from tasks.config import PipelineConfig
from tasks.embed import model_identity
from tasks.gc import collect_garbage
from tasks.ingest import IngestError
from tasks.sample_catalog import generate_rows
from tests.flows.conftest import TINY

pytestmark = pytest.mark.slow
FIELDS = ["item_id", "title", "brand", "categories", "description", "price"]


def write_catalog(path: Path, rows: list[dict]) -> Path:
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=FIELDS)
        w.writeheader()
        w.writerows(rows)
    return path


def sids(prefix: Path) -> dict[str, str]:
    t = pq.read_table(prefix / "semantic_ids").select(["item_id", "sid"]).to_pydict()
    return dict(zip(t["item_id"], t["sid"]))


def manifest(prefix: Path) -> dict:
    return json.loads((prefix / "manifest.json").read_text())


def retired(prefix: Path) -> set[str]:
    return {"-".join(map(str, c)) for c in pq.read_table(prefix / "retired")["codes"].to_pylist()}


def test_chain_gates_drift_retrain_lineage_embedding_identity_and_gc(tmp_path, capsys, one_ray):
    rows = generate_rows(n=120, seed=3)
    full = write_catalog(tmp_path / "shop.csv", rows)
    out = tmp_path / "out"
    shop = out / "shop"
    config = PipelineConfig.model_validate(TINY)
    config_file = tmp_path / "tiny.json"
    config_file.write_text(json.dumps(TINY))

    r1 = shop / "20261201T030000Z"
    retokenize(catalog=str(full), out=str(out), name="shop", run_id=r1.name, config=config)
    m1 = manifest(r1)
    assert m1["model_version"] == 1 and m1["embedding"]["precision"] == "fp32" and m1["embedding"]["dim"] == 384
    assert m1["gates"]["tripped"] == [] and not m1["forced"] and m1["published_at"]
    assert json.loads((shop / "LATEST").read_text())["run_id"] == r1.name

    # A truncated upstream catalog: half the items vanish (and a few new ones appear). The gate stops it
    # before anything is embedded or published.
    new_rows = [{**r, "item_id": f"NEW{i:03d}", "title": f"Vintage vinyl record album {i} remastered"} for i, r in enumerate(generate_rows(n=24, seed=9))]
    truncated = write_catalog(tmp_path / "shop-truncated.csv", rows[:60] + new_rows)
    drifty = {**TINY, "drift": {"max_recon_ratio": 1e-6, "min_items": 20}}  # a threshold every real run exceeds
    config_file.write_text(json.dumps(drifty))
    args = ["run", "--catalog", str(truncated), "--out", str(out), "--name", "shop", "--config", str(config_file), "--prior-run", "latest"]
    capsys.readouterr()
    assert main([*args, "--run-id", "2026-11-05"]) == 2
    err = capsys.readouterr().err
    assert "GatesTripped" in err and "removed share 50.0% (60 of 120 prior items) > max 20.0% (gates.max_removed_share)" in err and "--force" in err
    assert not (shop / "2026-11-05").exists() and latest_published(str(shop)) == str(r1)

    # --force publishes and records it. The frozen model serves the 24 new items worse than its own catalog:
    # drift is flagged, and --retrain-on-drift retrains: model version 2, and no ID of the lineage is issued again.
    r2 = shop / "2026-11-05"  # a backfill-style id, below every timestamp id as a string, but published later
    assert main([*args, "--run-id", r2.name, "--force", "--retrain-on-drift"]) == 0, capsys.readouterr().err
    m2 = manifest(r2)
    assert m2["forced"] and m2["gates"]["removed"] == 60 and m2["gates"]["tripped"][0].startswith("removed share 50.0%")
    assert m2["drift"]["flagged"] and m2["drift"]["items"] == 24 and m2["drift"]["recon_ratio"] > 0
    assert m2["retrain"] and m2["retrain_reason"] == "drift" and m2["model_version"] == 2 and m2["prior_run"] == str(r1)
    assert m2["stages"]["fit"]["reused_from"] is None and m2["remap"] == "changes/"
    assert json.loads((shop / "LATEST").read_text())["run_id"] == r2.name
    ids1, ids2 = sids(r1), sids(r2)
    assert not set(ids2.values()) & set(ids1.values()) and set(ids1.values()) <= retired(r2)

    # A prior run embedded elsewhere in fp16 (a GPU host) cannot seed this CPU run's frozen model. (The ID-space
    # pre-check passes on the way: it uses the reused model's K and L, not the configured 2 codes x 1 level.)
    m2["embedding"]["precision"] = "fp16"
    (r2 / "manifest.json").write_text(json.dumps(m2))
    r3 = shop / "20261130T030000Z"
    grown = write_catalog(tmp_path / "shop-grown.csv", rows + new_rows)  # the upstream catalog is whole again
    tiny_k = PipelineConfig.model_validate({**TINY, "model": {**TINY["model"], "codebook_size": 2, "n_levels": 1}})
    with pytest.raises(EmbeddingMismatch, match=r"prior run's embeddings come from all-MiniLM-L6-v2 .*fp16, 384-d but this run's from .*fp32, 384-d"):
        retokenize(catalog=str(grown), out=str(out), name="shop", run_id=r3.name, config=tiny_k, prior_run="latest")
    assert not (r3 / "_SUCCESS").exists()
    # ...unless re-embedded: every item embedded with this embedder, a new model version, every ID of the lineage retired.
    retokenize(catalog=str(grown), out=str(out), name="shop", run_id=r3.name, config=config, prior_run="latest", reembed=True)
    m3 = manifest(r3)
    assert m3["prior_run"] == str(r2), "latest follows publish time, not run-id order"
    assert m3["reembedded"] and m3["retrain_reason"] == "reembed" and m3["model_version"] == 3 and m3["remap"] == "changes/"
    remap = pq.read_table(r3 / "changes").to_pydict()
    assert {s: remap["status"].count(s) for s in set(remap["status"])} == {"remapped": 84, "new": 60}
    ids3 = sids(r3)
    ever_issued = set(ids1.values()) | set(ids2.values()) | retired(r2)
    assert not set(ids3.values()) & ever_issued, "no ID of the lineage is issued again after a retrain"
    assert ever_issued <= retired(r3), "the retired list carries the whole lineage across retrains"
    assert json.loads((shop / "LATEST").read_text())["run_id"] == r3.name

    # Retention on the real lineage: the latest run and the one it chains from stay.
    report = collect_garbage(out=str(out), name="shop", keep=1, min_age_hours=0)
    assert report.kept_runs == {str(r3): "latest", str(r2): f"prior of {r3.name}"}
    assert report.removed_runs == [str(r1)] and not r1.exists()
    assert (r3 / "_SUCCESS").exists() and (r2 / "_SUCCESS").exists() and latest_published(str(shop)) == str(r3)
    assert report.cache_entries_removed == 0, "every cached text is still used by r2 or r3"


def test_bad_input_is_not_retried_other_errors_are():
    attempts: list[str] = []
    errors = {"bad-input": IngestError("no id column"), "corrupt-work-file": pa.ArrowInvalid("Parquet magic bytes not found"), "plain": ValueError("x")}

    @task(retries=1, retry_delay_seconds=0, retry_condition_fn=_retry_unless_bad_input)
    def failing(kind: str) -> None:
        attempts.append(kind)
        raise errors[kind]

    @flow
    def one(kind: str) -> None:
        failing(kind)

    for kind, expected in [("bad-input", 1), ("corrupt-work-file", 2), ("plain", 2)]:
        attempts.clear()
        with pytest.raises(type(errors[kind])):
            one(kind)
        assert len(attempts) == expected, kind


def test_a_corrupt_prior_run_fails_the_run_with_exit_1(tmp_path, capsys):
    """Not bad input: a damaged file in storage is retried and reported as a failed run, not as the user's mistake."""
    rows = generate_rows(n=30, seed=4)
    catalog = write_catalog(tmp_path / "c.csv", rows)
    prior = tmp_path / "out" / "c" / "r0"
    (prior / "semantic_ids").mkdir(parents=True)
    (prior / "semantic_ids" / "part-00000.parquet").write_bytes(b"not parquet at all")
    embedding = {"model": "all-MiniLM-L6-v2", "weights": model_identity("all-MiniLM-L6-v2"), "precision": "fp32", "dim": 384}
    (prior / "manifest.json").write_text(json.dumps({"embedding": embedding, "counts": {"ided": 30}, "published_at": "2026-12-01T00:00:00+00:00"}))
    (prior / "_SUCCESS").write_bytes(b"")
    capsys.readouterr()
    code = main(["run", "--catalog", str(catalog), "--out", str(tmp_path / "out"), "--run-id", "r1", "--prior-run", "latest"])
    err = capsys.readouterr().err
    assert code == 1, err
    assert "run failed: ArrowInvalid" in err

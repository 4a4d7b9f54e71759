"""End to end through the real flow: real Ray (local), real Prefect (test harness), real MiniLM."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from flows.cli import main
from flows.retokenize import RunSpecError, retokenize
from tasks import storage
from tasks.config import PipelineConfig
from tasks.sample_catalog import generate_rows
from tests.flows.conftest import TINY

pytestmark = pytest.mark.slow
FIELDS = ["item_id", "title", "brand", "categories", "description", "price"]


def write_catalog(path: Path, rows: list[dict], bad: bool = True) -> int:
    rows = list(rows)
    if bad:
        rows += [
            {**rows[0], "item_id": ""},  # empty id
            {**rows[1], "item_id": "   "},  # whitespace id
            {"item_id": "BLANK1", "title": "", "brand": "", "categories": "", "description": "", "price": "1"},  # empty text
            {**rows[2], "title": rows[2]["title"] + " (duplicate)"},  # duplicate id
        ]
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=FIELDS)
        w.writeheader()
        w.writerows(rows)
    return len(rows)


def check_published(prefix: str, *, n_input: int, n_quarantined: int) -> dict:
    fs, root = storage.filesystem(prefix)
    names = {p[len(root) + 1 :] for p in fs.find(root)}
    for required in ["_SUCCESS", "manifest.json", "quality.json", "quality.html", "model/model.safetensors", "model/config.json", "quarantine/part-00000.parquet"]:
        assert required in names, f"{required} missing from {sorted(names)}"
    assert any(n.startswith("semantic_ids/part-") for n in names)
    manifest = storage.read_json(storage.join(prefix, "manifest.json"))
    counts = manifest["counts"]
    assert counts == {"input": n_input, "ided": n_input - n_quarantined, "quarantined": n_quarantined}
    # _SUCCESS is written last
    if not storage.is_s3(prefix):
        mtimes = {n: os.stat(os.path.join(root, n)).st_mtime_ns for n in names}
        assert mtimes["_SUCCESS"] >= max(mtimes.values())

    ids = storage.read_parquet(storage.join(prefix, "semantic_ids"))
    assert str(ids.schema.field("item_id").type) == "string"
    assert str(ids.schema.field("codes").type) == "list<element: int32>"
    assert str(ids.schema.field("sid").type) == "string"
    assert ids.num_rows == counts["ided"]
    codes = np.asarray(ids["codes"].to_pylist())
    L = json.loads(storage.read_bytes(storage.join(prefix, "model", "config.json")))["n_levels"]
    assert codes.shape == (counts["ided"], L + 1)
    assert len(set(ids["sid"].to_pylist())) == ids.num_rows, "semantic IDs must be unique"
    assert len(set(ids["item_id"].to_pylist())) == ids.num_rows
    assert ids["sid"].to_pylist()[0] == "-".join(map(str, codes[0]))
    quarantine = storage.read_parquet(storage.join(prefix, "quarantine"))
    assert quarantine.num_rows == counts["quarantined"]
    quality = storage.read_json(storage.join(prefix, "quality.json"))
    for key in ["recon_mse", "recon_cosine", "levels", "unique_tuple_rate", "largest_collision_group", "prefix_coherence", "final_ids"]:
        assert key in quality
    assert b"<img" in storage.read_bytes(storage.join(prefix, "quality.html"))
    return manifest


def test_flow_end_to_end_then_stable_rerun(tmp_path, capsys, one_ray):
    rows = generate_rows(n=240, seed=1)
    catalog = tmp_path / "shop.csv"
    n_input = write_catalog(catalog, rows)
    out = tmp_path / "out"
    config = PipelineConfig.model_validate(TINY)
    result = retokenize(catalog=str(catalog), out=str(out), run_id="r1", config=config)
    prefix = str(out / "shop" / "r1")
    assert result["prefix"] == prefix
    manifest = check_published(prefix, n_input=n_input, n_quarantined=4)
    assert manifest["quarantine_reasons"] == {"duplicate_id": 1, "empty_id": 2, "empty_text": 1}
    reasons = pq.read_table(out / "shop" / "r1" / "quarantine").column("reason").to_pylist()
    assert sorted(reasons) == ["duplicate_id", "empty_id", "empty_id", "empty_text"]
    assert not (out / "shop" / "_work").exists(), "the work area is removed after publishing"

    # Nightly re-tokenization against the published run: one item changed, one removed, one added.
    changed = [dict(r) for r in rows]
    changed[10]["title"] = "Completely different product title for a changed item"
    removed_id = changed.pop(20)["item_id"]
    changed.append({**rows[5], "item_id": "NEW000001", "title": "A brand new espresso machine with milk frother"})
    catalog2 = tmp_path / "shop2.csv"
    n_input2 = write_catalog(catalog2, changed, bad=False)
    retokenize(catalog=str(catalog2), out=str(out), name="shop", run_id="r2", config=config, prior_run=prefix)
    prefix2 = str(out / "shop" / "r2")
    check_published(prefix2, n_input=n_input2, n_quarantined=0)
    old = dict(zip(*pq.read_table(out / "shop" / "r1" / "semantic_ids").select(["item_id", "sid"]).to_pydict().values()))
    new = dict(zip(*pq.read_table(out / "shop" / "r2" / "semantic_ids").select(["item_id", "sid"]).to_pydict().values()))
    changes = pq.read_table(out / "shop" / "r2" / "changes").to_pydict()
    status = dict(zip(changes["item_id"], changes["status"]))
    assert status[changed[10]["item_id"]] == "changed" and status["NEW000001"] == "new" and status[removed_id] == "removed"
    kept = [i for i, s in status.items() if s == "kept"]
    # rows[2] was a duplicate in r1: its survivor (smallest text hash) may have been the other text
    changed_ids = {i for i, s in status.items() if s == "changed"}
    assert changed_ids - {rows[2]["item_id"]} == {changed[10]["item_id"]}
    assert len(kept) == len(new) - 1 - len(changed_ids)
    assert all(new[i] == old[i] for i in kept), "unchanged items keep their exact IDs"
    assert new["NEW000001"] not in set(old.values()) and new[changed[10]["item_id"]] not in set(old.values())
    second = storage.read_json(str(out / "shop" / "r2" / "manifest.json"))
    assert second["stages"]["embed"]["cache_hits"] >= len(rows) - 3, "unchanged texts are never embedded twice"
    assert second["stages"]["fit"]["reused_from"].endswith("r1/model")

    # Reading a run back: inspect and similar through the CLI.
    capsys.readouterr()
    assert main(["inspect", prefix2]) == 0
    summary = capsys.readouterr().out
    assert f"input {n_input2} = ided {n_input2} + quarantined 0" in summary and "top-level code" in summary
    assert main(["similar", prefix2, rows[0]["item_id"], "-k", "5"]) == 0
    listing = capsys.readouterr().out.splitlines()
    assert listing[0].startswith("query") and rows[0]["item_id"] in listing[0]
    assert len(listing) == 2 + 5
    shared = [int(line.split()[0]) for line in listing[2:]]
    assert shared == sorted(shared, reverse=True), "ranked by shared prefix first"
    assert main(["similar", prefix2, "NO-SUCH-ITEM"]) == 2

    # An explicit retrain against r2: a new model, and the old→new map in changes/.
    retokenize(catalog=str(catalog2), out=str(out), name="shop", run_id="r3", config=config, prior_run=prefix2, retrain=True)
    third = storage.read_json(str(out / "shop" / "r3" / "manifest.json"))
    assert third["retrain"] and third["stages"]["fit"]["reused_from"] is None
    remap = pq.read_table(out / "shop" / "r3" / "changes").to_pydict()
    assert set(remap["status"]) == {"remapped"} and len(remap["item_id"]) == len(new)
    new3 = dict(zip(*pq.read_table(out / "shop" / "r3" / "semantic_ids").select(["item_id", "sid"]).to_pydict().values()))
    assert all(new[i] == o and new3[i] == n for i, o, n in zip(remap["item_id"], remap["old_sid"], remap["new_sid"]))

    # A finished prefix is immutable: running the same run id again does nothing.
    again = retokenize(catalog=str(catalog2), out=str(out), name="shop", run_id="r2", config=config, prior_run=prefix)
    assert again["skipped"]


@pytest.mark.parametrize(
    "content, args, message",
    [
        ("sku,title\n1,a\n", [], "item_id"),  # id column missing
        ("", [], "empty"),
        ("item_id,title\n1,a\n", ["--set", "model.codebook_size=0"], "codebook_size"),
        ("item_id,title\n1,a\n", ["--set", "model.lr=1"], "model.lr"),  # unknown key (the optimiser is in fit)
        ("item_id,title\n1,a\n", ["--name", "../escape"], "not allowed"),
    ],
    ids=["missing-id-column", "empty-file", "codebook-size-0", "unknown-key", "name-escapes-prefix"],
)
def test_bad_input_exits_2_and_publishes_nothing(tmp_path, capsys, content, args, message):
    catalog = tmp_path / "bad.csv"
    catalog.write_text(content)
    out = tmp_path / "out"
    code = main(["run", "--catalog", str(catalog), "--out", str(out), "--run-id", "x", *args])
    err = capsys.readouterr().err
    assert code == 2, err
    assert message in err
    assert len(err.strip().splitlines()) <= 3, "a short readable error, not a traceback"
    assert not list(out.rglob("_SUCCESS")) and not list(out.rglob("*.parquet"))


def test_run_spec_rejects_paths_outside_the_prefix(tmp_path):
    for bad in ["../x", "/abs", "a/b", "..", ""]:
        with pytest.raises(RunSpecError):
            retokenize.fn(catalog="c.csv", out=str(tmp_path), name=bad or "/", run_id="r")

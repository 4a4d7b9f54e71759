"""Retention: what gc removes, what it must keep, and --dry-run (no Ray; runs laid out as the flow publishes them)."""

from __future__ import annotations

import json
import os
import time

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from flows.cli import main
from tasks import storage
from tasks.gc import collect_garbage
from tasks import locks


def publish(out, name: str, run_id: str, *, at: str, prior: str | None, hashes: list[str], cache: str) -> str:
    prefix = out / name / run_id
    storage.write_parquet(pa.table({"item_id": hashes, "text_hash": hashes}), str(prefix / "semantic_ids" / "part-00000.parquet"))
    manifest = {"run_id": run_id, "published_at": at, "prior_run": prior, "stages": {"embed": {"cache": cache}}}
    (prefix / "manifest.json").write_text(json.dumps(manifest))
    (prefix / "_SUCCESS").write_bytes(b"")
    return str(prefix)


def age(path, hours: float) -> None:
    stamp = time.time() - hours * 3600
    for root, _, files in os.walk(path):
        for f in files:
            os.utime(os.path.join(root, f), (stamp, stamp))
    if os.path.isfile(path):
        os.utime(path, (stamp, stamp))


def test_gc_keeps_latest_newest_and_chained_runs_and_drops_the_rest(tmp_path, capsys):
    out = tmp_path / "out"
    cache = out / "_cache" / "embeddings" / "modelkey"
    c = str(cache)
    r1 = publish(out, "shop", "20261101T030000Z", at="2026-11-01T03:00:00+00:00", prior=None, hashes=["a", "b"], cache=c)
    r2 = publish(out, "shop", "20261102T030000Z", at="2026-11-02T03:00:00+00:00", prior=r1, hashes=["a", "c"], cache=c)
    r3 = publish(out, "shop", "20261103T030000Z", at="2026-11-03T03:00:00+00:00", prior=r2, hashes=["a", "d"], cache=c)
    # a backfill published last, chained from r2: the latest, whatever its id
    r4 = publish(out, "shop", "2026-10-15", at="2026-11-04T03:00:00+00:00", prior=r2, hashes=["a", "e"], cache=c)
    other = publish(out, "books", "r1", at="2026-11-01T00:00:00+00:00", prior=None, hashes=["b"], cache=c)  # shares the cache
    (out / "shop" / "20261105T030000Z" / "semantic_ids").mkdir(parents=True)  # a crashed publish (no _SUCCESS)
    (out / "shop" / "20261105T030000Z" / "semantic_ids" / "part-00000.parquet").write_bytes(b"x")
    for run_id in ("20261106T030000Z", "20261103T030000Z", "fresh"):  # crashed nights' work, a published run's leftover, a run elsewhere
        (out / "shop" / "_work" / run_id / "ingest").mkdir(parents=True)
        (out / "shop" / "_work" / run_id / "ingest" / "items.parquet").write_bytes(b"x")
    storage.write_parquet(pa.table({"text_hash": ["a", "b", "c", "d", "e", "zombie"], "vector": [[0.0]] * 6}), str(cache / "part-old.parquet"))
    storage.write_parquet(pa.table({"text_hash": ["gone1", "gone2"], "vector": [[0.0]] * 2}), str(cache / "part-unused.parquet"))
    storage.write_parquet(pa.table({"text_hash": ["new-by-a-running-run"], "vector": [[0.0]]}), str(cache / "part-new.parquet"))
    age(out, 48)
    for recent in ("fresh",):
        age(out / "shop" / "_work" / recent, 1)
    age(cache / "part-new.parquet", 1)

    capsys.readouterr()
    assert main(["gc", "--out", str(out), "--name", "shop", "--keep", "2", "--dry-run"]) == 0
    listing = capsys.readouterr().out
    assert f"would remove  run {r1}" in listing and "cache    3 entries would be removed, 6 kept" in listing
    assert (out / "shop" / "20261101T030000Z" / "_SUCCESS").exists(), "a dry run removes nothing"

    report = collect_garbage(out=str(out), name="shop", keep=2)
    assert report.kept_runs == {r4: "latest", r3: "newest 2", r2: "prior of 20261103T030000Z"}
    assert report.removed_runs == [r1] and not os.path.exists(r1)
    assert all(os.path.exists(p) for p in (r2, r3, r4, other))
    assert report.removed_unfinished == [str(out / "shop" / "20261105T030000Z")]
    assert sorted(os.listdir(out / "shop" / "_work")) == ["fresh"], "stale and finished work goes; a recent one may be a live run"
    # cache: b stays (used by books), the unused part goes, a recent part is left alone, zombie is dropped
    assert report.cache_parts_removed == [str(cache / "part-unused.parquet")] and report.cache_entries_removed == 3
    left = sorted(h for f in cache.glob("*.parquet") for h in pq.read_table(f)["text_hash"].to_pylist())
    assert left == ["a", "b", "c", "d", "e", "new-by-a-running-run"]



@pytest.mark.parametrize("exclusion", ["local lock", "as configured"])
def test_gc_refuses_while_a_run_holds_the_lock_and_bad_arguments(tmp_path, monkeypatch, exclusion):
    """gc takes the same exclusion a run holds: the local flock, or the Prefect limit when an API is configured.

    Which one "as configured" is depends on the session (the flow tests' Prefect harness sets an API URL),
    so "local lock" pins the fallback explicitly.
    """
    if exclusion == "local lock":
        monkeypatch.setattr(locks, "server_configured", lambda: False)
    out = tmp_path / "out"
    publish(out, "shop", "r1", at="2026-11-01T03:00:00+00:00", prior=None, hashes=["a"], cache=str(out / "_cache"))
    with locks.catalog_exclusion(str(out / "shop")):
        with pytest.raises(RuntimeError, match="in progress"):
            collect_garbage(out=str(out), name="shop", keep=1)
    with pytest.raises(ValueError, match="--keep must be at least 1"):
        collect_garbage(out=str(out), name="shop", keep=0)
    assert main(["gc", "--out", str(out), "--name", "nothing", "--keep", "1"]) == 2

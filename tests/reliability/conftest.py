"""Shared helpers for the reliability tests: bad input never vanishes silently.

The Prefect test harness (a temporary database and ephemeral API) is started
only for the few tests that enter the flow (``prefect_api``); everything else
calls ``ingest()`` or the CLI's validation directly and needs neither Prefect nor Ray.
"""

from __future__ import annotations

import os
from pathlib import Path

import polars as pl
import pytest

os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="session")
def prefect_api(prefect_test_api):
    """Prefect's test harness, for tests that run (part of) the flow (tests/conftest.py: one per session, shared with tests/flows)."""
    yield


def assert_nothing_written(work: Path) -> None:
    """A failed ingest leaves no file under its work dir (it may not even exist)."""
    assert not work.exists() or not [p for p in work.rglob("*") if p.is_file()], sorted(work.rglob("*"))


def assert_accounted(manifest) -> tuple[pl.DataFrame, pl.DataFrame]:
    """input == valid + quarantined; every quarantined row has a known reason; row numbers cover each record once."""
    from tasks.ingest import REASONS

    items = pl.read_parquet(manifest.items)
    quarantine = pl.read_parquet(manifest.quarantine)
    counts = {"input": manifest.input, "valid": manifest.valid, "quarantined": manifest.quarantined}
    assert counts["input"] == counts["valid"] + counts["quarantined"], counts
    assert items.height == counts["valid"] and quarantine.height == counts["quarantined"]
    assert quarantine["reason"].null_count() == 0 and set(quarantine["reason"]) <= set(REASONS)
    assert quarantine["row_number"].is_unique().all()
    assert quarantine["row_number"].is_between(0, counts["input"] - 1).all()
    assert items["item_id"].is_unique().all()
    assert (items["item_id"].str.strip_chars() != "").all() and (items["text"] != "").all()
    assert sum(manifest.quarantine_reasons.values()) == counts["quarantined"]
    return items, quarantine


def published_files(out: Path) -> list[Path]:
    """Anything that would make a run look finished or hold output data."""
    return sorted(p for p in out.rglob("*") if p.name == "_SUCCESS" or (p.suffix == ".parquet" and "_work" not in p.parts))

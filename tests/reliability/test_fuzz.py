"""Property test: random small catalogs, any format, are fully accounted for and get unique, order-independent IDs.

Each example writes a catalog (csv, jsonl or parquet) with hostile ids (empty,
whitespace, duplicates, unicode, JSON numbers) and texts (empty, control
characters, HTML entities, quotes, delimiters), runs ``ingest()``, then assigns
IDs with ``rqvae_core.ids.resolve_collisions`` on codes derived from each
item's text hash (small K, so collisions and overflow are the norm). The same
rows shuffled must give the same items, quarantine counts and IDs.
"""

from __future__ import annotations

import csv
import json
import random
import tempfile
from collections import Counter
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from rqvae_core.ids import IdSpaceError, resolve_collisions
from tasks.config import IngestConfig
from tasks.ingest import REASONS, ingest

pytestmark = pytest.mark.reliability

COLUMNS = ("item_id", "title", "brand")
ID_SAMPLES = ["", " ", "\t", " \n ", "1", "01", "1 ", "a", "A", "é", "e\u0301", "🙂", "x y", "1,2", '"q"', "dup", "dup", "\u00a0"]
TEXT_SAMPLES = [
    "", " ", "\t\n", "\x07", "\x1b[0m", "&amp;", "&nbsp;", "a &amp;amp; b", "&#8482;", "&lt;b&gt;bold&lt;/b&gt;",
    "Crème brûlée", "日本", "🙂", '"quoted"', "a,b;c\td", "[]", "['Beauty', \"Women's\"]", "x\r\ny", "  padded  ",
]

PLAIN_IDS = [f"sku{i}" for i in range(24)]  # mostly valid ids, so catalogs are big enough to collide and overflow
ids = st.one_of(
    st.sampled_from(PLAIN_IDS), st.sampled_from(PLAIN_IDS), st.sampled_from([*ID_SAMPLES, None]),
    st.text(min_size=1, max_size=3), st.integers(0, 3),
)
texts = st.one_of(st.sampled_from(TEXT_SAMPLES), st.text(max_size=12), st.text(max_size=12), st.none())
rows_strategy = st.lists(st.tuples(ids, texts, texts), min_size=1, max_size=20)


def _cell(value, fmt: str):
    """What the catalog can hold: CSV has no null (empty field) and no NUL-dense text; JSON ints stay ints in jsonl."""
    if fmt == "csv":
        return "" if value is None else str(value).replace("\x00", "")
    if fmt == "parquet" and isinstance(value, int):
        return str(value)
    return value


def write_catalog(directory: Path, rows: list[tuple], fmt: str) -> Path:
    records = [{c: _cell(v, fmt) for c, v in zip(COLUMNS, r)} for r in rows]
    path = directory / f"catalog.{fmt}"
    if fmt == "csv":
        with open(path, "w", newline="", encoding="utf-8") as f:
            w = csv.DictWriter(f, fieldnames=COLUMNS, lineterminator="\n")
            w.writeheader()
            w.writerows(records)
    elif fmt == "jsonl":
        path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    else:
        schema = pa.schema([(c, pa.string()) for c in COLUMNS])
        pq.write_table(pa.Table.from_pylist(records, schema=schema), path)
    return path


def raw_ids(rows: list[tuple], fmt: str) -> list[str | None]:
    """The id of each row as ingest sees it before stripping (JSON numbers as their text)."""
    out = []
    for r in rows:
        v = _cell(r[0], fmt)
        out.append(None if v is None else str(v))
    return out


def assign_ids(items: pl.DataFrame, *, k: int, n_levels: int) -> dict[str, tuple[int, ...]] | str:
    """Codes from a generator seeded by the text hash (so they follow the item, not the row); IDs or the IdSpaceError."""
    n = items.height
    codes = np.zeros((n, n_levels), dtype=np.int64)
    distances = np.zeros(n)
    for i, h in enumerate(items["text_hash"]):
        rng = np.random.default_rng(int(h[:16], 16))
        codes[i] = rng.integers(0, k, n_levels)
        distances[i] = rng.choice([0.0, 0.5, rng.random()])  # ties on purpose: broken by item_id
    # the oracle: every (L-1)-prefix can hold K*K IDs, no more
    prefix_sizes = Counter(map(tuple, codes[:, :-1].tolist()))
    fits = all(size <= k * k for size in prefix_sizes.values())
    try:
        result = resolve_collisions(
            item_ids=np.asarray(items["item_id"].to_list(), dtype=str), codes=codes, distances=distances, codebook_size=k
        )
    except IdSpaceError as exc:
        assert not fits, f"{n} items fit every prefix but resolve_collisions refused: {exc}"
        return "IdSpaceError"
    assert fits, "an over-full prefix must fail loudly"
    assigned = result.codes
    assert assigned.shape == (n, n_levels + 1) and assigned.dtype == np.int32
    assert (assigned >= 0).all() and (assigned < k).all()
    assert (assigned[:, : n_levels - 1] == codes[:, :-1]).all(), "only the last level may move"
    tuples = [tuple(map(int, row)) for row in assigned]
    assert len(set(tuples)) == n, "semantic IDs must be unique"
    if result.n_moved:
        event("overflow: items moved to another last-level code")
    return dict(zip(items["item_id"].to_list(), tuples))


def check_ingest(rows: list[tuple], fmt: str, directory: Path) -> tuple[pl.DataFrame, Counter]:
    catalog = write_catalog(directory, rows, fmt)
    m = ingest(catalog_uri=str(catalog), work_uri=str(directory / "work"), config=IngestConfig())
    items = pl.read_parquet(m.items)
    quarantine = pl.read_parquet(m.quarantine)
    n = len(rows)

    # nothing lost: every record counted, input = valid + quarantined
    assert m.input == n, (m.input, m.valid, m.quarantined, n)
    assert m.input == m.valid + m.quarantined
    assert items.height == m.valid and quarantine.height == m.quarantined

    # every row is in items or in quarantine, exactly once
    q_rows = quarantine["row_number"].to_list()
    assert len(set(q_rows)) == len(q_rows) and all(0 <= r < n for r in q_rows)
    stripped = pl.Series(raw_ids(rows, fmt), dtype=pl.String).str.strip_chars().to_list()
    kept_rows = sorted(set(range(n)) - set(q_rows))
    assert sorted(stripped[r] for r in kept_rows) == sorted(items["item_id"].to_list()), "one surviving row per item"
    assert items["item_id"].is_unique().all()
    assert items.filter((pl.col("item_id") == "") | (pl.col("text") == "")).height == 0

    # quarantine reasons are consistent with the rows
    item_ids = set(items["item_id"].to_list())
    for r, reason in zip(q_rows, quarantine["reason"].to_list()):
        assert reason in REASONS
        if reason == "empty_id":
            assert not stripped[r]
        else:
            assert stripped[r], (r, reason)
        if reason == "duplicate_id":
            assert stripped[r] in item_ids, "a duplicate's survivor is an item"
    assert Counter(quarantine["reason"].to_list()) == Counter(
        {r: c for r, c in m.quarantine_reasons.items() if c}
    )
    quarantined = Counter(zip((stripped[r] or "" for r in q_rows), quarantine["reason"].to_list()))
    return items, quarantined


@pytest.mark.parametrize("fmt", ["csv", "jsonl", "parquet"])
@settings(max_examples=20, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(
    rows=rows_strategy,
    k=st.sampled_from([2, 3]),
    n_levels=st.sampled_from([1, 2]),
    seed=st.integers(0, 2**32 - 1),
)
def test_random_catalogs_are_accounted_for_and_ided_order_independently(rows, fmt, k, n_levels, seed):
    shuffled = list(rows)
    random.Random(seed).shuffle(shuffled)
    with tempfile.TemporaryDirectory() as a, tempfile.TemporaryDirectory() as b:
        items, quarantined = check_ingest(rows, fmt, Path(a))
        items2, quarantined2 = check_ingest(shuffled, fmt, Path(b))
    # the same catalog in another row order: the same items (sorted by id), the same rejections, the same IDs
    assert items.equals(items2)
    assert quarantined == quarantined2
    ided = assign_ids(items, k=k, n_levels=n_levels)
    assert ided == assign_ids(items2, k=k, n_levels=n_levels)
    event(f"{fmt}: ID space {'exceeded (IdSpaceError)' if ided == 'IdSpaceError' else 'fits'}")
    for reason in sorted({r for _, r in quarantined}):
        event(f"quarantined {reason}")

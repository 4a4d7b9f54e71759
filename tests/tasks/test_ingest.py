"""tasks.ingest: formats, quote-aware TSV, quarantine rules, errors, resume, S3, the Amazon Beauty file."""

from __future__ import annotations

import csv
import hashlib
import json
import os
import random
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tasks import storage
from tasks.config import IngestConfig
from tasks.ingest import IngestError, detect_format, ingest
from tests.s3_fixture import moto_s3  # noqa: F401

BEAUTY = Path(__file__).resolve().parents[3] / "shared" / "data" / "amazon_beauty" / "Amazon_Beauty.item"

ROWS = [
    {"item_id": "0001", "title": "Red Lipstick, matte", "brand": "Acme", "categories": "Beauty > Makeup"},
    {"item_id": "0002", "title": 'Say "hi" speaker', "brand": "Sonora", "categories": "Electronics > Audio"},
    {"item_id": "B00X", "title": "Crème brûlée torch", "brand": "", "categories": "Kitchen"},
    {"item_id": "10", "title": "Tab\there and a\nnewline", "brand": "Tabby", "categories": "Misc"},
]
EXPECTED_TEXT = {
    "0001": "title: Red Lipstick, matte | brand: Acme | categories: Beauty > Makeup",
    "0002": 'title: Say "hi" speaker | brand: Sonora | categories: Electronics > Audio',
    "B00X": "title: Crème brûlée torch | categories: Kitchen",
    "10": "title: Tab here and a newline | brand: Tabby | categories: Misc",
}


# --------------------------------------------------------------------------- writers


def write_csv(path: Path, rows: list[dict], delimiter: str = ",") -> Path:
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]), delimiter=delimiter, lineterminator="\n")
        w.writeheader()
        w.writerows(rows)
    return path


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def write_json(path: Path, rows: list[dict]) -> Path:
    path.write_text(json.dumps(rows, ensure_ascii=False), encoding="utf-8")
    return path


def write_pq(path: Path, rows: list[dict]) -> Path:
    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


WRITERS = {
    "csv": lambda p, r: write_csv(p / "c.csv", r),
    "tsv": lambda p, r: write_csv(p / "c.tsv", r, "\t"),
    "jsonl": lambda p, r: write_jsonl(p / "c.jsonl", r),
    "json": lambda p, r: write_json(p / "c.json", r),
    "parquet": lambda p, r: write_pq(p / "c.parquet", r),
}


def run(catalog: Path | str, work: Path | str, **cfg):
    return ingest(catalog_uri=str(catalog), work_uri=str(work), config=IngestConfig(**cfg))


def items_of(m) -> pl.DataFrame:
    return pl.read_parquet(m.items)


def quarantine_of(m) -> pl.DataFrame:
    return pl.read_parquet(m.quarantine)


def short_sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:32]


# --------------------------------------------------------------------------- formats


@pytest.mark.parametrize("fmt", list(WRITERS))
def test_each_format_gives_the_same_items(tmp_path: Path, fmt: str) -> None:
    src = WRITERS[fmt](tmp_path, ROWS)
    m = run(src, tmp_path / "work")
    assert m.stage == "ingest" and m.format == fmt
    assert (m.input, m.valid, m.quarantined) == (4, 4, 0)
    items = items_of(m)
    assert items.schema == pl.Schema({"item_id": pl.String, "text": pl.String, "text_hash": pl.String})
    assert items["item_id"].to_list() == sorted(EXPECTED_TEXT)  # sorted by item_id, "0001" kept as a string
    assert dict(zip(items["item_id"], items["text"])) == EXPECTED_TEXT
    assert items["text_hash"].to_list() == [short_sha(t) for t in items["text"]]
    assert m.text_columns == ["title", "brand", "categories"]
    assert (m.items, m.quarantine) == (str(tmp_path / "work" / "ingest" / "items"), str(tmp_path / "work" / "ingest" / "quarantine"))
    assert m.partitions == 1 and storage.list_parquet(m.items) == [str(tmp_path / "work" / "ingest" / "items" / "part-00000.parquet")]
    assert pq.read_schema(storage.list_parquet(m.items)[0]).field("item_id").type == pa.string()


def test_tsv_is_quote_aware_with_recbole_headers(tmp_path: Path) -> None:
    src = tmp_path / "mini.item"
    src.write_text(
        "item_id:token\ttitle:token\tprice:float\tcategories:token_seq\tbrand:token\n"
        "A1\t\"Multi\tline\ntitle\"\t5.0\t\"'Beauty', 'Fragrance', \"\"Women's\"\", 'Eau de Parfum'\"\tPrada\n"
        "A2\tPlain &amp; simple\t\t'Beauty', 'Makeup'\tL&#39;Oreal\n",
        encoding="utf-8",
    )
    m = run(src, tmp_path / "w")
    assert m.format == "tsv"
    assert m.columns == ["item_id", "title", "price", "categories", "brand"]
    assert m.input == 2
    texts = dict(zip(*items_of(m).select("item_id", "text").to_dict(as_series=False).values()))
    assert texts == {
        "A1": "title: Multi line title | brand: Prada | categories: Beauty, Fragrance, Women's, Eau de Parfum",
        "A2": "title: Plain & simple | brand: L'Oreal | categories: Beauty, Makeup",
    }


def test_format_detection_and_override(tmp_path: Path) -> None:
    assert detect_format("s3://b/x/cat.NDJSON") == "jsonl"
    assert detect_format("x.tab") == "tsv"
    assert detect_format("x.weird", "csv") == "csv"
    with pytest.raises(IngestError, match="ingest.format"):
        detect_format("catalog.xlsx")
    src = write_csv(tmp_path / "catalog.txt", ROWS)
    m = run(src, tmp_path / "w", format="csv")
    assert m.valid == 4


def test_json_nested_values_and_mixed_type_ids(tmp_path: Path) -> None:
    rows = [
        {"item_id": 1, "title": "One", "categories": [["Beauty", "Makeup"], ["Beauty", "Lips"]], "meta": {"color": "red"}},
        {"item_id": "0002", "title": "Two", "categories": ["Books"], "meta": None},
        {"item_id": 3.5, "title": "Three", "rating": 4},
    ]
    for name, writer in (("c.json", write_json), ("c.jsonl", write_jsonl)):
        m = run(writer(tmp_path / name, rows), tmp_path / f"w-{name}", text_columns=["title", "categories", "meta"])
        items = items_of(m)
        assert items["item_id"].to_list() == ["0002", "1", "3.5"]
        text = dict(zip(items["item_id"], items["text"]))
        assert text["1"].startswith("title: One | categories: Beauty, Makeup, Lips | meta: {")
        assert '"color"' in text["1"] and "red" in text["1"]
        assert text["0002"] == "title: Two | categories: Books"
        assert text["3.5"] == "title: Three"
        assert m.columns == ["item_id", "title", "categories", "meta", "rating"]


def test_parquet_non_string_columns_become_strings(tmp_path: Path) -> None:
    t = pa.table(
        {
            "item_id": pa.array([7, 8], pa.int64()),
            "title": ["a", "b"],
            "tags": pa.array([["x", "y"], None], pa.list_(pa.string())),
            "price": [1.5, None],
        }
    )
    pq.write_table(t, tmp_path / "c.parquet")
    m = run(tmp_path / "c.parquet", tmp_path / "w", text_columns=["title", "tags"])
    assert dict(zip(*items_of(m).select("item_id", "text").to_dict(as_series=False).values())) == {
        "7": "title: a | tags: x, y",
        "8": "title: b",
    }


# --------------------------------------------------------------------------- text


def test_html_entities_control_chars_and_whitespace(tmp_path: Path) -> None:
    rows = [
        {"item_id": "1", "title": "  Tom &amp; Jerry\x07\x00  \n\t show&nbsp;box  ", "brand": "A&#39;s &quot;B&quot;"},
        {"item_id": "2", "title": "Double &amp;#8482 mark", "brand": "\x1b"},
    ]
    m = run(write_jsonl(tmp_path / "c.jsonl", rows), tmp_path / "w")
    text = dict(zip(items_of(m)["item_id"], items_of(m)["text"]))
    assert text == {"1": 'title: Tom & Jerry show box | brand: A\'s "B"', "2": "title: Double \u2122 mark"}

    raw = run(write_jsonl(tmp_path / "c2.jsonl", rows[:1]), tmp_path / "w2", normalize_text=False)
    assert items_of(raw)["text"][0].startswith("title:   Tom &amp; Jerry\x07")


def test_max_text_chars_truncates_and_hashes_the_final_text(tmp_path: Path) -> None:
    rows = [{"item_id": "1", "title": "x" * 100, "description": "y" * 100}]
    m = run(write_jsonl(tmp_path / "c.jsonl", rows), tmp_path / "w", max_text_chars=40)
    items = items_of(m)
    assert items["text"][0] == "title: " + "x" * 33
    assert items["text_hash"][0] == short_sha("title: " + "x" * 33)
    full = run(write_jsonl(tmp_path / "c.jsonl", rows), tmp_path / "w2")
    assert items_of(full)["text"][0] == f"title: {'x' * 100} | description: {'y' * 100}"


def test_text_columns_override_and_missing_text_column(tmp_path: Path) -> None:
    src = write_csv(tmp_path / "c.csv", ROWS)
    m = run(src, tmp_path / "w", text_columns=["brand", "title"])
    assert items_of(m).filter(pl.col("item_id") == "0001")["text"][0] == "brand: Acme | title: Red Lipstick, matte"
    with pytest.raises(IngestError, match=r"'nope'.*available columns: item_id, title, brand, categories"):
        run(src, tmp_path / "w3", text_columns=["title", "nope"])
    assert not (tmp_path / "w3").exists()


# --------------------------------------------------------------------------- quarantine


BAD_ROWS = [
    {"item_id": "A", "title": "Alpha", "brand": "X"},  # row 0
    {"item_id": "", "title": "no id", "brand": "X"},  # row 1 empty_id
    {"item_id": "   ", "title": "blank id", "brand": "X"},  # row 2 empty_id
    {"item_id": "B", "title": "  ", "brand": "&nbsp;"},  # row 3 empty_text (after normalisation)
    {"item_id": "C", "title": "Gamma one", "brand": "X"},  # row 4 dup of C
    {"item_id": "A", "title": "Alpha", "brand": "X"},  # row 5 exact dup of A
    {"item_id": "C", "title": "Gamma two", "brand": "X"},  # row 6 dup of C
    {"item_id": "D", "title": "Delta &amp; co", "brand": ""},  # row 7
]


def test_quarantine_reasons_and_invariant(tmp_path: Path) -> None:
    m = run(write_csv(tmp_path / "c.csv", BAD_ROWS), tmp_path / "w")
    # 8 rows: 2 empty ids, 1 empty text, 2 duplicates (one A, one C) -> valid ids A, C, D.
    assert (m.input, m.valid, m.quarantined) == (8, 3, 5)
    assert m.input == m.valid + m.quarantined
    assert m.quarantine_reasons == {"empty_id": 2, "empty_text": 1, "duplicate_id": 2}
    items = items_of(m)
    assert items["item_id"].to_list() == ["A", "C", "D"]
    assert items.filter(pl.col("item_id") == "D")["text"][0] == "title: Delta & co"
    q = quarantine_of(m)
    assert q.columns == ["item_id", "title", "brand", "reason", "row_number"]
    assert q.schema["row_number"] == pl.Int64 and q["row_number"].is_sorted()
    by_row = {r["row_number"]: r for r in q.to_dicts()}
    assert by_row[1]["reason"] == "empty_id" and by_row[1]["item_id"] == ""
    assert by_row[2]["reason"] == "empty_id" and by_row[2]["item_id"] == "   "  # original value, unchanged
    assert by_row[3]["reason"] == "empty_text" and by_row[3]["brand"] == "&nbsp;"
    # C: the survivor is the row with the smaller text_hash; A: identical rows, the earlier row survives.
    c_texts = {4: "title: Gamma one | brand: X", 6: "title: Gamma two | brand: X"}
    loser = max(c_texts, key=lambda r: short_sha(c_texts[r]))
    survivor = min(c_texts, key=lambda r: short_sha(c_texts[r]))
    assert by_row[loser]["reason"] == "duplicate_id" and by_row[5]["reason"] == "duplicate_id"
    assert sorted(by_row) == sorted([1, 2, 3, 5, loser])
    assert items.filter(pl.col("item_id") == "C")["text"][0] == c_texts[survivor]


def test_survivor_is_independent_of_row_order(tmp_path: Path) -> None:
    rows = [{"item_id": f"I{i % 7}", "title": f"title {i}", "brand": "B"} for i in range(40)]
    rows += [{"item_id": "SAME", "title": "same text", "brand": "B"}] * 3
    reference = None
    for k in range(4):
        shuffled = rows[:]
        random.Random(k).shuffle(shuffled)
        m = run(write_csv(tmp_path / f"c{k}.csv", shuffled), tmp_path / f"w{k}")
        items = items_of(m)
        assert (m.input, m.valid, m.quarantined) == (43, 8, 35)
        if reference is None:
            reference = items
        assert items.equals(reference)
        kept_texts = set(quarantine_of(m).select(pl.format("title: {} | brand: {}", "title", "brand")).to_series())
        assert not kept_texts & (set(items["text"]) - {"title: same text | brand: B"})
    for iid, text, h in reference.iter_rows():
        group = [r for r in rows if r["item_id"] == iid]
        assert h == min(short_sha(f"title: {r['title']} | brand: B") for r in group)


# --------------------------------------------------------------------------- errors


def _assert_nothing_written(work: Path) -> None:
    assert not work.exists() or not any(work.rglob("*"))


def test_missing_id_column_lists_the_columns(tmp_path: Path) -> None:
    src = write_csv(tmp_path / "c.csv", [{"sku": "1", "title": "t", "brand": "b"}])
    with pytest.raises(IngestError) as e:
        run(src, tmp_path / "w")
    msg = str(e.value)
    assert "'item_id'" in msg and "sku, title, brand" in msg and "\n" not in msg
    _assert_nothing_written(tmp_path / "w")
    m = run(src, tmp_path / "w2", id_column="sku")
    assert m.id_column == "sku" and items_of(m)["item_id"].to_list() == ["1"]


@pytest.mark.parametrize(
    "name,content,match",
    [
        ("empty.csv", b"", "empty"),
        ("blank.jsonl", b"\n  \n", "empty"),
        ("header_only.csv", b"item_id,title\n", "no records"),
        ("empty_array.json", b"[]", "empty"),
        ("garbage.csv", bytes(range(256)) * 20, "binary"),
        ("garbage.parquet", b"PAR1 this is not parquet at all", "cannot parse"),
        ("bad.jsonl", b'{"item_id": "1", "title": "a"}\n{not json\n', "cannot parse"),
        ("bad.json", b'[{"item_id": 1}, ', "cannot parse"),
        ("scalars.json", b"[1, 2]", "not an object"),
        ("latin1.csv", "item_id,title\n1,caf\xe9\n".encode("latin-1"), "cannot parse"),
    ],
)
def test_bad_files_raise_and_write_nothing(tmp_path: Path, name: str, content: bytes, match: str) -> None:
    src = tmp_path / name
    src.write_bytes(content)
    with pytest.raises(IngestError, match=match) as e:
        run(src, tmp_path / "w")
    assert "\n" not in str(e.value)
    _assert_nothing_written(tmp_path / "w")


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(IngestError, match="not found"):
        run(tmp_path / "nope.csv", tmp_path / "w")
    _assert_nothing_written(tmp_path / "w")


# --------------------------------------------------------------------------- resume


def test_resume_returns_the_manifest_without_rewriting(tmp_path: Path) -> None:
    src = write_csv(tmp_path / "c.csv", BAD_ROWS)
    first = run(src, tmp_path / "w")
    assert first.resumed is False
    items_path = Path(first.items) / "part-00000.parquet"
    os.utime(items_path, (1_000_000, 1_000_000))
    second = run(src, tmp_path / "w")
    assert second.resumed is True
    assert second.model_dump(exclude={"resumed"}) == first.model_dump(exclude={"resumed"})
    assert items_path.stat().st_mtime == 1_000_000
    # A different config (or catalog content) is a different input hash: the stage reruns.
    third = run(src, tmp_path / "w", max_text_chars=64)
    assert third.resumed is False and third.input_hash != first.input_hash
    assert items_path.stat().st_mtime != 1_000_000
    src.write_text(src.read_text() + "E,Epsilon,X\n")
    fourth = run(src, tmp_path / "w", max_text_chars=64)
    assert fourth.resumed is False and fourth.input == 9


# --------------------------------------------------------------------------- S3


def test_s3_catalog_and_s3_outputs(moto_s3: str, tmp_path: Path) -> None:  # noqa: F811
    local = write_csv(tmp_path / "c.csv", BAD_ROWS)
    storage.write_bytes("s3://test-bucket/catalogs/c.csv", local.read_bytes())
    m = run("s3://test-bucket/catalogs/c.csv", "s3://test-bucket/work/run1")
    assert m.items == "s3://test-bucket/work/run1/ingest/items"
    assert (m.input, m.valid, m.quarantined) == (8, 3, 5)
    items = pl.from_arrow(storage.read_parquet(m.items))
    assert items["item_id"].to_list() == ["A", "C", "D"]
    assert storage.read_parquet(m.quarantine).num_rows == 5
    assert storage.exists("s3://test-bucket/work/run1/ingest/_stage.json")
    local_m = run(local, tmp_path / "w")
    assert items.equals(items_of(local_m))
    assert local_m.input_hash == m.input_hash
    again = run("s3://test-bucket/catalogs/c.csv", "s3://test-bucket/work/run1")
    assert again.resumed is True
    with pytest.raises(IngestError, match="not found"):
        run("s3://test-bucket/catalogs/missing.csv", "s3://test-bucket/work/run2")
    assert not storage.exists("s3://test-bucket/work/run2")


# --------------------------------------------------------------------------- Amazon Beauty


@pytest.mark.skipif(not BEAUTY.exists(), reason=f"Amazon Beauty test data not found at {BEAUTY}")
def test_amazon_beauty(tmp_path: Path) -> None:
    m = run(BEAUTY, tmp_path / "w")
    # PROVENANCE.md: 12101 records (quote-aware), ids unique, every record has categories.
    assert (m.input, m.valid, m.quarantined) == (12101, 12101, 0)
    assert m.quarantine_reasons == {"empty_id": 0, "empty_text": 0, "duplicate_id": 0}
    assert m.format == "tsv"
    assert m.columns == ["item_id", "title", "sales_type", "sales_rank", "categories", "price", "brand"]
    assert m.catalog_sha256 == "e56c8cbc404b0d82bc30ce9f063e06c0e93615c859c9ca9a522c669d79b74478"
    items = items_of(m)
    assert items["item_id"].n_unique() == 12101
    text = dict(zip(items["item_id"], items["text"]))
    assert text["9788072216"] == (
        "title: Prada Candy By Prada Eau De Parfum Spray 1.7 Oz For Women | brand: Prada"
        " | categories: Beauty, Fragrance, Women's, Eau de Parfum"
    )
    assert text["B0001ZYL3Q"].startswith("title: TheraNeem Cream - Original Organix South 2 oz Cream Vanilla |")
    assert "\t" not in text["B000SDI6MI"] and text["B000SDI6MI"].startswith("title: - DESIGNER SKIN ANGEL")
    assert "\u2122" in text["B00BSU7H5W"]  # double-escaped &amp;#8482
    assert not items["text"].str.contains("&amp;|&quot;|&#39;|'Beauty'").any()

    # Title-only text: exactly the 7 empty titles listed in PROVENANCE.md are quarantined.
    t = run(BEAUTY, tmp_path / "w-title", text_columns=["title"])
    assert (t.input, t.valid, t.quarantined) == (12101, 12094, 7)
    q = quarantine_of(t)
    assert set(q["reason"]) == {"empty_text"}
    assert q["item_id"].to_list() == [
        "B000GZES7A", "B001DJ2USM", "B001MP0T2Q", "B001RD37ZO", "B001S3I57S", "B00ALHISAQ", "B00B4C35IW",
    ]
    assert q["categories"][0] == "'Beauty', 'Skin Care', 'Eyes', 'Creams'"  # original value kept


def test_no_text_column_and_ragged_rows(tmp_path: Path) -> None:
    src = write_csv(tmp_path / "c.csv", [{"item_id": "1", "name": "x"}])
    with pytest.raises(IngestError, match=r"default text columns.*available columns: item_id, name"):
        run(src, tmp_path / "w")
    assert run(src, tmp_path / "w2", text_columns=["name"]).valid == 1
    ragged = tmp_path / "r.csv"
    ragged.write_text("item_id,title\n1,a\n2,b,extra,fields\n")
    with pytest.raises(IngestError, match="cannot parse"):
        run(ragged, tmp_path / "w3")
    _assert_nothing_written(tmp_path / "w3")


def test_a_large_catalog_is_parsed_in_a_child_process_with_the_same_result(tmp_path: Path, monkeypatch) -> None:
    """Above ingest.child_process_min_bytes the stage runs in a spawned process: same outputs, and a bad
    catalog still fails with the one clear IngestError (it crosses the process boundary intact)."""
    import tasks.ingest as ingest_mod

    rows = ROWS + [dict(ROWS[0]), {"item_id": "", "title": "no id", "brand": "", "categories": ""}]
    src = write_csv(tmp_path / "shop.csv", rows)
    in_driver = run(src, tmp_path / "w1")
    monkeypatch.setattr(ingest_mod, "_run", lambda *a: pytest.fail("parsed in this process"))  # the spawned child imports its own
    in_child = run(src, tmp_path / "w2", child_process_min_bytes=0)
    assert in_child.model_dump(exclude={"items", "quarantine", "seconds"}) == in_driver.model_dump(exclude={"items", "quarantine", "seconds"})
    assert items_of(in_child).equals(items_of(in_driver)) and quarantine_of(in_child).equals(quarantine_of(in_driver))
    bad = tmp_path / "bad.csv"
    bad.write_text("item_id,title\n1,ok\n2,\"unclosed\n")
    with pytest.raises(IngestError, match="bad.csv"):
        run(bad, tmp_path / "w3", child_process_min_bytes=0)


def _messy_rows(n: int, seed: int) -> list[dict]:
    """n records with every quarantine reason: duplicate ids (same and other text), blank ids, empty text."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        kind = rng.random()
        item = f"it{rng.randrange(n * 3 // 4):05d}"  # ~1 id in 4 repeats
        if kind < 0.03:
            item = rng.choice(["", "  "])
        title = "" if kind > 0.97 else f"product {rng.randrange(n // 2)} {rng.choice(['red', 'blue', 'Crème &amp; co'])}"
        rows.append({"item_id": item, "title": title, "brand": rng.choice(["", "Acme", "Zeta"])})
    return rows


def test_partitioned_ingest_equals_one_partition(tmp_path: Path, monkeypatch) -> None:
    """ingest.partition_bytes splits the catalog by a hash of item_id: each partition is validated and
    de-duplicated on its own (at most its own records in memory) and the outputs equal one partition's."""
    import zlib

    import tasks.ingest as ingest_mod

    src = write_csv(tmp_path / "c.csv", _messy_rows(3000, seed=3))
    whole = run(src, tmp_path / "w1")
    assert whole.partitions == 1 and whole.quarantine_reasons["duplicate_id"] > 100 and whole.quarantine_reasons["empty_id"] > 0

    largest = []
    read = ingest_mod._Spill.read
    monkeypatch.setattr(ingest_mod._Spill, "read", lambda self, p: largest.append(read(self, p).height) or read(self, p))
    split = run(src, tmp_path / "w2", partition_bytes=src.stat().st_size // 7)
    assert split.partitions == 8 and len(largest) == 8 and max(largest) < whole.input / 4

    assert split.model_dump(exclude={"items", "quarantine", "seconds", "input_hash", "partitions"}) == whole.model_dump(
        exclude={"items", "quarantine", "seconds", "input_hash", "partitions"})
    assert quarantine_of(split).equals(quarantine_of(whole))  # same rows, input order
    parts = storage.list_parquet(split.items)
    assert [Path(p).name for p in parts] == [f"part-{p:05d}.parquet" for p in range(8)]
    for p, part in enumerate(pl.read_parquet(f) for f in parts):
        assert part["item_id"].is_sorted() and all(zlib.crc32(i.encode()) % 8 == p for i in part["item_id"])
    assert items_of(split).sort("item_id").equals(items_of(whole))


def test_partitioned_embedding_column(tmp_path: Path) -> None:
    """The catalog's dimension is the most common length over every partition; vectors stay with their items."""
    rng = np.random.default_rng(0)
    ids = [f"v{i:04d}" for i in range(600)] + ["v0001", "v0002"]
    vecs = [rng.normal(size=4).tolist() for _ in ids]
    for i in range(0, 600, 50):
        vecs[i] = vecs[i][:3]  # wrong length
    src = tmp_path / "c.parquet"
    pl.DataFrame({"item_id": ids, "title": [f"t{i}" for i in range(len(ids))], "vec": vecs}).write_parquet(src)
    whole = run(src, tmp_path / "w1", embedding_column="vec")
    split = run(src, tmp_path / "w2", embedding_column="vec", partition_bytes=src.stat().st_size // 5)
    assert split.partitions > 1 and split.dim == whole.dim == 4
    assert split.quarantine_reasons == whole.quarantine_reasons == {"empty_id": 0, "empty_text": 0, "duplicate_id": 2, "bad_embedding": 12}
    a, b = (pl.from_arrow(pq.read_table(m.vectors)).sort("item_id") for m in (whole, split))
    assert a.equals(b) and a.height == 588
    assert quarantine_of(split).equals(quarantine_of(whole))

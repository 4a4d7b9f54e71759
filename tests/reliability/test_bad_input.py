"""Bad input gets a clear error or quarantined rows, never silent loss: input rows = ID'd rows + quarantined rows.

Each case runs at the cheapest layer that proves it: ``ingest()`` for parsing,
``flows.cli.main`` in-process for exit codes and messages (validation happens
before Prefect starts), the flow only where the behaviour lives there (the
ID-space capacity check, and one full run on a messy catalog).

Every case either raises a one-line ``IngestError`` and writes nothing, or
accounts for every input row (``assert_accounted``).
"""

from __future__ import annotations

import csv
import hashlib
import json
import time
from pathlib import Path

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from flows.cli import main
from tasks.config import IngestConfig
from tasks.ingest import IngestError, ingest
from tests.reliability.conftest import assert_accounted, assert_nothing_written, published_files

pytestmark = pytest.mark.reliability


def run(catalog: Path, work: Path, **cfg):
    return ingest(catalog_uri=str(catalog), work_uri=str(work), config=IngestConfig(**cfg))


def fails(tmp_path: Path, name: str, content: bytes | pa.Table, match: str, **cfg) -> str:
    """Ingest must raise a one-line IngestError matching ``match`` and write nothing; returns the message."""
    src = tmp_path / name
    if isinstance(content, pa.Table):
        pq.write_table(content, src)
    else:
        src.write_bytes(content)
    work = tmp_path / "work"
    with pytest.raises(IngestError, match=match) as e:
        run(src, work, **cfg)
    msg = str(e.value)
    assert "\n" not in msg and len(msg) < 600, msg
    assert "You might want to try" not in msg and "truncate_ragged_lines" not in msg, "no advice about reader internals"
    assert_nothing_written(work)
    return msg


def ok(tmp_path: Path, name: str, content: bytes | pa.Table, **cfg):
    src = tmp_path / name
    if isinstance(content, pa.Table):
        pq.write_table(content, src)
    else:
        src.write_bytes(content)
    m = run(src, tmp_path / f"work-{name}", **cfg)
    items, quarantine = assert_accounted(m)
    return m, items, quarantine


def jsonl(*rows: dict) -> bytes:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode()


def texts(items: pl.DataFrame) -> dict[str, str]:
    return dict(zip(items["item_id"].to_list(), items["text"].to_list()))


def reasons(quarantine: pl.DataFrame) -> dict[int, str]:
    return dict(zip(quarantine["row_number"].to_list(), quarantine["reason"].to_list()))


# --------------------------------------------------------------------------- empty, header-only, truncated


@pytest.mark.parametrize(
    "name,content,match",
    [
        ("empty.csv", b"", "catalog is empty"),
        ("blank.csv", b"\n\r\n  \n", "catalog is empty"),
        ("empty.jsonl", b"", "catalog is empty"),
        ("empty.parquet", b"", "catalog is empty"),
        ("header.csv", b"item_id,title\n", "no records"),
        ("header_no_newline.csv", b"item_id,title", "no records"),
        ("header.tsv", b"item_id\ttitle\n", "no records"),
        ("header.parquet", pa.table({"item_id": pa.array([], pa.string()), "title": pa.array([], pa.string())}), "no records"),
    ],
)
def test_empty_and_header_only_catalogs_raise(tmp_path, name, content, match):
    msg = fails(tmp_path, name, content, match)
    assert name in msg, "the message names the catalog"


def test_truncated_inside_a_quoted_field_raises(tmp_path):
    good = b'item_id,title\n1,"a, quoted title"\n2,"second'
    msg = fails(tmp_path, "cut.csv", good, "looks truncated or badly quoted")
    assert "column 'title'" in msg and '"second' in msg
    # cut inside a multi-line quoted field: the rest of the file must not be swallowed silently
    fails(tmp_path, "cut2.csv", b'item_id,title\n1,"line one\nline two\n2,x\n', "not closed")


def test_truncated_last_line_raises(tmp_path):
    msg = fails(tmp_path, "cut.csv", b"item_id,title,brand\n1,Lipstick,Acme\n2,Mascar", "looks truncated")
    assert "2 of the header's 3 fields" in msg
    fails(tmp_path, "cut.tsv", b"item_id\ttitle\tbrand\n1\tLipstick\tAcme\n2\tMasc", "looks truncated")
    fails(tmp_path, "cut.jsonl", b'{"item_id": "1", "title": "a"}\n{"item_id": "2", "tit', "line 2")
    pq.write_table(pa.table({"item_id": ["1"] * 500, "title": ["t"] * 500}), tmp_path / "whole.parquet")
    data = (tmp_path / "whole.parquet").read_bytes()
    fails(tmp_path, "cut.parquet", data[: len(data) // 2], "cannot parse")


def test_complete_last_line_without_newline_is_fine(tmp_path):
    # A file that simply lacks the final newline, or ends in a multi-line quoted field, is complete.
    m, items, _ = ok(tmp_path, "a.csv", b"item_id,title,brand\n1,a,x\n2,b,y")
    assert texts(items)["2"] == "title: b | brand: y"
    m, items, _ = ok(tmp_path, "b.csv", b'item_id,title,brand\n1,a,x\n2,"multi\nline",y')
    assert texts(items)["2"] == "title: multi line | brand: y"
    # an empty last field is a complete line: "2,b," has all 3 fields
    m, items, _ = ok(tmp_path, "c.csv", b"item_id,title,brand\n1,a,x\n2,b,")
    assert texts(items)["2"] == "title: b"
    # a last line longer than the tail kept for the check is not guessed about
    big = b"item_id,title,brand\n1,a,x\n2," + b"y" * 100_000 + b",z"
    m, items, _ = ok(tmp_path, "d.csv", big)
    assert items.height == 2


# --------------------------------------------------------------------------- encodings


def test_latin1_catalog_raises_naming_the_line(tmp_path):
    content = "item_id,title\n1,Crème brûlée\n".encode("latin-1")
    msg = fails(tmp_path, "latin1.csv", content, "not valid UTF-8")
    assert "line 2" in msg and "0xe8" in msg and "re-encode" in msg


@pytest.mark.parametrize("chunk", [None, 7])
def test_mixed_encodings_raise_at_the_first_bad_line(tmp_path, monkeypatch, chunk):
    """Some lines UTF-8 (with multi-byte characters), one latin-1: the error names the latin-1 line.

    chunk=7 streams the file in 7-byte blocks, so multi-byte characters straddle block
    boundaries: they must not be reported as invalid, and the line count must stay exact.
    """
    if chunk:
        monkeypatch.setattr("tasks.ingest._CHUNK", chunk)
    lines = ["item_id,title", "1,Crème brûlée ☕", "2,naïve café", "3,Ünïcödé 🙂"]
    content = ("\n".join(lines) + "\n").encode() + "4,Crème\n".encode("latin-1") + "5,ok ✓\n".encode()
    msg = fails(tmp_path, "mixed.csv", content, "not valid UTF-8")
    assert "line 5" in msg, msg
    content_jsonl = jsonl({"item_id": "1", "title": "Crème"}) + b'{"item_id": "2", "title": "Cr\xe8me"}\n'
    assert "line 2" in fails(tmp_path, "mixed.jsonl", content_jsonl, "not valid UTF-8")


def test_valid_utf8_across_stream_blocks_is_accepted(tmp_path, monkeypatch):
    monkeypatch.setattr("tasks.ingest._CHUNK", 5)
    _, items, _ = ok(tmp_path, "u.csv", "item_id,title\n1,Crème brûlée ☕🙂\n2,日本語のタイトル\n".encode())
    assert texts(items) == {"1": "title: Crème brûlée ☕🙂", "2": "title: 日本語のタイトル"}


def test_utf16_raises_but_a_stray_nul_is_a_removed_control_character(tmp_path):
    fails(tmp_path, "u16.csv", "item_id,title\n1,a\n".encode("utf-16"), "UTF-16")
    _, items, _ = ok(tmp_path, "nul.csv", b"item_id,title\n1,a\x00b\n2,c\n")
    assert texts(items) == {"1": "title: ab", "2": "title: c"}


# --------------------------------------------------------------------------- columns


@pytest.mark.parametrize(
    "name,content,seen,hint",
    [
        ("tabs.csv", b"item_id\ttitle\tbrand\n1\ta\tb\n", r"'item_id\ttitle\tbrand'", "tab-separated"),
        ("semi.csv", b"item_id;title;brand\n1;a;b\n", "item_id;title;brand", "';'-separated"),
        ("semi.tsv", b"item_id;title\n1;a\n", "item_id;title", "';'-separated"),
    ],
)
def test_wrong_delimiter_names_the_columns_seen(tmp_path, name, content, seen, hint):
    msg = fails(tmp_path, name, content, "id column 'item_id' not found")
    assert f"available columns: {seen}" in msg and hint in msg


@pytest.mark.parametrize(
    "header,config",
    [("sku,title,brand", {}), ("ItemID,title,brand", {}), ("item_id,title,brand", {"id_column": "product_id"})],
)
def test_missing_or_misnamed_id_column_lists_the_available_columns(tmp_path, header, config):
    content = (header + "\n1,a,b\n").encode()
    msg = fails(tmp_path, "c.csv", content, "not found", **config)
    assert f"available columns: {header.replace(',', ', ')}" in msg
    assert repr(config.get("id_column", "item_id")) in msg


def test_configured_text_column_missing_lists_the_available_columns(tmp_path):
    msg = fails(tmp_path, "c.csv", b"item_id,name\n1,a\n", r"'title'.*not found", text_columns=["title"])
    assert "available columns: item_id, name" in msg


# --------------------------------------------------------------------------- ids


def test_mixed_type_json_ids_become_strings_and_equal_strings_collide(tmp_path):
    """1, "1" and 1.0 all read as the id "1": one survives, the others are duplicate_id (stated, not silent)."""
    rows = [
        {"item_id": 1, "title": "int one"},
        {"item_id": "1", "title": "string one"},
        {"item_id": 1.0, "title": "float one"},
        {"item_id": "a", "title": "letter"},
        {"item_id": None, "title": "null id"},
        {"item_id": True, "title": "bool id"},
        {"item_id": 12345678901234567890, "title": "beyond int64"},
        {"item_id": "0001", "title": "zero padded"},
    ]
    m, items, quarantine = ok(tmp_path, "ids.jsonl", jsonl(*rows))
    assert (m.input, m.valid, m.quarantined) == (8, 5, 3)
    assert sorted(items["item_id"]) == ["0001", "1", "12345678901234567890", "a", "true"]
    # the survivor of the three "1" rows is the one with the smallest text hash, whatever the row order
    candidates = {0: "title: int one", 1: "title: string one", 2: "title: float one"}
    survivor = min(candidates, key=lambda i: hashlib.sha256(candidates[i].encode()).hexdigest())
    assert texts(items)["1"] == candidates[survivor]
    assert reasons(quarantine) == {**{i: "duplicate_id" for i in candidates if i != survivor}, 4: "empty_id"}
    assert quarantine["item_id"].dtype == pl.String  # quarantined ids keep a string form


def test_duplicate_ids_keep_one_survivor_independent_of_row_order(tmp_path):
    rows = [
        ("7", "Blue mug"),
        ("8", "Red mug"),
        (" 7 ", "Blue mug, large"),  # same id once whitespace is stripped
        ("7", "Blue mug"),  # exact repeat
        ("9", "Green mug"),
        ("7\t", "Blue mug, small"),
    ]

    def write(name, order):
        with open(tmp_path / name, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["item_id", "title"])
            w.writerows(rows[i] for i in order)
        return tmp_path / name

    forward = run(write("f.csv", range(6)), tmp_path / "wf")
    backward = run(write("b.csv", reversed(range(6))), tmp_path / "wb")
    for m in (forward, backward):
        items, quarantine = assert_accounted(m)
        assert (m.input, m.valid, m.quarantined) == (6, 3, 3)
        assert set(quarantine["reason"]) == {"duplicate_id"}
        assert sorted(quarantine["item_id"].str.strip_chars()) == ["7", "7", "7"]
    assert pl.read_parquet(forward.items).equals(pl.read_parquet(backward.items))


def test_null_blank_and_whitespace_ids_and_texts_are_quarantined(tmp_path):
    rows = [
        {"item_id": "1", "title": "fine"},
        {"item_id": "2", "title": None},
        {"item_id": "3", "title": ""},
        {"item_id": "4", "title": "   \t\n  "},
        {"item_id": "5", "title": "&nbsp; &#32;"},  # only entities that decode to whitespace
        {"item_id": None, "title": "no id"},
        {"item_id": "", "title": "blank id"},
        {"item_id": " \t ", "title": "whitespace id"},
        {"item_id": "9", "title": None, "brand": "  ", "categories": []},
    ]
    m, items, quarantine = ok(tmp_path, "blanks.jsonl", jsonl(*rows))
    assert texts(items) == {"1": "title: fine"}
    assert reasons(quarantine) == {
        1: "empty_text", 2: "empty_text", 3: "empty_text", 4: "empty_text",
        5: "empty_id", 6: "empty_id", 7: "empty_id", 8: "empty_text",
    }
    # quarantine keeps the raw values
    raw = dict(zip(quarantine["row_number"], quarantine["title"]))
    assert raw[3] == "   \t\n  " and raw[1] is None


# --------------------------------------------------------------------------- texts


@pytest.mark.parametrize("fmt", ["csv", "jsonl", "parquet"])
def test_one_megabyte_text_is_truncated_not_lost(tmp_path, fmt):
    huge = "lorem ipsum " * (1_000_000 // 12)
    rows = [{"item_id": "big", "title": huge}, {"item_id": "small", "title": "tiny"}]
    if fmt == "csv":
        content = b"item_id,title\n" + b"".join(f"{r['item_id']},{r['title']}\n".encode() for r in rows)
    elif fmt == "jsonl":
        content = jsonl(*rows)
    else:
        content = pa.Table.from_pylist(rows)
    m, items, _ = ok(tmp_path, f"big.{fmt}", content, max_text_chars=500)
    text = texts(items)["big"]
    assert len(text) == 500 and text.startswith("title: lorem ipsum")
    assert items.filter(pl.col("item_id") == "big")["text_hash"][0] == hashlib.sha256(text.encode()).hexdigest()[:32]
    assert (m.input, m.valid, m.quarantined) == (2, 2, 0)


def test_control_characters_are_removed_and_the_row_kept(tmp_path):
    rows = [
        {"item_id": "1", "title": "Lip\x07stick\x1b[0m \x0bmatte\x7f", "brand": "Ac\x00me"},
        {"item_id": "2", "title": "\x01\x02\x03"},  # nothing left: empty_text, not dropped
        {"item_id": "3", "title": "zero\u200bwidth &amp; bidi\u202e ok"},
    ]
    m, items, quarantine = ok(tmp_path, "ctrl.jsonl", jsonl(*rows))
    assert texts(items)["1"] == "title: Lipstick[0m matte | brand: Acme"
    assert texts(items)["3"].startswith("title: zero") and "&" in texts(items)["3"]
    assert reasons(quarantine) == {1: "empty_text"}


def test_nested_json_is_stringified_not_lost(tmp_path):
    rows = [
        {"item_id": "1", "title": {"en": "Red lipstick", "fr": "Rouge"}, "categories": [["Beauty", "Lips"], ["Sale"]]},
        {"item_id": "2", "title": "Plain", "brand": {"name": "Acme", "tags": [1, 2]}},
        {"item_id": "3", "title": [], "brand": {}, "categories": [[]]},  # only empty containers: empty_text
    ]
    for name in ("n.jsonl", "n.json"):
        content = jsonl(*rows) if name.endswith("jsonl") else json.dumps(rows).encode()
        m, items, quarantine = ok(tmp_path, name, content)
        t = texts(items)
        assert '"en"' in t["1"] and "Red lipstick" in t["1"] and "Rouge" in t["1"]
        assert t["1"].endswith("categories: Beauty, Lips, Sale")
        assert t["2"].startswith("title: Plain | brand: {") and "Acme" in t["2"]
        assert reasons(quarantine) == {2: "empty_text"}


# --------------------------------------------------------------------------- parquet schemas


def test_parquet_int_id_struct_list_and_map_text_columns(tmp_path):
    table = pa.table(
        {
            "item_id": pa.array([1, 2, 3, 4, 5], pa.int64()),
            "title": pa.array([{"name": "Mug", "size": "L"}, {"name": None, "size": None}, None, {"name": "Cup", "size": None}, None],
                              pa.struct([("name", pa.string()), ("size", pa.string())])),
            "categories": pa.array([["Kitchen", "Mugs"], [], None, ["Kitchen"], None], pa.list_(pa.string())),
            "brand": pa.array([[("k", "v")], None, None, None, None], pa.map_(pa.string(), pa.string())),
        }
    )
    m, items, quarantine = ok(tmp_path, "s.parquet", table)
    t = texts(items)
    assert set(t) == {"1", "2", "4"}
    assert t["1"].startswith('title: {"name":"Mug","size":"L"} | brand: [') and t["1"].endswith("categories: Kitchen, Mugs")
    assert t["2"] == 'title: {"name":null,"size":null}'  # a struct of nulls is still a value (stringified)
    assert "null" not in t["4"].replace('"size":null', "")
    # a null struct is a missing value (not the text "null"); an empty list is an empty field
    assert reasons(quarantine) == {2: "empty_text", 4: "empty_text"}
    assert quarantine["item_id"].to_list() == ["3", "5"]


def test_parquet_missing_text_columns_and_undecodable_binary_raise(tmp_path):
    no_text = pa.table({"item_id": pa.array([1, 2], pa.int64()), "price": [1.5, 2.5]})
    msg = fails(tmp_path, "p.parquet", no_text, "none of the default text columns")
    assert "available columns: item_id, price" in msg
    binary = pa.table({"item_id": ["1", "2"], "title": pa.array([b"ok", b"\xff\xfe"], pa.binary())})
    assert "'title'" in fails(tmp_path, "b.parquet", binary, "invalid utf8")
    # valid UTF-8 in a binary column is text
    _, items, _ = ok(tmp_path, "b2.parquet", pa.table({"item_id": ["1"], "title": pa.array([b"ok"], pa.binary())}))
    assert texts(items) == {"1": "title: ok"}


# --------------------------------------------------------------------------- CLI: config and run spec


def semid_line(err: str) -> str:
    """The CLI's own message: exactly one line, the last one (Prefect's run log may precede it on stderr)."""
    lines = [line for line in err.splitlines() if line.startswith("semid:")]
    assert len(lines) == 1 and err.strip().splitlines()[-1] == lines[0], err
    return lines[0]


def cli(tmp_path: Path, capsys, *args: str, catalog: Path | None = None, out: Path | None = None) -> tuple[int, str]:
    if catalog is None:
        catalog = tmp_path / "shop.csv"
        catalog.write_text("item_id,title\n1,a\n2,b\n")
    out = out if out is not None else tmp_path / "out"
    code = main(["run", "--catalog", str(catalog), "--out", str(out), "--run-id", "r1", *args])
    err = capsys.readouterr().err
    return code, err


@pytest.mark.parametrize(
    "overrides,field",
    [
        (["model.codebok_size=8"], "model.codebok_size"),  # unknown key (typo)
        (["bogus=1"], "bogus"),
        (["model.codebook_size=0"], "model.codebook_size"),
        (["model.n_levels=0"], "model.n_levels"),
        (["fit.lr=-0.001"], "fit.lr"),
        (["fit.epochs=0", "fit.lr=-1"], "fit.epochs"),
        (["model.embed_dim=32"], "config: Value error, embed_dim=32 needs skip=false"),
    ],
)
def test_bad_config_exits_2_naming_the_field(tmp_path, capsys, overrides, field):
    args = [a for o in overrides for a in ("--set", o)]
    start = time.monotonic()
    code, err = cli(tmp_path, capsys, *args)
    assert code == 2, err
    assert "invalid configuration" in err and field in err
    assert "Traceback" not in err and len(err.strip().splitlines()) <= 4
    assert not (tmp_path / "out").exists(), "config errors stop before anything is created"
    assert time.monotonic() - start < 60  # never reaches embedding (a generous bound, not a timing test)


def test_bad_config_file_exits_2(tmp_path, capsys):
    cfg = tmp_path / "c.json"
    cfg.write_text('{"model": {"n_levels": 0}, "nope": {}}')
    code, err = cli(tmp_path, capsys, "--config", str(cfg))
    assert code == 2 and "model.n_levels" in err and "nope" in err
    cfg.write_text("{not json")
    code, err = cli(tmp_path, capsys, "--config", str(cfg))
    assert code == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1
    code, err = cli(tmp_path, capsys, "--config", str(tmp_path / "missing.json"))
    assert code == 2 and "missing.json" in err


@pytest.mark.parametrize(
    "args",
    [["--name", "../x"], ["--name", "/abs"], ["--name", "a/b"], ["--name", ".."], ["--run-id", "../r"], ["--run-id", "a/../../b"]],
)
def test_names_that_escape_the_output_prefix_exit_2(tmp_path, capsys, args):
    code, err = cli(tmp_path, capsys, *args)
    assert code == 2, err
    assert "not allowed" in err and "RunSpecError" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists() and not list(tmp_path.rglob("_SUCCESS"))
    assert not (tmp_path.parent / "x").exists() and not Path("/abs").exists()


def test_out_under_a_file_exits_2_with_a_readable_message(tmp_path, capsys):
    blocker = tmp_path / "file.txt"
    blocker.write_text("I am a file")
    for out in (blocker / "sub", blocker / "sub" / "deeper", blocker):
        code, err = cli(tmp_path, capsys, out=out)
        assert code == 2, err
        assert "--out" in err and "is a file, not a directory" in err and "Traceback" not in err
        assert blocker.read_text() == "I am a file"
    assert not published_files(tmp_path)


def test_filesystem_path_errors_from_inside_the_run_map_to_exit_2(tmp_path, capsys, monkeypatch, prefect_api):
    """If an --out problem is only found inside the flow (the pre-check skipped), it is still exit 2, one line."""
    monkeypatch.setattr("flows.cli._check_out", lambda out: None)
    blocker = tmp_path / "file.txt"
    blocker.write_text("x")
    code, err = cli(tmp_path, capsys, out=blocker / "sub")
    assert code == 2, err
    line = semid_line(err)
    assert ("NotADirectoryError" in line or "FileExistsError" in line) and "file.txt" in line
    assert "run failed" not in err


def test_catalog_too_large_for_the_id_space_exits_2_before_embedding(tmp_path, capsys, prefect_api):
    catalog = tmp_path / "shop.csv"
    with open(catalog, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["item_id", "title"])
        w.writerows((f"SKU{i:04d}", f"Product number {i}") for i in range(300))
        w.writerow(["", "no id, quarantined: not counted against capacity"])
    out = tmp_path / "out"
    code, err = cli(
        tmp_path, capsys, "--set", "model.codebook_size=2", "--set", "model.n_levels=1", catalog=catalog, out=out
    )
    assert code == 2, err
    line = semid_line(err)
    assert "IdSpaceError" in line and "300 IDs are needed" in line and "= 4 IDs" in line and "codebook_size" in line
    assert not (out / "_cache").exists(), "no embedding happened"
    assert not list(out.rglob("embed")) and not list(out.rglob("*.npy"))
    assert not published_files(out) and not (out / "shop" / "r1").exists()


# --------------------------------------------------------------------------- one full run on a messy catalog


@pytest.mark.slow
def test_messy_catalog_end_to_end_accounts_for_every_row(tmp_path, capsys, prefect_api):
    from tasks.sample_catalog import generate_rows
    from tests.flows.conftest import TINY

    rows: list[dict] = [dict(r) for r in generate_rows(n=200, seed=7)]
    rows[0]["item_id"] = 12345  # a JSON number id
    rows[1]["title"] = {"en": rows[1]["title"], "de": "Titel"}  # nested
    rows[2]["description"] = "long text " * 100_000  # 1 MB
    rows[3]["title"] = "Control\x07chars\x1b and &amp; entities"
    bad = [
        {**rows[4], "item_id": "  "},  # empty_id
        {**rows[5], "item_id": None},  # empty_id
        {"item_id": "EMPTY1", "title": "\x01\x02", "brand": "", "categories": [], "description": None},  # empty_text
        {**rows[6]},  # duplicate_id (same text: the earlier row survives)
        {**rows[0], "item_id": "12345"},  # collides with the number 12345: duplicate_id
    ]
    catalog = tmp_path / "messy.jsonl"
    catalog.write_bytes(jsonl(*rows, *bad))
    config = tmp_path / "tiny.json"
    config.write_text(json.dumps(TINY))
    out = tmp_path / "out"
    code = main(["run", "--catalog", str(catalog), "--out", str(out), "--run-id", "r1", "--config", str(config)])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    prefix = out / "messy" / "r1"
    assert (prefix / "_SUCCESS").exists()
    manifest = json.loads((prefix / "manifest.json").read_text())
    n_input = len(rows) + len(bad)
    assert manifest["counts"] == {"input": n_input, "ided": n_input - 5, "quarantined": 5}
    assert manifest["quarantine_reasons"] == {"duplicate_id": 2, "empty_id": 2, "empty_text": 1}
    assert f"input {n_input} = ided {n_input - 5} + quarantined 5" in captured.out
    ids = pq.read_table(prefix / "semantic_ids").to_pydict()
    quarantine = pq.read_table(prefix / "quarantine").to_pydict()
    assert len(set(ids["item_id"])) == len(ids["item_id"]) == n_input - 5
    assert len(set(ids["sid"])) == len(ids["sid"])
    assert sorted(quarantine["row_number"]) == list(range(len(rows), n_input))
    assert "12345" in ids["item_id"] and rows[2]["item_id"] in ids["item_id"]

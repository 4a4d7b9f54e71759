import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tasks.evaluate import InteractionsError, Sequences, read_interactions
from tasks.evaluate.interactions import restrict_to_known


def test_user_sequence_text(tmp_path):
    p = tmp_path / "user_sequence.txt"
    p.write_text("u1 a b c\n\nu2 c d e f\n")
    s = read_interactions(str(p))
    assert s.users == ["u1", "u2"] and s.items == [["a", "b", "c"], ["c", "d", "e", "f"]]


def test_beauty_file_reads():
    s = read_interactions("../shared/data/amazon_beauty/user_sequence.txt")
    assert len(s.users) == 22363 and s.n_interactions == 198502


@pytest.mark.parametrize("suffix", [".parquet", ".csv"])
def test_table_is_ordered_by_timestamp_per_user(tmp_path, suffix):
    t = pa.table({"user_id": ["u2", "u1", "u1", "u2", "u1"], "item_id": ["x", "b", "a", "y", "c"], "timestamp": [5, 20, 10, 1, 30]})
    p = tmp_path / f"inter{suffix}"
    if suffix == ".parquet":
        pq.write_table(t, p)
    else:
        p.write_text("user_id,item_id,timestamp\n" + "\n".join(f"{u},{i},{ts}" for u, i, ts in zip(*[t[c].to_pylist() for c in t.column_names])))
    s = read_interactions(str(p))
    assert s.users == ["u2", "u1"]  # order of first appearance
    assert s.items == [["y", "x"], ["a", "b", "c"]]


@pytest.mark.parametrize(
    "name, content, match",
    [
        ("empty.txt", b"", "no user sequences"),
        ("lonely.txt", b"u1 a b\nu2\n", r"lonely.txt:2: user 'u2' has no items"),
        ("dup.txt", b"u1 a b\nu1 c d\n", "already appeared on line 1"),
        ("bin.txt", b"u1 a\x00b\n", "binary"),
        ("latin.txt", "u1 caf\xe9\n".encode("latin-1"), "not UTF-8"),
        ("cols.csv", b"user,item\nu1,a\n", "missing column"),
        ("nulls.csv", b"user_id,item_id,timestamp\nu1,a,1\nu1,,2\n", "null"),
        ("text_ts.csv", b"user_id,item_id,timestamp\nu1,a,yesterday\n", "timestamp"),
        ("broken.parquet", b"PAR1 not really", "not a readable Parquet"),
    ],
)
def test_bad_files_get_a_clear_error(tmp_path, name, content, match):
    p = tmp_path / name
    p.write_bytes(content)
    with pytest.raises(InteractionsError, match=match):
        read_interactions(str(p))


def test_missing_file(tmp_path):
    with pytest.raises(InteractionsError, match="not found"):
        read_interactions(str(tmp_path / "nope.txt"))
    assert issubclass(InteractionsError, ValueError)


def test_unknown_items_and_short_users_are_reported():
    s = Sequences(users=["u1", "u2", "u3"], items=[["a", "b", "zz", "c"], ["a", "yy", "b"], ["c", "b", "a"]])
    kept, report = restrict_to_known(s, {"a", "b", "c"})
    assert kept.users == ["u1", "u3"] and kept.items[0] == ["a", "b", "c"]
    assert report.unknown_interactions == 2 and report.unknown_items == 2
    assert report.unknown_examples == ["yy", "zz"] and report.short_users == 1

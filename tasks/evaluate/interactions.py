"""User interaction sequences: reading them, and keeping only items a run has IDs for.

Two input formats, because that is what recommendation data comes as:

* ``user_sequence.txt`` (P5 / TIGER / IDGenRec): one line per user, the user id
  then the user's items in time order, separated by whitespace.
* a table (``.parquet``, ``.csv``, ``.tsv``) with ``user_id``, ``item_id`` and
  ``timestamp``; each user's items are ordered by timestamp (ties keep file order).

A bad file is a :class:`InteractionsError` with the reason and, where there is
one, the line; the CLI turns it into exit code 2. Items the run has no ID for
are never dropped silently: :func:`restrict_to_known` returns what it dropped,
and the evaluation reports it.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from pathlib import PurePosixPath

import numpy as np

from tasks import storage
from tasks.errors import BadInput

MIN_ITEMS = 3  # train needs >= 1 item before the validation item, which comes before the test item
_TABLE_COLUMNS = ("user_id", "item_id", "timestamp")


class InteractionsError(BadInput):
    """The interactions file cannot be read as user sequences (the message says why and where)."""


@dataclass(frozen=True)
class Sequences:
    """Each user's items in time order (item ids as strings)."""

    users: list[str]
    items: list[list[str]]

    def __post_init__(self) -> None:
        if len(self.users) != len(self.items):
            raise ValueError(f"{len(self.users)} users but {len(self.items)} sequences")

    @property
    def n_interactions(self) -> int:
        return sum(len(s) for s in self.items)


@dataclass(frozen=True)
class DroppedReport:
    """What :func:`restrict_to_known` removed, so the evaluation can say it."""

    unknown_interactions: int = 0  # interactions whose item has no ID in the run
    unknown_items: int = 0  # distinct such items
    unknown_examples: list[str] = field(default_factory=list)  # a few of them, sorted
    short_users: int = 0  # users left with fewer than MIN_ITEMS items (cannot be split)

    def to_dict(self) -> dict[str, object]:
        return {
            "unknown_interactions": self.unknown_interactions,
            "unknown_items": self.unknown_items,
            "unknown_examples": list(self.unknown_examples),
            "short_users": self.short_users,
            "min_items_per_user": MIN_ITEMS,
        }


def _suffix(uri: str) -> str:
    return PurePosixPath(uri.split("?")[0]).suffix.lower()


def read_interactions(uri: str) -> Sequences:
    """Read a ``user_sequence.txt``-style file or a (user_id, item_id, timestamp) table, local or s3://."""
    try:
        raw = storage.read_bytes(uri)
    except FileNotFoundError as e:
        raise InteractionsError(f"interactions file not found: {uri}") from e
    except IsADirectoryError as e:
        raise InteractionsError(f"interactions path is a directory, expected a file: {uri}") from e
    suffix = _suffix(uri)
    if suffix in (".parquet", ".pq"):
        return _from_table(_read_parquet(raw, uri), uri)
    if suffix in (".csv", ".tsv"):
        return _from_table(_read_csv(raw, uri, separator="\t" if suffix == ".tsv" else ","), uri)
    return parse_sequence_text(raw, source=uri)


def parse_sequence_text(raw: bytes, *, source: str = "<bytes>") -> Sequences:
    """Parse the ``user item item ...`` per-line format (blank lines are skipped)."""
    if b"\x00" in raw[:65536]:
        raise InteractionsError(f"{source}: binary data, expected text lines 'user item item ...' (or use .parquet/.csv)")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise InteractionsError(f"{source}: not UTF-8 text ({e.reason} at byte {e.start})") from e
    users: list[str] = []
    items: list[list[str]] = []
    seen: dict[str, int] = {}
    for lineno, line in enumerate(text.splitlines(), start=1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) < 2:
            raise InteractionsError(f"{source}:{lineno}: user {parts[0]!r} has no items (expected 'user item item ...')")
        if parts[0] in seen:
            raise InteractionsError(f"{source}:{lineno}: user {parts[0]!r} already appeared on line {seen[parts[0]]}")
        seen[parts[0]] = lineno
        users.append(parts[0])
        items.append(parts[1:])
    if not users:
        raise InteractionsError(f"{source}: no user sequences found (expected lines 'user item item ...')")
    return Sequences(users=users, items=items)


def _read_parquet(raw: bytes, uri: str):
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        return pq.read_table(pa.BufferReader(raw))
    except (pa.ArrowException, OSError) as e:
        raise InteractionsError(f"{uri}: not a readable Parquet file ({e})") from e


def _read_csv(raw: bytes, uri: str, *, separator: str):
    import pyarrow as pa
    import pyarrow.csv as pacsv

    try:
        return pacsv.read_csv(
            io.BytesIO(raw),
            parse_options=pacsv.ParseOptions(delimiter=separator),
            convert_options=pacsv.ConvertOptions(
                column_types={"user_id": pa.string(), "item_id": pa.string()}, strings_can_be_null=True, null_values=[""]
            ),
        )
    except (pa.ArrowException, OSError) as e:
        raise InteractionsError(f"{uri}: not a readable {'TSV' if separator == chr(9) else 'CSV'} file ({e})") from e


def _from_table(table, uri: str) -> Sequences:
    import pyarrow as pa
    import pyarrow.compute as pc

    missing = [c for c in _TABLE_COLUMNS if c not in table.column_names]
    if missing:
        raise InteractionsError(f"{uri}: missing column(s) {missing}; a table needs {list(_TABLE_COLUMNS)} (found {table.column_names})")
    if table.num_rows == 0:
        raise InteractionsError(f"{uri}: no interactions (0 rows)")
    for c in _TABLE_COLUMNS:
        nulls = table[c].null_count
        if nulls:
            raise InteractionsError(f"{uri}: column {c!r} has {nulls} null value(s)")
    for c in ("user_id", "item_id"):
        blank = pc.sum(pc.equal(pc.utf8_trim_whitespace(pc.cast(table[c], pa.string())), "")).as_py()
        if blank:
            raise InteractionsError(f"{uri}: column {c!r} has {blank} empty value(s)")
    ts = table["timestamp"]
    if not (pa.types.is_integer(ts.type) or pa.types.is_floating(ts.type) or pa.types.is_temporal(ts.type)):
        raise InteractionsError(f"{uri}: column 'timestamp' must be numeric or a date/time, got {ts.type}")
    if pa.types.is_floating(ts.type) and not pc.all(pc.is_finite(ts)).as_py():
        raise InteractionsError(f"{uri}: column 'timestamp' has non-finite values")
    users = np.asarray(pc.cast(table["user_id"], pa.string()).to_pylist(), dtype=object)
    item_ids = np.asarray(pc.cast(table["item_id"], pa.string()).to_pylist(), dtype=object)
    t = ts.cast(pa.int64()) if pa.types.is_temporal(ts.type) else ts
    t = np.asarray(t.to_numpy(zero_copy_only=False), dtype=np.float64)
    uniq, inverse = np.unique(users.astype(str), return_inverse=True)
    order = np.lexsort((np.arange(len(t)), t, inverse))  # by user, then time, then file order
    inv_sorted = inverse[order]
    bounds = np.flatnonzero(np.diff(inv_sorted)) + 1
    groups = np.split(order, bounds)
    # Users in order of first appearance in the file: the output does not depend on user-id sort order.
    first_row = np.array([g.min() for g in groups])
    out_users, out_items = [], []
    for gi in np.argsort(first_row, kind="stable"):
        g = groups[gi]
        out_users.append(str(uniq[inverse[g[0]]]))
        out_items.append([str(x) for x in item_ids[g]])
    return Sequences(users=out_users, items=out_items)


def restrict_to_known(sequences: Sequences, known_items: set[str] | frozenset[str], *, min_items: int = MIN_ITEMS) -> tuple[Sequences, DroppedReport]:
    """Drop interactions with items the run has no ID for, then users left with fewer than ``min_items`` (too short to split).

    Returns the kept sequences and a report of everything dropped (never silent).
    """
    unknown_counts: dict[str, int] = {}
    users, items = [], []
    short = 0
    for user, seq in zip(sequences.users, sequences.items):
        kept = []
        for it in seq:
            if it in known_items:
                kept.append(it)
            else:
                unknown_counts[it] = unknown_counts.get(it, 0) + 1
        if len(kept) < min_items:
            short += 1
            continue
        users.append(user)
        items.append(kept)
    report = DroppedReport(
        unknown_interactions=sum(unknown_counts.values()),
        unknown_items=len(unknown_counts),
        unknown_examples=sorted(unknown_counts)[:5],
        short_users=short,
    )
    return Sequences(users=users, items=items), report

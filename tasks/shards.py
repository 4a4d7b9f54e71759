"""Shard files that stages exchange through storage: rows split by a key, one folder per key.

Workers write ``<root>/<key:05d>/<name>.parquet``; the task that owns a key reads its
folder. Names are deterministic (a retried batch overwrites its own files), so a
retry never duplicates rows.
"""

from __future__ import annotations

import hashlib

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from tasks import storage


def key_dir(root: str, key: int) -> str:
    return storage.join(root, f"{key:05d}")


def batch_name(first_item: object) -> str:
    """File name of one batch's rows, from its first row's key (unique within a stage's batches)."""
    return hashlib.sha1(str(first_item).encode()).hexdigest()[:20]


def write_split(table: pa.Table, keys: np.ndarray, *, root: str, name: str) -> None:
    """One file per key present: ``<root>/<key>/<name>.parquet``."""
    for key in np.unique(keys).tolist():
        storage.write_parquet(table.filter(pa.array(keys == key)), storage.join(key_dir(root, key), f"{name}.parquet"))


def read_dir(uri: str, schema: pa.Schema) -> pa.Table:
    """Every file under ``uri`` as one table of ``schema`` (empty when there is none)."""
    files = storage.list_parquet(uri)
    if not files:
        return schema.empty_table()
    fs, _ = storage.filesystem(uri)
    return pa.concat_tables([pq.read_table(storage.filesystem(f)[1], filesystem=fs, schema=schema) for f in files])


def parquet_rows(files: list[str]) -> int:
    """Rows in Parquet files, from their footers (nothing else is read)."""
    return sum(pq.ParquetFile(storage.filesystem(f)[1], filesystem=storage.filesystem(f)[0]).metadata.num_rows for f in files)

"""One place for local-or-S3 IO.

Every task addresses data by URI (a local path or ``s3://bucket/key``). S3
credentials and the endpoint come only from the standard AWS chain
(``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``/``AWS_ENDPOINT_URL``/profiles),
never from our config, so they cannot leak into manifests or logs.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import posixpath
import shutil
from typing import Any, Iterator

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq


_COPY_CHUNK = 8 << 20


class StorageError(RuntimeError):
    """A read or write against the output or input store failed."""


def is_s3(uri: str) -> bool:
    return uri.startswith("s3://")


_AWS_ENV = ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_ACCESS_KEY_ID", "AWS_PROFILE", "AWS_DEFAULT_REGION", "AWS_REGION")


@functools.lru_cache(maxsize=8)
def _s3(env_key: tuple[str | None, ...]) -> fsspec.AbstractFileSystem:
    import s3fs

    # s3fs/botocore read AWS_ENDPOINT_URL and credentials from the environment; the cache key
    # is that environment, so a changed endpoint or identity gets a fresh client.
    return s3fs.S3FileSystem(skip_instance_cache=True)


def filesystem(uri: str) -> tuple[fsspec.AbstractFileSystem, str]:
    """Return ``(fs, path)``; for S3 the path has no scheme (``bucket/key``)."""
    if is_s3(uri):
        fs = _s3(tuple(os.environ.get(k) for k in _AWS_ENV))
        fs.invalidate_cache()  # listings must reflect what other processes wrote
        return fs, uri[len("s3://"):].rstrip("/")
    fs = fsspec.filesystem("file")
    return fs, os.path.abspath(uri)


def absolute(uri: str) -> str:
    """The URI as recorded in manifests: S3 as given (no trailing slash), local paths absolute, so a run's
    record still names the same file when it is read from another working directory."""
    return uri.rstrip("/") if is_s3(uri) else os.path.abspath(uri)


def join(uri: str, *parts: str) -> str:
    """Join path parts under a URI (posix separators for S3, OS ones locally)."""
    if is_s3(uri):
        return posixpath.join(uri.rstrip("/"), *parts)
    return os.path.join(uri, *parts)


def exists(uri: str) -> bool:
    fs, path = filesystem(uri)
    return fs.exists(path)


def _for_writing(uri: str) -> tuple[fsspec.AbstractFileSystem, str]:
    """``filesystem(uri)`` with the parent folders made on local disk (S3 has no folders to make)."""
    fs, path = filesystem(uri)
    if not is_s3(uri):
        os.makedirs(os.path.dirname(path), exist_ok=True)
    return fs, path


def write_bytes(uri: str, data: bytes) -> None:
    fs, path = _for_writing(uri)
    with fs.open(path, "wb") as f:
        f.write(data)


def read_bytes(uri: str) -> bytes:
    fs, path = filesystem(uri)
    with fs.open(path, "rb") as f:
        return f.read()


def write_json(uri: str, obj: Any) -> None:
    write_bytes(uri, (json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n").encode())


def read_json(uri: str) -> Any:
    return json.loads(read_bytes(uri).decode())


def write_parquet(table: pa.Table, uri: str) -> None:
    """Write one Parquet file at ``uri`` (parent folders created locally)."""
    fs, path = _for_writing(uri)
    pq.write_table(table, path, filesystem=fs, compression="zstd")


class _CountingWriter:
    def __init__(self, writer: pq.ParquetWriter) -> None:
        self.writer, self.rows = writer, 0

    def write_table(self, table: pa.Table) -> None:
        self.writer.write_table(table)
        self.rows += table.num_rows


@contextlib.contextmanager
def parquet_writer(uri: str, schema: pa.Schema) -> Iterator[_CountingWriter]:
    """A Parquet file written table by table (streamed to the store; S3 uploads in parts); ``.rows`` counts them."""
    fs, path = _for_writing(uri)
    with fs.open(path, "wb") as f, pq.ParquetWriter(f, schema, compression="zstd") as writer:
        yield _CountingWriter(writer)


def list_parquet(prefix_uri: str) -> list[str]:
    """Sorted URIs of the ``*.parquet`` files directly under a prefix."""
    fs, path = filesystem(prefix_uri)
    if not fs.exists(path):
        return []
    names = sorted(p for p in fs.ls(path, detail=False) if p.endswith(".parquet"))
    if is_s3(prefix_uri):
        return ["s3://" + p for p in names]
    return names


def read_parquet(prefix_or_file_uri: str) -> pa.Table:
    """Read a Parquet file, or every ``*.parquet`` under a prefix, into one table."""
    fs, path = filesystem(prefix_or_file_uri)
    if path.endswith(".parquet"):
        return pq.read_table(path, filesystem=fs)
    files = list_parquet(prefix_or_file_uri)
    if not files:
        raise StorageError(f"no parquet files under {prefix_or_file_uri}")
    tables = [pq.read_table(filesystem(f)[1], filesystem=fs) for f in files]
    return pa.concat_tables(tables, promote_options="default")


def remove(uri: str) -> None:
    fs, path = filesystem(uri)
    if fs.exists(path):
        fs.rm(path, recursive=True)


def remove_if_empty(uri: str) -> None:
    fs, path = filesystem(uri)
    if fs.exists(path) and not fs.ls(path, detail=False):
        fs.rm(path, recursive=True)


def copy_tree(src_uri: str, dst_uri: str) -> list[str]:
    """Copy every file under ``src_uri`` to the same relative place under ``dst_uri``; returns the relative paths.

    Within one store the store copies (S3 CopyObject, server-side; a local file copy),
    so no byte passes through this process. Across stores (local <-> S3) it streams.
    """
    src_fs, src = filesystem(src_uri)
    files = sorted(src_fs.find(src))
    rels = [posixpath.relpath(f, src) for f in files]
    same_store = is_s3(src_uri) == is_s3(dst_uri)
    for f, rel in zip(files, rels):
        dst_fs, target = _for_writing(join(dst_uri, *rel.split("/")))
        if same_store:
            src_fs.copy(f, target)
        else:
            with src_fs.open(f, "rb") as fh, dst_fs.open(target, "wb") as out:
                shutil.copyfileobj(fh, out, _COPY_CHUNK)  # streamed: a part never sits whole in memory
    return rels


def arrow_filesystem(uri: str) -> tuple[Any, str]:
    """``(pyarrow filesystem, path)`` for libraries that take one (Ray Train's storage): S3 through s3fs, local as is."""
    import pyarrow.fs as pafs

    fs, path = filesystem(uri)
    if is_s3(uri):
        return pafs.PyFileSystem(pafs.FSSpecHandler(fs)), path
    os.makedirs(path, exist_ok=True)
    return pafs.LocalFileSystem(), path


def polars_storage_options(uri: str) -> dict[str, str] | None:
    """object_store options for polars, built from the standard AWS environment."""
    if not is_s3(uri):
        return None
    opts: dict[str, str] = {}
    env_map = {
        "AWS_ACCESS_KEY_ID": "aws_access_key_id",
        "AWS_SECRET_ACCESS_KEY": "aws_secret_access_key",
        "AWS_SESSION_TOKEN": "aws_session_token",
        "AWS_DEFAULT_REGION": "aws_region",
        "AWS_REGION": "aws_region",
        "AWS_ENDPOINT_URL": "aws_endpoint_url",
        "AWS_ENDPOINT_URL_S3": "aws_endpoint_url",
    }
    for env, key in env_map.items():
        if os.environ.get(env):
            opts[key] = os.environ[env]
    if opts.get("aws_endpoint_url", "").startswith("http://"):
        opts["aws_allow_http"] = "true"
    return opts or None

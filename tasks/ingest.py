"""Ingest: read a catalog, validate it, build each item's text, quarantine bad rows.

A plain function (no Prefect/Ray); the flow wraps it.

Input: CSV, TSV (quote-aware, RecBole atomic files included), JSON Lines, a JSON
array of objects, or Parquet; a local path or ``s3://``. Every value is read as
a string (ids such as ``0001`` keep their form; ids of mixed JSON types become
strings; nested JSON/Parquet values are JSON-encoded). RecBole ``name:type``
header suffixes (``item_id:token``, ``categories:token_seq``) are stripped.

Output under ``<work>/ingest/``:

``items.parquet``
    ``item_id`` (surrounding whitespace stripped), ``text``, ``text_hash``; sorted by item_id.
``quarantine.parquet``
    the rejected rows with every input column unchanged (strings), plus
    ``reason`` (``empty_id`` | ``empty_text`` | ``duplicate_id``) and
    ``row_number`` (0-based position of the record among the data records).

Rules:

* item text: ``"title: X | brand: Y | categories: A, B"`` over the text columns
  (config, else those of title/brand/categories/description present), fields
  that are empty after normalisation left out. List-like fields (``categories``,
  ``tags``..., RecBole ``token_seq``, nested lists) lose their quoting:
  ``'Beauty', "Women's"`` -> ``Beauty, Women's`` (duplicates dropped).
* normalisation (``normalize_text``): HTML entities unescaped (twice, for
  double-escaped catalog text such as ``&amp;#8482``), control characters
  removed, whitespace collapsed, trimmed. Then the text is cut to ``max_text_chars``.
* ``text_hash``: the first 16 bytes (32 hex chars) of sha256 over the UTF-8 text.
* duplicates: among rows with the same item_id the survivor is the one with the
  smallest ``text_hash``, ties by row number. Ties mean identical item text, so
  ``items.parquet`` does not depend on the file's row order.
"""

from __future__ import annotations

import hashlib
import html
import json
import re
from typing import Any, Iterable

import polars as pl
import pyarrow as pa

from tasks import storage
from tasks.config import IngestConfig
from tasks.manifest import (
    STAGE_RECORD,
    StageManifest,
    Stopwatch,
    hash_of,
    load_completed,
    record_completed,
    stage_dir,
)

STAGE = "ingest"
DEFAULT_TEXT_COLUMNS = ("title", "brand", "categories", "description")
LIST_LIKE_NAMES = frozenset({"categories", "category", "tags", "genres", "genre", "keywords", "labels"})
REASONS = ("empty_id", "empty_text", "duplicate_id")
HASH_HEX_CHARS = 32  # 16 bytes of sha256

_EXTENSIONS = {
    ".csv": "csv",
    ".tsv": "tsv",
    ".tab": "tsv",
    ".item": "tsv",
    ".inter": "tsv",
    ".user": "tsv",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".json": "json",
    ".parquet": "parquet",
    ".pq": "parquet",
}
# RecBole atomic-file header suffixes: "item_id:token", "categories:token_seq".
_RECBOLE_TYPES = frozenset({"token", "token_seq", "float", "float_seq"})
_ROW = "__semid_row"
_CHUNK = 8 << 20


class IngestError(ValueError):
    """The catalog cannot be ingested (missing, empty, unparseable, no id column...)."""


# --------------------------------------------------------------------------- helpers


def _one_line(exc: BaseException | str, limit: int = 300) -> str:
    text = " ".join(str(exc).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def detect_format(uri: str, configured: str = "auto") -> str:
    if configured != "auto":
        return configured
    name = uri.rstrip("/").rsplit("/", 1)[-1].lower()
    for ext, fmt in _EXTENSIONS.items():
        if name.endswith(ext):
            return fmt
    raise IngestError(
        f"cannot tell the format of {uri} from its extension; set ingest.format to one of csv, tsv, jsonl, json, parquet"
    )


def _hash_file(uri: str, fmt: str) -> str:
    """sha256 of the file bytes (streamed); also rejects missing, empty and binary text files."""
    fs, path = storage.filesystem(uri)
    try:
        if not fs.exists(path) or fs.isdir(path):
            raise IngestError(f"catalog not found: {uri}")
        h = hashlib.sha256()
        size = 0
        head = b""
        with fs.open(path, "rb") as f:
            while chunk := f.read(_CHUNK):
                if not head:
                    head = chunk[:8192]
                size += len(chunk)
                h.update(chunk)
    except IngestError:
        raise
    except Exception as exc:  # permissions, network, ...
        raise IngestError(f"cannot read catalog {uri}: {_one_line(exc)}") from exc
    if size == 0 or (fmt != "parquet" and not head.strip()):
        raise IngestError(f"catalog is empty: {uri}")
    if fmt != "parquet" and b"\x00" in head:
        raise IngestError(f"catalog {uri} looks binary (NUL bytes), not {fmt} text; check the file or ingest.format")
    return h.hexdigest()


def _strip_type_suffixes(names: list[str]) -> list[str]:
    """``item_id:token`` -> ``item_id`` unless that would make two names collide."""
    cleaned = []
    for n in names:
        base, sep, typ = n.strip().rpartition(":")
        cleaned.append(base if sep and base and typ in _RECBOLE_TYPES else n.strip())
    if len(set(cleaned)) != len(cleaned):
        return [n.strip() for n in names]
    return cleaned


def _stringify_json_value(v: Any) -> str | None:
    if v is None:
        return None
    if isinstance(v, str):
        return v
    return json.dumps(v, ensure_ascii=False)


def _ordered_union(keys: Iterable[Iterable[str]]) -> list[str]:
    seen: dict[str, None] = {}
    for ks in keys:
        for k in ks:
            seen.setdefault(k, None)
    return list(seen)


def _stringify_frame(lf: pl.LazyFrame) -> tuple[pl.LazyFrame, set[str]]:
    """Cast every column to String; nested values become JSON. Returns the nested-list columns too."""
    schema = lf.collect_schema()
    exprs, lists = [], set()
    for name, dtype in schema.items():
        col = pl.col(name)
        if isinstance(dtype, pl.Struct):
            exprs.append(col.struct.json_encode().alias(name))
        elif isinstance(dtype, (pl.List, pl.Array)):
            # json_encode exists for structs only: wrap, encode, cut the {"name": ... } wrapper off.
            prefix = len("{" + json.dumps(name, ensure_ascii=False) + ":")
            enc = pl.struct(col).struct.json_encode().str.slice(prefix).str.head(-1)
            exprs.append(pl.when(col.is_null()).then(None).otherwise(enc).alias(name))
            lists.add(name)
        elif dtype == pl.String:
            exprs.append(col)
        else:
            exprs.append(col.cast(pl.String).alias(name))
    return lf.select(exprs), lists


def _scan(uri: str, fmt: str) -> tuple[pl.LazyFrame, set[str]]:
    """A lazy all-String frame over the catalog, plus the names of list-valued columns."""
    opts = storage.polars_storage_options(uri)
    if fmt in ("csv", "tsv"):
        lf = pl.scan_csv(
            uri,
            separator="," if fmt == "csv" else "\t",
            quote_char='"',
            infer_schema=False,
            storage_options=opts,
            raise_if_empty=True,
            empty_string_is_null=False,
            glob=False,
        )
        return lf, set()
    if fmt == "jsonl":
        # Discover every key (not only the first 100 rows'), then read all values as
        # String: polars keeps the raw JSON text of numbers/booleans/nested values.
        try:
            names = list(pl.scan_ndjson(uri, infer_schema_length=None, storage_options=opts).collect_schema())
        except pl.exceptions.PolarsError:
            names = _jsonl_keys(uri)
        lf = pl.scan_ndjson(uri, schema={n: pl.String for n in names}, storage_options=opts)
        return lf, set()
    if fmt == "json":
        fs, path = storage.filesystem(uri)
        with fs.open(path, "rb") as f:
            try:
                data = json.load(f)
            except (json.JSONDecodeError, UnicodeDecodeError) as exc:
                raise IngestError(f"cannot parse {uri} as JSON: {_one_line(exc)}") from exc
        if isinstance(data, dict):
            # {"items": [...]} / {"data": [...]}: a single list of records under one key.
            lists = [v for v in data.values() if isinstance(v, list)]
            if len(lists) != 1:
                raise IngestError(f"{uri}: expected a JSON array of objects, got an object with keys {sorted(data)[:10]}")
            data = lists[0]
        if not isinstance(data, list):
            raise IngestError(f"{uri}: expected a JSON array of objects, got {type(data).__name__}")
        if not data:
            raise IngestError(f"catalog is empty: {uri} (an empty JSON array)")
        bad = next((i for i, r in enumerate(data) if not isinstance(r, dict)), None)
        if bad is not None:
            raise IngestError(f"{uri}: element {bad} of the JSON array is {type(data[bad]).__name__}, not an object")
        names = _ordered_union(r.keys() for r in data)
        list_cols = {n for n in names if any(isinstance(r.get(n), list) for r in data)}
        cols = {n: [_stringify_json_value(r.get(n)) for r in data] for n in names}
        del data
        return pl.DataFrame(cols, schema={n: pl.String for n in names}).lazy(), list_cols
    if fmt == "parquet":
        return _stringify_frame(pl.scan_parquet(uri, storage_options=opts))
    raise IngestError(f"unsupported format {fmt!r}")


def _jsonl_keys(uri: str) -> list[str]:
    fs, path = storage.filesystem(uri)
    keys: dict[str, None] = {}
    with fs.open(path, "rt", encoding="utf-8") as f:
        for i, line in enumerate(f):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as exc:
                raise IngestError(f"cannot parse {uri} as JSON Lines: line {i + 1}: {_one_line(exc)}") from exc
            if not isinstance(rec, dict):
                raise IngestError(f"{uri}: line {i + 1} is not a JSON object")
            for k in rec:
                keys.setdefault(k, None)
    return list(keys)


# --------------------------------------------------------------------------- text


_ENTITY = re.compile(r"&(#\d+|#[xX][0-9a-fA-F]+|[A-Za-z][A-Za-z0-9]*);?")


def _unescape(s: str) -> str:
    out = html.unescape(s)
    if out != s and "&" in out and _ENTITY.search(out):
        out = html.unescape(out)  # double-escaped input such as "&amp;#8482"
    return out


def _unescape_series(s: pl.Series) -> pl.Series:
    mask = s.str.contains("&", literal=True).fill_null(False)
    if not mask.any():
        return s
    values = s.to_list()
    for i in mask.arg_true().to_list():
        values[i] = _unescape(values[i])
    return pl.Series(s.name, values, dtype=pl.String)


def _hash_series(s: pl.Series) -> pl.Series:
    return pl.Series(
        s.name,
        [hashlib.sha256(t.encode("utf-8")).hexdigest()[:HASH_HEX_CHARS] for t in s.to_list()],
        dtype=pl.String,
    )


def _clean_list_like(v: pl.Expr) -> pl.Expr:
    """``'Beauty', "Women's"`` / ``["a", "b"]`` / ``[["a","b"]]`` -> ``Beauty, Women's``."""
    quoted = v.str.extract_all(r"'[^']*'|\"[^\"]*\"")
    items = quoted.list.eval(pl.element().str.slice(1, pl.element().str.len_chars() - 2).str.strip_chars())
    items = items.list.eval(pl.element().filter(pl.element() != "")).list.unique(maintain_order=True)
    looks_listy = v.str.contains(r"^\s*\[*\s*['\"]").fill_null(False) & (quoted.list.len() > 0)
    return pl.when(looks_listy).then(items.list.join(", ")).otherwise(v)


def _normalise(v: pl.Expr) -> pl.Expr:
    v = v.map_batches(_unescape_series, return_dtype=pl.String, is_elementwise=True)
    v = v.str.replace_all(r"[\p{Cc}&&[^\t\n\r\x0B\x0C]]", "")  # control chars that are not whitespace
    return v.str.replace_all(r"\s+", " ").str.strip_chars()


def _text_expr(columns: list[str], list_like: set[str], config: IngestConfig) -> pl.Expr:
    fields = []
    for c in columns:
        v = pl.col(c)
        if c in list_like:
            v = _clean_list_like(v)
        if config.normalize_text:
            v = _normalise(v)
        present = v.is_not_null() & (v.str.strip_chars() != "")
        fields.append(pl.when(present).then(pl.concat_str([pl.lit(f"{c}: "), v])))
    text = pl.concat_str(fields, separator=" | ", ignore_nulls=True).fill_null("")
    text = text.str.slice(0, config.max_text_chars)
    if config.normalize_text:
        text = text.str.strip_chars()
    return text


# --------------------------------------------------------------------------- main


def ingest(*, catalog_uri: str, work_uri: str, config: IngestConfig) -> StageManifest:
    """Validate and normalise ``catalog_uri``; write items + quarantine under ``<work_uri>/ingest``."""
    watch = Stopwatch()
    fmt = detect_format(catalog_uri, config.format)
    catalog_sha = _hash_file(catalog_uri, fmt)
    input_hash = hash_of(catalog_sha, config.model_dump())
    done = load_completed(work_uri, STAGE, input_hash)
    if done is not None:
        return done

    try:
        return _run(catalog_uri, work_uri, config, fmt, catalog_sha, input_hash, watch)
    except IngestError:
        raise
    except (pl.exceptions.PolarsError, OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise IngestError(f"cannot parse {catalog_uri} as {fmt}: {_one_line(exc)}") from exc


def _run(
    catalog_uri: str,
    work_uri: str,
    config: IngestConfig,
    fmt: str,
    catalog_sha: str,
    input_hash: str,
    watch: Stopwatch,
) -> StageManifest:
    raw, list_cols = _scan(catalog_uri, fmt)
    original = list(raw.collect_schema())
    columns = _strip_type_suffixes(original)
    renamed = dict(zip(original, columns))
    raw = raw.rename({o: n for o, n in renamed.items() if o != n})
    list_like = {renamed[c] for c in list_cols} | {c for c in columns if c.lower() in LIST_LIKE_NAMES}
    list_like |= {n for o, n in renamed.items() if o.endswith("_seq")}

    def resolve(name: str) -> str | None:
        if name in columns:
            return name
        return renamed.get(name)

    id_col = resolve(config.id_column)
    if id_col is None:
        raise IngestError(
            f"id column {config.id_column!r} not found in {catalog_uri}; available columns: {', '.join(columns) or '(none)'}"
        )
    if config.text_columns is not None:
        missing = [c for c in config.text_columns if resolve(c) is None]
        if missing:
            raise IngestError(
                f"text column(s) {', '.join(map(repr, missing))} not found in {catalog_uri}; "
                f"available columns: {', '.join(columns)}"
            )
        text_cols = [resolve(c) for c in config.text_columns]
        if not text_cols:
            raise IngestError("ingest.text_columns is empty; name at least one column")
    else:
        text_cols = [c for c in DEFAULT_TEXT_COLUMNS if c in columns]
        if not text_cols:
            raise IngestError(
                f"none of the default text columns ({', '.join(DEFAULT_TEXT_COLUMNS)}) is in {catalog_uri}; "
                f"set ingest.text_columns (available columns: {', '.join(columns)})"
            )
    text_cols = list(dict.fromkeys(text_cols))  # type: ignore[arg-type]

    # Pass 1 (streaming): one small row per record.
    item_id = pl.col(id_col).str.strip_chars()
    text = _text_expr(text_cols, list_like, config)
    core = (
        raw.with_row_index(_ROW)
        .select(
            pl.col(_ROW).cast(pl.Int64),
            item_id.alias("item_id"),
            text.alias("text"),
        )
        .with_columns(
            pl.col("text").map_batches(_hash_series, return_dtype=pl.String, is_elementwise=True).alias("text_hash"),
            pl.when(pl.col("item_id").is_null() | (pl.col("item_id") == ""))
            .then(pl.lit("empty_id"))
            .when(pl.col("text") == "")
            .then(pl.lit("empty_text"))
            .otherwise(pl.lit(None, dtype=pl.String))
            .alias("reason"),
        )
        .collect(engine="streaming")
    )
    n_input = core.height
    if n_input == 0:
        raise IngestError(f"catalog has no records: {catalog_uri}")

    # Duplicates: survivor = smallest text_hash, then smallest row number.
    candidates = core.filter(pl.col("reason").is_null()).sort(["item_id", "text_hash", _ROW])
    first = candidates["item_id"].is_first_distinct()
    items = candidates.filter(first).select("item_id", "text", "text_hash")
    rejected = pl.concat(
        [
            core.filter(pl.col("reason").is_not_null()).select(_ROW, "reason"),
            candidates.filter(~first).select(_ROW, pl.lit("duplicate_id").alias("reason")),
        ]
    ).sort(_ROW)
    del core, candidates

    # Pass 2: the rejected rows with their original columns, unchanged.
    out_names = {c: (f"{c}_input" if c in ("reason", "row_number") else c) for c in columns}
    if rejected.height:
        quarantine = (
            raw.with_row_index(_ROW)
            .with_columns(pl.col(_ROW).cast(pl.Int64))
            .join(rejected.lazy(), on=_ROW, how="inner")
            .sort(_ROW)
            .select(
                *[pl.col(c).alias(out_names[c]) for c in columns],
                pl.col("reason"),
                pl.col(_ROW).alias("row_number"),
            )
            .collect(engine="streaming")
        )
    else:
        quarantine = pl.DataFrame(
            schema={**{out_names[c]: pl.String for c in columns}, "reason": pl.String, "row_number": pl.Int64}
        )

    n_valid, n_quar = items.height, quarantine.height
    if n_input != n_valid + n_quar:
        raise RuntimeError(f"ingest invariant violated: input {n_input} != valid {n_valid} + quarantined {n_quar}")

    out_dir = stage_dir(work_uri, STAGE)
    items_uri = storage.join(out_dir, "items.parquet")
    quarantine_uri = storage.join(out_dir, "quarantine.parquet")
    # A stale completion record must never vouch for half-rewritten outputs.
    storage.remove(storage.join(out_dir, STAGE_RECORD))
    storage.write_parquet(_to_arrow(items, {"item_id": pa.string(), "text": pa.string(), "text_hash": pa.string()}), items_uri)
    storage.write_parquet(
        _to_arrow(
            quarantine,
            {**{out_names[c]: pa.string() for c in columns}, "reason": pa.string(), "row_number": pa.int64()},
        ),
        quarantine_uri,
    )

    reasons = dict(quarantine.group_by("reason").len().sort("reason").iter_rows()) if n_quar else {}
    manifest = StageManifest(
        stage=STAGE,
        input_hash=input_hash,
        outputs={"items": items_uri, "quarantine": quarantine_uri},
        counts={"input": n_input, "valid": n_valid, "quarantined": n_quar},
        info={
            "catalog_uri": catalog_uri,
            "catalog_sha256": catalog_sha,
            "columns": columns,
            "id_column": id_col,
            "text_columns": text_cols,
            "format": fmt,
            "quarantine_reasons": {r: int(reasons.get(r, 0)) for r in REASONS},
            "text_hash": f"sha256[:{HASH_HEX_CHARS // 2} bytes] hex",
        },
        seconds=watch.seconds,
    )
    return record_completed(work_uri, manifest)


def _to_arrow(df: pl.DataFrame, types: dict[str, pa.DataType]) -> pa.Table:
    table = df.to_arrow()
    return table.cast(pa.schema([pa.field(n, types[n]) for n in table.column_names]))

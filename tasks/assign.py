"""Assign: encode every item and resolve unique IDs; per-item data moves only between Ray workers and storage.

The driver sees file names, counts and per-partition summaries (O(L·K) numbers each),
never a per-item array, so the stage's driver memory does not grow with the catalog.
Items are split into P *partitions* by first-level code (``code mod P``): collision
groups and overflow never cross a first-level code (``tasks.resolve``), so each
partition resolves on its own and the IDs are byte-identical to one global pass.

1. **encode** — a Ray Data actor pool encodes the embedding shards; each actor writes
   its batch's rows straight to ``encoded/<p>/`` (codes, distance, last-level residual,
   reconstruction scalars). With a prior run it also writes (item_id, text_hash,
   partition) to ``current/<h>/``, split by item-id hash, for the match step.
2. **match** (prior run only) — one task per prior file scatters the prior IDs by
   item-id hash (``prior/<h>/``) and the prior retired IDs by partition
   (``retired_in/<p>/``); one task per hash bucket joins current and prior items and
   sends each decision to the partition that owns the ID: a kept item to its prior
   ID's partition, a new or changed item to its code's, a prior ID no longer held
   (changed, removed; every prior ID on a retrain) to its own (``decisions/<p>/``).
3. **resolve** — one task per partition applies ``tasks.resolve`` and writes its part
   of ``semantic_ids/``, ``changes/`` and ``retired/``; it returns counts, a metrics
   partial, per-first-code digests, drift sums and the items of a hash-based sample.
4. **quality** — one task reads the sampled items' vectors and compares the run's
   codes with residual k-means on them (issue 8: the IDs are the product).

P = ceil(items / ``assign.partition_rows``), at most ``assign.max_partitions``; a
catalog below ``partition_rows`` is one partition, one task per step. A one-partition
catalog of at most ``assign.single_task_max_items`` runs all four steps in one Ray task
(the same functions, called in-process): on Beauty (12k items) the encoder actor's
start-up and the Ray Data pipeline took 6 of the stage's 12 seconds.
"""

from __future__ import annotations

import hashlib
import math
from typing import Any

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import ray
import torch

from rqvae_core.ids import check_capacity, format_sid
from rqvae_core.metrics import MetricsAccumulator, compare_with_residual_kmeans, merge_partials
from tasks import progress, storage
from tasks.steps import TASK_OPTIONS, StepRunner, in_tasks, inline
from tasks.shards import batch_name, key_dir, parquet_rows, read_dir, write_split
from tasks.config import AssignConfig, PipelineConfig
from tasks.drift import code_counts, drift_report
from tasks.embed import actor_fault_tolerance, vectors_matrix
from tasks.fit import load_model, read_vectors
from tasks.manifest import AssignResult, hash_of, run_stage, stage_dir
from tasks.resolve import partition_key, resolve_partitioned

QUALITY_SAMPLE = 20_000  # items in the quality sample (coherence vs residual k-means, recon histogram)


# --------------------------------------------------------------------------- keys and files

def item_hash(item_ids: Any, *, seed: int) -> np.ndarray:
    """A 64-bit hash of each item id (polars, vectorised); the same in every process of a run."""
    return pl.Series(values=np.asarray(item_ids, dtype=object), dtype=pl.String).hash(seed=seed).to_numpy()


def _codes_array(codes: np.ndarray) -> pa.Array:
    width = codes.shape[1]
    flat = pa.array(np.ascontiguousarray(codes, dtype=np.int32).ravel(), type=pa.int32())
    return pa.ListArray.from_arrays(pa.array(np.arange(0, len(flat) + 1, width, dtype=np.int32)), flat)


def _codes_matrix(column: pa.ChunkedArray | pa.Array, width: int) -> np.ndarray:
    """A list<int32> column whose rows all have ``width`` codes as an (N, width) int64 matrix."""
    values = pc.list_flatten(column).to_numpy(zero_copy_only=False)
    return values.astype(np.int64).reshape(-1, width)


def _fixed(matrix: np.ndarray, dtype: pa.DataType) -> pa.FixedSizeListArray:
    return pa.FixedSizeListArray.from_arrays(pa.array(np.ascontiguousarray(matrix).ravel(), dtype), matrix.shape[1])


def _encoded_schema(n_levels: int, latent_dim: int) -> pa.Schema:
    return pa.schema([("item_id", pa.string()), ("text_hash", pa.string()), ("codes", pa.list_(pa.int32(), n_levels)),
                      ("distance", pa.float64()), ("last_residual", pa.list_(pa.float32(), latent_dim)),
                      ("sq_err", pa.float64()), ("abs_err", pa.float64()), ("cosine", pa.float64())])


CURRENT = pa.schema([("item_id", pa.string()), ("text_hash", pa.string()), ("partition", pa.int64())])
PRIOR = pa.schema([("item_id", pa.string()), ("text_hash", pa.string()), ("codes", pa.list_(pa.int32())), ("sid", pa.string())])
RETIRED = pa.schema([("codes", pa.list_(pa.int32()))])
DECISIONS = pa.schema([("item_id", pa.string()), ("kind", pa.string()), ("text_hash", pa.string()), ("codes", pa.list_(pa.int32())),
                       ("old_sid", pa.string()), ("status", pa.string())])
IDS = pa.schema([("item_id", pa.string()), ("codes", pa.list_(pa.int32())), ("sid", pa.string()), ("text_hash", pa.string())])
CHANGES = pa.schema([("item_id", pa.string()), ("old_sid", pa.string()), ("new_sid", pa.string()), ("status", pa.string())])


def _fits(rows: list[list[int]], *, n_levels: int, codebook_size: int) -> np.ndarray:
    """Which IDs can collide with this model's IDs (length L+1, codes < K).

    After a retrain with another L or K, older IDs have another length or codes this
    model cannot produce: they can never be issued again, but they stay in the
    lineage's retired list.
    """
    return np.array([len(r) == n_levels + 1 and max(r) < codebook_size for r in rows], dtype=bool)


def _partitions_of(rows: list[list[int]], fits: np.ndarray, *, n_levels: int, n_partitions: int) -> np.ndarray:
    """The partition that owns each ID (IDs that cannot collide any more ride in partition 0)."""
    out = np.zeros(len(rows), dtype=np.int64)
    if fits.any():
        codes = np.asarray([r for r, f in zip(rows, fits) if f], dtype=np.int64)
        out[fits] = partition_key(codes[:, :n_levels]) % n_partitions
    return out


# --------------------------------------------------------------------------- 1. encode (Ray Data actors)

class ItemEncoder:
    """Ray Data actor: loads the checkpoint once; encodes a batch and writes its rows by partition (and hash bucket)."""

    def __init__(self, *, model_uri: str, device: str, out_dir: str, n_partitions: int, chunk_rows: int, with_prior: bool) -> None:
        torch.set_num_threads(1)
        self.device = device
        self.model = load_model(model_uri).to(device).eval()
        self.out_dir, self.n_partitions, self.chunk_rows, self.with_prior = out_dir, n_partitions, chunk_rows, with_prior
        self.schema = _encoded_schema(self.model.config.n_levels, self.model.config.latent_dim)

    def _encode(self, vectors: np.ndarray) -> dict[str, np.ndarray]:
        parts: dict[str, list[np.ndarray]] = {}
        for start in range(0, len(vectors), self.chunk_rows):  # bounds the actor's working memory
            # a copy: the vectors are read-only Arrow memory, which torch.from_numpy warns about
            x = torch.tensor(vectors[start : start + self.chunk_rows], dtype=torch.float32, device=self.device)
            enc = self.model.encode_items(x)
            diff = x - enc.recon
            for key, value in (("codes", enc.codes.to(torch.int32)), ("distance", enc.distance.double()), ("last_residual", enc.last_residual.float()),
                               ("sq_err", diff.pow(2).sum(-1).double()), ("abs_err", diff.abs().sum(-1).double()),
                               ("cosine", torch.nn.functional.cosine_similarity(x, enc.recon, dim=-1).double())):
                parts.setdefault(key, []).append(value.cpu().numpy())
        return {k: np.concatenate(v) for k, v in parts.items()}

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        v = batch["vector"]
        vectors = np.stack(v) if v.dtype == object else v
        item_ids = batch["item_id"].astype(str)
        if not len(item_ids):
            return {"rows": np.zeros(1, dtype=np.int64)}
        enc = self._encode(np.ascontiguousarray(vectors, dtype=np.float32))
        partition = partition_key(enc["codes"]) % self.n_partitions
        table = pa.table({
            "item_id": pa.array(item_ids, pa.string()), "text_hash": pa.array(batch["text_hash"].astype(str), pa.string()),
            "codes": _fixed(enc["codes"], pa.int32()), "distance": enc["distance"], "last_residual": _fixed(enc["last_residual"], pa.float32()),
            "sq_err": enc["sq_err"], "abs_err": enc["abs_err"], "cosine": enc["cosine"],
        }, schema=self.schema)
        name = batch_name(item_ids[0])
        write_split(table, partition, root=storage.join(self.out_dir, "encoded"), name=name)
        if self.with_prior:
            light = pa.table({"item_id": table["item_id"], "text_hash": table["text_hash"], "partition": partition}, schema=CURRENT)
            write_split(light, item_hash(item_ids, seed=0) % self.n_partitions, root=storage.join(self.out_dir, "current"), name=name)
        return {"rows": np.array([len(item_ids)], dtype=np.int64)}


# --------------------------------------------------------------------------- 2. match (prior run only)

def _scatter_prior_ids(uri: str, *, out_dir: str, n_partitions: int) -> int:
    """One prior semantic_ids file, split by item-id hash."""
    table = pq.read_table(storage.filesystem(uri)[1], filesystem=storage.filesystem(uri)[0], columns=PRIOR.names).cast(PRIOR)
    name = uri.rsplit("/", 1)[-1].removesuffix(".parquet")
    write_split(table, item_hash(table["item_id"].to_numpy(zero_copy_only=False), seed=0) % n_partitions, root=storage.join(out_dir, "prior"), name=name)
    return table.num_rows


def _scatter_prior_retired(uri: str, *, out_dir: str, n_partitions: int, n_levels: int, codebook_size: int) -> int:
    """One prior retired file, split by the partition that owns each ID."""
    table = pq.read_table(storage.filesystem(uri)[1], filesystem=storage.filesystem(uri)[0], columns=["codes"]).cast(RETIRED)
    rows = table["codes"].to_pylist()
    fits = _fits(rows, n_levels=n_levels, codebook_size=codebook_size)
    name = uri.rsplit("/", 1)[-1].removesuffix(".parquet")
    write_split(table, _partitions_of(rows, fits, n_levels=n_levels, n_partitions=n_partitions), root=storage.join(out_dir, "retired_in"), name=name)
    return table.num_rows


def _match(bucket: int, *, out_dir: str, n_partitions: int, n_levels: int, codebook_size: int, retrain: bool) -> np.ndarray:
    """Join one hash bucket's current and prior items; write each decision to the partition that owns the ID.

    Returns (L, K) bools: the codes the prior IDs of this bucket use per level (drift's baseline).
    """
    current = pl.from_arrow(read_dir(key_dir(storage.join(out_dir, "current"), bucket), CURRENT))
    prior = pl.from_arrow(read_dir(key_dir(storage.join(out_dir, "prior"), bucket), PRIOR)).rename(
        {"text_hash": "prior_hash", "codes": "prior_codes", "sid": "old_sid"})
    joined = current.join(prior, on="item_id", how="full", coalesce=True)
    present, had = joined["text_hash"].is_not_null(), joined["prior_hash"].is_not_null()
    kept = (present & had & (joined["text_hash"] == joined["prior_hash"])) if not retrain else pl.Series([False] * joined.height)
    prior_rows = [r if r is not None else [] for r in joined["prior_codes"].to_list()]  # [] where the item is new
    fits = _fits(prior_rows, n_levels=n_levels, codebook_size=codebook_size)
    prior_part = _partitions_of(prior_rows, fits, n_levels=n_levels, n_partitions=n_partitions)
    kept_np, present_np, had_np = kept.to_numpy(), present.to_numpy(), had.to_numpy()
    fresh = present_np & ~kept_np
    gone = had_np & ~kept_np  # a prior ID this item no longer holds: retired (or, on a retrain, every prior ID)
    fresh_status = np.where(had_np, "remapped" if retrain else "changed", "new")
    frames = {
        "kept": (kept_np, prior_part, joined["prior_codes"], "kept"),
        "fresh": (fresh, joined["partition"].fill_null(0).to_numpy(), pl.Series([None] * joined.height, dtype=pl.List(pl.Int32)), fresh_status),
        "gone": (gone, prior_part, joined["prior_codes"], np.where(present_np, None, "removed")),
    }
    tables, keys = [], []
    for kind, (mask, part, codes, status) in frames.items():
        if not mask.any():
            continue
        status_col = np.broadcast_to(np.asarray(status, dtype=object), mask.shape)[mask]
        tables.append(pa.table({
            "item_id": joined["item_id"].filter(pl.Series(mask)).to_arrow(), "kind": pa.array([kind] * int(mask.sum()), pa.string()),
            "text_hash": joined["text_hash"].filter(pl.Series(mask)).to_arrow().cast(pa.string()),
            "codes": codes.filter(pl.Series(mask)).to_arrow().cast(pa.list_(pa.int32())),
            "old_sid": joined["old_sid"].filter(pl.Series(mask)).to_arrow().cast(pa.string()),
            "status": pa.array(status_col.tolist(), pa.string()),
        }, schema=DECISIONS))
        keys.append(part[mask])
    if tables:
        write_split(pa.concat_tables(tables), np.concatenate(keys), root=storage.join(out_dir, "decisions"), name=f"{bucket:05d}")
    used = np.zeros((n_levels, codebook_size), dtype=bool)
    if fits.any():
        codes = np.asarray([r for r, f in zip(prior_rows, fits) if f], dtype=np.int64)[:, :n_levels]
        used |= code_counts(codes, codebook_size=codebook_size) > 0
    return used


# --------------------------------------------------------------------------- 3. resolve (one task per partition)

def _digests(item_ids: np.ndarray, sids: np.ndarray, codes: np.ndarray) -> dict[int, str]:
    """sha256 of "item_id\\tsid\\n" lines in item_id order, per first-level code (partition-count independent)."""
    out = {}
    key = partition_key(codes[:, :-1])
    for code in np.unique(key).tolist():
        rows = np.flatnonzero(key == code)
        rows = rows[np.argsort(item_ids[rows], kind="stable")]
        h = hashlib.sha256()
        for start in range(0, len(rows), 100_000):
            r = rows[start : start + 100_000]
            h.update("".join(f"{i}\t{s}\n" for i, s in zip(item_ids[r].tolist(), sids[r].tolist())).encode())
        out[int(code)] = h.hexdigest()
    return out


def _write_part(table: pa.Table, out_dir: str, name: str, partition: int) -> None:
    storage.write_parquet(table, storage.join(out_dir, name, f"part-{partition:05d}.parquet"))


def _resolve(partition: int, *, out_dir: str, model_uri: str, n_levels: int, codebook_size: int, with_prior: bool, retrain: bool,
             sample_below: int | None) -> dict[str, Any]:
    """IDs of one partition's items, written as its part of semantic_ids / changes / retired; returns a small summary."""
    model = load_model(model_uri)
    L, K = n_levels, codebook_size
    enc = read_dir(key_dir(storage.join(out_dir, "encoded"), partition), _encoded_schema(L, model.config.latent_dim))
    enc = enc.sort_by("item_id")
    ids = np.asarray(enc["item_id"].to_pylist(), dtype=str)
    hashes = np.asarray(enc["text_hash"].to_pylist(), dtype=object)
    codes = _codes_matrix(enc["codes"], L)
    distance = enc["distance"].to_numpy()
    sq_err = enc["sq_err"].to_numpy()
    accumulator = MetricsAccumulator(n_levels=L, codebook_size=K)
    accumulator.update_rows(sq_err=sq_err, abs_err=enc["abs_err"].to_numpy(), cosine=enc["cosine"].to_numpy(), dim=model.config.input_dim, codes=codes)

    kept = DECISIONS.empty_table()
    kept_codes = np.zeros((0, L + 1), dtype=np.int64)
    occupied = np.zeros((0, L + 1), dtype=np.int64)
    retired_rows: list[list[int]] = []
    fresh_status = old_sid = None
    removed = CHANGES.empty_table()
    fresh_rows = np.arange(len(ids))
    if with_prior:
        decisions = read_dir(key_dir(storage.join(out_dir, "decisions"), partition), DECISIONS)
        kind = decisions["kind"]
        kept = decisions.filter(pc.equal(kind, "kept")).sort_by("item_id")
        fresh = decisions.filter(pc.equal(kind, "fresh")).sort_by("item_id")
        gone = decisions.filter(pc.equal(kind, "gone"))
        retired_in = read_dir(key_dir(storage.join(out_dir, "retired_in"), partition), RETIRED)
        fresh_ids = np.asarray(fresh["item_id"].to_pylist(), dtype=str)
        fresh_rows = np.searchsorted(ids, fresh_ids)
        if fresh.num_rows and (fresh_rows.max() >= len(ids) or not np.array_equal(ids[fresh_rows], fresh_ids)):
            raise RuntimeError(f"assign partition {partition}: a new or changed item has no encoded row")
        fresh_status, old_sid = fresh["status"].to_pylist(), fresh["old_sid"].to_pylist()
        lineage = gone["codes"].to_pylist() + retired_in["codes"].to_pylist()
        fits = _fits(lineage, n_levels=L, codebook_size=K)
        usable = np.asarray([r for r, f in zip(lineage, fits) if f], dtype=np.int64).reshape(-1, L + 1)
        other = [r for r, f in zip(lineage, fits) if not f]
        retired = np.unique(usable, axis=0) if len(usable) else usable
        if kept.num_rows:
            kept_codes = _codes_matrix(kept["codes"], L + 1)
        occupied = np.concatenate([kept_codes, retired])
        if len(np.unique(occupied, axis=0)) != len(occupied):
            raise ValueError("prior run is inconsistent: a kept ID is duplicated or also retired")
        retired_rows = retired.tolist() + other
        removed_rows = gone.filter(pc.equal(gone["status"], "removed")).sort_by("item_id")
        removed = pa.table({"item_id": removed_rows["item_id"], "old_sid": removed_rows["old_sid"],
                            "new_sid": pa.nulls(removed_rows.num_rows, pa.string()), "status": removed_rows["status"]}, schema=CHANGES)

    last_residual = torch.from_numpy(pc.list_flatten(enc["last_residual"]).to_numpy().astype(np.float32, copy=True).reshape(len(ids), model.config.latent_dim))

    def last_level_distances(idx: np.ndarray) -> np.ndarray:
        return model.last_level_distances(last_residual[fresh_rows[idx]]).numpy()

    resolved = resolve_partitioned(item_ids=ids[fresh_rows], codes=codes[fresh_rows], distances=distance[fresh_rows], codebook_size=K,
                                   last_level_distances=last_level_distances, occupied=occupied)
    fresh_sid = format_sid(resolved.codes) if len(fresh_rows) else np.zeros(0, dtype=str)
    all_ids = np.concatenate([ids[fresh_rows], np.asarray(kept["item_id"].to_pylist(), dtype=str)])
    all_codes = np.concatenate([resolved.codes.astype(np.int64), kept_codes])
    all_sid = np.concatenate([fresh_sid.astype(str), format_sid(kept_codes).astype(str) if len(kept_codes) else np.zeros(0, dtype=str)])
    all_hash = np.concatenate([hashes[fresh_rows], np.asarray(kept["text_hash"].to_pylist(), dtype=object)])
    if len(np.unique(all_sid)) != len(all_sid):
        raise RuntimeError("assign: semantic IDs are not unique; refusing to publish")
    order = np.argsort(all_ids, kind="stable")
    ids_table = pa.table({"item_id": pa.array(all_ids[order], pa.string()), "codes": _codes_array(all_codes[order]),
                          "sid": pa.array(all_sid[order], pa.string()), "text_hash": pa.array(all_hash[order].tolist(), pa.string())}, schema=IDS)
    _write_part(ids_table, out_dir, "semantic_ids", partition)

    status_counts: dict[str, int] = {}
    if with_prior:
        n_fresh = len(fresh_rows)
        status = np.asarray(list(fresh_status) + ["kept"] * kept.num_rows, dtype=object)[order]
        olds = np.asarray(list(old_sid) + kept["old_sid"].to_pylist(), dtype=object)[order]
        current = pa.table({"item_id": ids_table["item_id"], "old_sid": pa.array(olds.tolist(), pa.string()), "new_sid": ids_table["sid"],
                            "status": pa.array(status.tolist(), pa.string())}, schema=CHANGES)
        changes = pa.concat_tables([current, removed])
        _write_part(changes, out_dir, "changes", partition)
        _write_part(pa.table({"codes": pa.array(retired_rows, pa.list_(pa.int32()))}, schema=RETIRED), out_dir, "retired", partition)
        for d in pc.value_counts(changes["status"]).to_pylist():
            status_counts[d["values"]] = int(d["counts"])
        assert n_fresh + kept.num_rows == ids_table.num_rows

    fresh_codes = codes[fresh_rows]
    sample = np.arange(len(ids)) if sample_below is None or not len(ids) else np.flatnonzero(item_hash(ids, seed=1) < np.uint64(sample_below))
    return {
        "n_ids": ids_table.num_rows, "n_encoded": len(ids), "n_moved": resolved.n_moved, "n_retired": len(retired_rows),
        "removed": removed.num_rows, "status": status_counts, "digests": _digests(all_ids, all_sid, all_codes),
        "metrics": accumulator.partial(),
        "drift": {"n": len(fresh_rows), "sq_err_sum": float(sq_err[fresh_rows].sum()), "code_counts": code_counts(fresh_codes, codebook_size=K)},
        "sample": {"item_id": ids[sample].tolist(), "codes": codes[sample], "sq_err": sq_err[sample]},
    }


# --------------------------------------------------------------------------- 4. quality (one task)

def _quality(*, embeddings_uri: str, item_ids: list[str], codes: np.ndarray, sq_err: np.ndarray, codebook_size: int, dim: int) -> dict[str, Any]:
    """The run's sampled codes beside residual k-means on the same vectors, and the recon error histogram."""
    value_set = pa.array(item_ids, pa.string())
    found: list[pa.Table] = []
    for uri in storage.list_parquet(embeddings_uri):
        t = storage.read_parquet(uri).select(["item_id", "vector"])
        t = t.filter(pc.is_in(t["item_id"], value_set=value_set))
        if t.num_rows:
            found.append(t)
    table = pa.concat_tables(found).sort_by("item_id")
    order = np.argsort(np.asarray(item_ids, dtype=str), kind="stable")
    if table["item_id"].to_pylist() != np.asarray(item_ids, dtype=str)[order].tolist():
        raise RuntimeError("assign quality: sampled items are missing from the embeddings")
    n = len(item_ids)
    baseline = compare_with_residual_kmeans(vectors=vectors_matrix(table),
                                            codes=codes[order], recon_sq_err=sq_err[order],
                                            codebook_size=codebook_size, n_queries=min(2000, n), seed=0) if n > 1 else None
    counts, edges = np.histogram(sq_err / dim, bins=30)
    return {"baseline": baseline, "histogram": {"edges": edges.tolist(), "counts": counts.tolist(), "sampled_items": n}}


# --------------------------------------------------------------------------- the stage

def n_partitions(n_items: int, *, n_levels: int, config: AssignConfig) -> int:
    """How many partitions the resolution runs in (1 with L = 1: every item shares the partition key)."""
    if n_levels < 2:
        return 1
    return max(1, min(config.max_partitions, math.ceil(n_items / config.partition_rows)))


def assign(*, embeddings_uri: str, embeddings_hash: str, model_uri: str, model_hash: str, work_uri: str, config: PipelineConfig, prior_run: str | None = None, retrain: bool = False) -> AssignResult:
    """IDs for every embedded item.

    With ``prior_run`` and a reused model, unchanged items keep their IDs (stable mode).
    With ``prior_run`` and ``retrain``, IDs are resolved afresh in the new model's space
    and the changes table is the old→new map (status ``remapped``/``new``/``removed``).
    """
    input_hash = hash_of("assign", embeddings_hash, model_hash, prior_run or "", retrain)
    return run_stage(
        work_uri=work_uri, result_type=AssignResult, input_hash=input_hash,
        build=lambda: _assign(embeddings_uri=embeddings_uri, model_uri=model_uri, work_uri=work_uri, config=config, prior_run=prior_run, retrain=retrain),
    )


def _check_encoded(n_done: int, n: int) -> None:
    if n_done != n:
        raise RuntimeError(f"assign: {n_done} items encoded, but the embeddings hold {n}")


def _after_encode(run: StepRunner, *, out_dir: str, embeddings_uri: str, model_uri: str,
                  n: int, P: int, L: int, K: int, dim: int, prior_run: str | None, retrain: bool) -> tuple[np.ndarray, list[dict[str, Any]], dict[str, Any]]:
    """Steps 2-4 (match, resolve, quality) over the encoded shards; ``run`` runs each step's calls (Ray tasks or inline).

    Returns the codes the prior IDs use per level, the partitions' summaries and the quality check.
    """
    with_prior = prior_run is not None
    # 2. match: prior IDs joined with the current items, by item-id hash
    prior_used = np.zeros((L, K), dtype=bool)
    if with_prior:
        run(_scatter_prior_ids, [dict(uri=f, out_dir=out_dir, n_partitions=P) for f in storage.list_parquet(storage.join(prior_run, "semantic_ids"))])
        run(_scatter_prior_retired, [dict(uri=f, out_dir=out_dir, n_partitions=P, n_levels=L, codebook_size=K)
                                     for f in storage.list_parquet(storage.join(prior_run, "retired"))])
        for used in run(_match, [dict(bucket=b, out_dir=out_dir, n_partitions=P, n_levels=L, codebook_size=K, retrain=retrain) for b in range(P)]):
            prior_used |= used

    # 3. resolve: one call per partition
    sample_below = None if n <= QUALITY_SAMPLE else int(QUALITY_SAMPLE / n * 2**64)  # hash below this: ~QUALITY_SAMPLE items
    summaries = run(_resolve, [dict(partition=p, out_dir=out_dir, model_uri=model_uri, n_levels=L, codebook_size=K, with_prior=with_prior,
                                    retrain=retrain, sample_below=sample_below) for p in range(P)])
    n_ids = sum(s["n_ids"] for s in summaries)
    if sum(s["n_encoded"] for s in summaries) != n or n_ids != n:
        raise RuntimeError(f"assign: {n} items embedded but {n_ids} IDs resolved")
    for scratch in ("encoded", "current", "prior", "retired_in", "decisions"):
        storage.remove(storage.join(out_dir, scratch))

    # 4. quality on a hash-based sample (at most QUALITY_SAMPLE items)
    sample = sorted(((i, c, e) for s in summaries for i, c, e in zip(s["sample"]["item_id"], s["sample"]["codes"], s["sample"]["sq_err"])),
                    key=lambda r: r[0])
    checked = run(_quality, [dict(
        embeddings_uri=embeddings_uri, item_ids=[r[0] for r in sample], codes=np.asarray([r[1] for r in sample], dtype=np.int64).reshape(-1, L),
        sq_err=np.asarray([r[2] for r in sample], dtype=np.float64), codebook_size=K, dim=dim)])[0] if sample else {"baseline": None, "histogram": None}
    for s in summaries:
        del s["sample"]  # the driver needs only the counts, partials and digests
    return prior_used, summaries, checked


def _assign_in_one_task(*, embeddings_uri: str, encoder: dict[str, Any], encoder_class: type, steps: dict[str, Any]) -> tuple[int, np.ndarray, list[dict[str, Any]], dict[str, Any]]:
    """A small catalog's whole stage in one Ray task: ``encoder_class`` (``ItemEncoder``, handed over by the driver as it
    hands it to the actor pool) over every embeddings part, then steps 2-4 inline."""
    item_encoder = encoder_class(**encoder)
    n_done = 0
    for uri in storage.list_parquet(embeddings_uri):
        table = storage.read_parquet(uri).select(["item_id", "text_hash", "vector"])
        batch = {"item_id": np.asarray(table["item_id"].to_pylist(), dtype=object), "text_hash": np.asarray(table["text_hash"].to_pylist(), dtype=object),
                 "vector": vectors_matrix(table)}
        n_done += int(item_encoder(batch)["rows"].sum())
    _check_encoded(n_done, steps["n"])
    return n_done, *_after_encode(inline, embeddings_uri=embeddings_uri, **steps)


def _assign(*, embeddings_uri: str, model_uri: str, work_uri: str, config: PipelineConfig, prior_run: str | None, retrain: bool) -> AssignResult:
    model = load_model(model_uri)
    L, K, dim = model.config.n_levels, model.config.codebook_size, model.config.input_dim
    n = parquet_rows(storage.list_parquet(embeddings_uri))
    check_capacity(n_items=n, n_levels=L, codebook_size=K)
    P = n_partitions(n, n_levels=L, config=config.assign)
    device = "cuda" if ray.cluster_resources().get("GPU", 0) else "cpu"  # where the encoder actors run, not the driver
    out_dir = stage_dir(work_uri, "assign")
    storage.remove(out_dir)
    with_prior = prior_run is not None
    prior_quality = storage.read_json(storage.join(prior_run, "quality.json")) if with_prior else {}
    encoder = {"model_uri": model_uri, "device": device, "out_dir": out_dir, "n_partitions": P, "chunk_rows": config.assign.batch_size,
               "with_prior": with_prior}
    steps = {"out_dir": out_dir, "model_uri": model_uri, "n": n, "P": P, "L": L, "K": K, "dim": dim, "prior_run": prior_run, "retrain": retrain}

    single = P == 1 and n <= config.assign.single_task_max_items
    if single:
        one_task = ray.remote(_assign_in_one_task).options(**TASK_OPTIONS, num_gpus=1 if device == "cuda" else 0)
        n_done, prior_used, summaries, checked = ray.get(one_task.remote(embeddings_uri=embeddings_uri, encoder=encoder, encoder_class=ItemEncoder, steps=steps))
        progress.report("assign", n_done)
    else:
        # 1. encode: actors write their rows; the driver counts them
        encoded = read_vectors(embeddings_uri).map_batches(
            ItemEncoder,
            fn_constructor_kwargs=encoder,
            batch_size=config.assign.rows_per_file,
            compute=ray.data.ActorPoolStrategy(size=config.assign.num_actors),
            num_gpus=1 if device == "cuda" else 0,
            num_cpus=1,
            batch_format="numpy",
            ray_remote_args_fn=actor_fault_tolerance,  # bounded actor restarts/retries, see tasks.embed
        )
        n_done = 0
        for batch in encoded.iter_batches(batch_size=None, batch_format="numpy"):
            n_done += int(batch["rows"].sum())
            progress.report("assign", n_done)
        _check_encoded(n_done, n)
        prior_used, summaries, checked = _after_encode(in_tasks, embeddings_uri=embeddings_uri, **steps)

    baseline = checked["baseline"]
    metrics = merge_partials([s["metrics"] for s in summaries], prefix_coherence=baseline["run"]["prefix_coherence"] if baseline else []).to_dict()
    n_moved = sum(s["n_moved"] for s in summaries)
    quality: dict[str, Any] = {
        **metrics,
        "recon_error_histogram": checked["histogram"],
        "final_ids": {"unique": True, "n_moved": int(n_moved), "id_length": L + 1, "n_ids": n},
        "baseline": baseline,
    }
    drift = None
    if with_prior:
        status: dict[str, int] = {}
        for s in summaries:
            for k, v in s["status"].items():
                status[k] = status.get(k, 0) + v
        quality["changes"] = status
        if not retrain:
            drift = drift_report(
                n=sum(s["drift"]["n"] for s in summaries), sq_err_sum=sum(s["drift"]["sq_err_sum"] for s in summaries),
                fresh_code_counts=np.sum([s["drift"]["code_counts"] for s in summaries], axis=0), prior_code_used=prior_used,
                dim=dim, codebook_size=K, prior_recon_mse=float(prior_quality.get("recon_mse", 0.0)), config=config.drift,
            )
            quality["drift"] = drift
    storage.write_json(storage.join(out_dir, "quality.json"), quality)
    digests = {code: d for s in summaries for code, d in s["digests"].items()}
    return AssignResult(
        semantic_ids=storage.join(out_dir, "semantic_ids"),
        quality=storage.join(out_dir, "quality.json"),
        changes=storage.join(out_dir, "changes") if with_prior else None,
        retired=storage.join(out_dir, "retired") if with_prior else None,
        ided=n,
        removed=sum(s["removed"] for s in summaries) if with_prior else None,
        device=device,
        n_moved=int(n_moved),
        unique_tuple_rate=metrics["unique_tuple_rate"],
        ids_hash=hash_of("ids", [[code, digests[code]] for code in sorted(digests)]),
        n_retired=sum(s["n_retired"] for s in summaries),
        drift=drift,
        partitions=P,
        runner="task" if single else "ray_data",
    )

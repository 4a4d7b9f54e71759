"""Encode every item with Ray Data (many blocks, an actor pool) and resolve IDs per first-level code.

Workers ship back only what assignment and the quality report need per item
(codes, distance, the last-level residual, three reconstruction scalars). The
ID rules live in ``rqvae_core.ids``; ``tasks.resolve`` applies them one
first-level code at a time (groups and overflow never cross it), with results
identical to one global pass. The encoded rows are still gathered here on the
driver; writing them as shards partitioned by first-level code and resolving
each partition in a Ray task is the next step (issue 9).
"""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import ray
import torch

from rqvae_core.ids import check_capacity, format_sid
from rqvae_core.metrics import MetricsAccumulator, compare_with_residual_kmeans
from tasks import progress, storage
from tasks.config import PipelineConfig
from tasks.drift import drift_report
from tasks.embed import actor_fault_tolerance, vectors_matrix
from tasks.fit import load_model, read_vectors
from tasks.manifest import AssignResult, hash_of, run_stage, stage_dir
from tasks.resolve import reassign_partitioned, resolve_partitioned

PART_ROWS = 500_000


class ItemEncoder:
    """Ray Data actor: loads the checkpoint once, encodes batches of vectors."""

    def __init__(self, *, model_uri: str, device: str) -> None:
        torch.set_num_threads(1)
        self.device = device
        self.model = load_model(model_uri).to(device).eval()

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        v = batch["vector"]
        x = torch.from_numpy(np.stack(v) if v.dtype == object else v).float().to(self.device)
        enc = self.model.encode_items(x)
        diff = x - enc.recon
        return {
            "item_id": batch["item_id"],
            "text_hash": batch["text_hash"],
            "codes": enc.codes.to(torch.int32).cpu().numpy(),
            "distance": enc.distance.cpu().numpy().astype(np.float64),
            "last_residual": enc.last_residual.cpu().numpy(),
            "sq_err": diff.pow(2).sum(-1).cpu().numpy(),
            "abs_err": diff.abs().sum(-1).cpu().numpy(),
            "cosine": torch.nn.functional.cosine_similarity(x, enc.recon, dim=-1).cpu().numpy(),
        }


def _read_prior(prior_run: str) -> dict[str, Any]:
    ids = storage.read_parquet(storage.join(prior_run, "semantic_ids"))
    retired_uri = storage.join(prior_run, "retired")
    retired = storage.read_parquet(retired_uri)["codes"].to_pylist() if storage.list_parquet(retired_uri) else []
    return {
        "item_ids": np.asarray(ids["item_id"].to_pylist(), dtype=object),
        "text_hashes": np.asarray(ids["text_hash"].to_pylist(), dtype=object),
        "sids": np.asarray(ids["sid"].to_pylist(), dtype=object),
        "codes": np.asarray(ids["codes"].to_pylist(), dtype=np.int64),
        "retired": retired,
        "quality": storage.read_json(storage.join(prior_run, "quality.json")),
    }


def _split_retired(rows: list[list[int]], *, n_levels: int, codebook_size: int) -> tuple[np.ndarray, list[list[int]]]:
    """Retired IDs that can collide with this model's IDs (length L+1, codes < K), and the rest.

    After a retrain with another L or K, older IDs have another length or codes this
    model cannot produce: they can never be issued again, but they stay in the
    lineage's retired list.
    """
    fits = [r for r in rows if len(r) == n_levels + 1 and max(r) < codebook_size]
    other = [r for r in rows if not (len(r) == n_levels + 1 and max(r) < codebook_size)]
    return np.asarray(fits, dtype=np.int64).reshape(len(fits), n_levels + 1), other


def _remap_table(prior: dict[str, np.ndarray], item_ids: np.ndarray, sids: np.ndarray) -> pa.Table:
    """old_sid → new_sid for every item of either run (a retrain moves every ID into a new space)."""
    old = dict(zip(prior["item_ids"].tolist(), prior["sids"].tolist()))
    current = item_ids.tolist()
    present = set(current)
    removed = sorted(i for i in old if i not in present)
    return pa.table({
        "item_id": pa.array(current + removed, pa.string()),
        "old_sid": pa.array([old.get(i) for i in current] + [old[i] for i in removed], pa.string()),
        "new_sid": pa.array(sids.tolist() + [None] * len(removed), pa.string()),
        "status": pa.array(["remapped" if i in old else "new" for i in current] + ["removed"] * len(removed), pa.string()),
    })


def _codes_table(codes: np.ndarray) -> pa.Array:
    width = codes.shape[1]
    flat = pa.array(codes.astype(np.int32).ravel(), type=pa.int32())
    return pa.ListArray.from_arrays(pa.array(np.arange(0, len(flat) + 1, width, dtype=np.int32)), flat)


def _write_parts(out_dir: str, table: pa.Table, name: str) -> list[str]:
    uris = []
    for i, start in enumerate(range(0, max(table.num_rows, 1), PART_ROWS)):
        uri = storage.join(out_dir, name, f"part-{i:05d}.parquet")
        storage.write_parquet(table.slice(start, PART_ROWS), uri)
        uris.append(uri)
    return uris


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


def _assign(*, embeddings_uri: str, model_uri: str, work_uri: str, config: PipelineConfig, prior_run: str | None, retrain: bool) -> AssignResult:
    model = load_model(model_uri)
    L, K = model.config.n_levels, model.config.codebook_size
    device = "cuda" if ray.cluster_resources().get("GPU", 0) else "cpu"  # where the encoder actors run, not the driver
    dataset = read_vectors(embeddings_uri)
    n_blocks = max(1, config.assign.num_blocks)
    encoded = dataset.repartition(n_blocks).map_batches(
        ItemEncoder,
        fn_constructor_kwargs={"model_uri": model_uri, "device": device},
        batch_size=config.assign.batch_size,
        compute=ray.data.ActorPoolStrategy(size=1),
        num_gpus=1 if device == "cuda" else 0,
        num_cpus=1,
        batch_format="numpy",
        ray_remote_args_fn=actor_fault_tolerance,  # bounded actor restarts/retries, see tasks.embed
    )
    accumulator = MetricsAccumulator(n_levels=L, codebook_size=K)
    cols: dict[str, list[np.ndarray]] = {k: [] for k in ("item_id", "text_hash", "codes", "distance", "last_residual", "sq_err")}
    n_done = 0
    for batch in encoded.iter_batches(batch_size=None, batch_format="numpy"):
        n_done += len(batch["item_id"])
        progress.report("assign", n_done)
        accumulator.update_rows(sq_err=batch["sq_err"], abs_err=batch["abs_err"], cosine=batch["cosine"], dim=model.config.input_dim, codes=batch["codes"])
        for k in cols:
            cols[k].append(batch[k])
    data = {k: np.concatenate(v) for k, v in cols.items()}
    order = np.argsort(data["item_id"].astype(str), kind="stable")  # row order of the result never depends on Ray's
    data = {k: v[order] for k, v in data.items()}
    n = len(order)
    check_capacity(n_items=n, n_levels=L, codebook_size=K)

    last_residual = torch.from_numpy(np.ascontiguousarray(data["last_residual"]))

    def last_level_distances(idx: np.ndarray) -> np.ndarray:
        return model.last_level_distances(last_residual[idx]).numpy()

    changes = None
    retired = None
    drift = None
    if prior_run and not retrain:
        prior = _read_prior(prior_run)
        prior_retired, other_retired = _split_retired(prior["retired"], n_levels=L, codebook_size=K)
        stable = reassign_partitioned(
            item_ids=data["item_id"], text_hashes=data["text_hash"], codes=data["codes"], distances=data["distance"], codebook_size=K,
            prior_item_ids=prior["item_ids"], prior_text_hashes=prior["text_hashes"], prior_codes=prior["codes"],
            prior_retired=prior_retired, last_level_distances=last_level_distances,
        )
        final_codes = stable.codes
        retired = [r.tolist() for r in stable.retired] + other_retired
        sid = format_sid(final_codes)
        prior_sid = dict(zip(prior["item_ids"].tolist(), prior["sids"].tolist()))
        removed = stable.removed_item_ids.tolist()
        changes = pa.table({
            "item_id": pa.array(data["item_id"].tolist() + removed, pa.string()),
            "old_sid": pa.array([prior_sid.get(i) for i in data["item_id"].tolist()] + [prior_sid[i] for i in removed], pa.string()),
            "new_sid": pa.array(sid.tolist() + [None] * len(removed), pa.string()),
            "status": pa.array(stable.status.tolist() + ["removed"] * len(removed), pa.string()),
        })
        fresh = stable.status != "kept"
        drift = drift_report(
            sq_err=data["sq_err"][fresh], codes=data["codes"][fresh], dim=model.config.input_dim, codebook_size=K,
            prior_recon_mse=float(prior["quality"].get("recon_mse", 0.0)), prior_codes=prior["codes"], config=config.drift,
        )
        n_moved = 0
    else:
        occupied = None
        if prior_run:
            # Explicit retrain: every ID moves into the new model's space, and no ID ever issued
            # in this lineage (the prior run's and every retired one) is issued again. They all
            # become retired; the old→new map goes to changes/.
            prior = _read_prior(prior_run)
            lineage = [r.tolist() for r in prior["codes"]] + prior["retired"]
            occupied, other_retired = _split_retired(lineage, n_levels=L, codebook_size=K)
            occupied = np.unique(occupied, axis=0) if len(occupied) else occupied
            retired = [r.tolist() for r in occupied] + other_retired
        resolved = resolve_partitioned(item_ids=data["item_id"], codes=data["codes"], distances=data["distance"], codebook_size=K,
                                      last_level_distances=last_level_distances, occupied=occupied)
        final_codes, n_moved = resolved.codes, resolved.n_moved
        sid = format_sid(final_codes)
        if prior_run:  # explicit retrain: export the old→new map
            changes = _remap_table(prior, data["item_id"], sid)
    if len(np.unique(sid)) != n:
        raise RuntimeError("assign: semantic IDs are not unique; refusing to publish")

    ids_table = pa.table({
        "item_id": pa.array(data["item_id"].tolist(), pa.string()),
        "codes": _codes_table(final_codes),
        "sid": pa.array(sid.tolist(), pa.string()),
        "text_hash": pa.array(data["text_hash"].tolist(), pa.string()),
    })
    out_dir = stage_dir(work_uri, "assign")
    storage.remove(out_dir)
    _write_parts(out_dir, ids_table, "semantic_ids")
    if changes is not None:
        _write_parts(out_dir, changes, "changes")
    if retired is not None:
        _write_parts(out_dir, pa.table({"codes": pa.array(retired, pa.list_(pa.int32()))}), "retired")

    sample = np.sort(np.random.default_rng(0).permutation(n)[: min(n, 20_000)])
    vectors = _sample_vectors(embeddings_uri, set(data["item_id"][sample].tolist()))
    # The run's codes beside residual k-means on the same sampled embeddings (issue 8: IDs are the product).
    baseline = compare_with_residual_kmeans(
        vectors=vectors, codes=data["codes"][sample], recon_sq_err=data["sq_err"][sample], codebook_size=K,
        n_queries=min(2000, len(sample)), seed=0,
    ) if n > 1 else None  # one item has no neighbour to be coherent with
    metrics = accumulator.finalize(prefix_coherence=baseline["run"]["prefix_coherence"] if baseline else []).to_dict()
    per_item_mse = data["sq_err"] / model.config.input_dim
    counts_, edges = np.histogram(per_item_mse, bins=30)
    quality = {
        **metrics,
        "recon_error_histogram": {"edges": edges.tolist(), "counts": counts_.tolist()},
        "final_ids": {"unique": True, "n_moved": int(n_moved), "id_length": L + 1, "n_ids": n},
        "baseline": baseline,
    }
    if changes is not None:
        status = pc.value_counts(changes["status"]).to_pylist()
        quality["changes"] = {d["values"]: d["counts"] for d in status}
    if drift is not None:
        quality["drift"] = drift
    storage.write_json(storage.join(out_dir, "quality.json"), quality)
    return AssignResult(
        semantic_ids=storage.join(out_dir, "semantic_ids"),
        quality=storage.join(out_dir, "quality.json"),
        changes=storage.join(out_dir, "changes") if changes is not None else None,
        retired=storage.join(out_dir, "retired") if retired is not None else None,
        ided=n,
        removed=int(changes.num_rows - n) if changes is not None else None,
        device=device,
        n_moved=int(n_moved),
        unique_tuple_rate=metrics["unique_tuple_rate"],
        ids_hash=_ids_digest(data["item_id"], sid),
        n_retired=len(retired or []),
        drift=drift,
    )


def _ids_digest(item_ids: np.ndarray, sids: np.ndarray) -> str:
    """sha256 over "item_id\tsid\n" lines in item_id order: equal digests ⇔ identical ID tables."""
    h = hashlib.sha256()
    for start in range(0, len(sids), 100_000):
        chunk = "".join(f"{i}\t{s}\n" for i, s in zip(item_ids[start : start + 100_000].tolist(), sids[start : start + 100_000].tolist()))
        h.update(chunk.encode())
    return h.hexdigest()


def _sample_vectors(embeddings_uri: str, wanted: set[str]) -> np.ndarray:
    """Vectors of the sampled items, in item_id order (embedding parts are sorted by item_id)."""
    rows = []
    value_set = pa.array(sorted(wanted), pa.string())
    for uri in storage.list_parquet(embeddings_uri):
        t = storage.read_parquet(uri)
        t = t.filter(pc.is_in(t["item_id"], value_set=value_set))
        if t.num_rows:
            rows.append(vectors_matrix(t))
    return np.concatenate(rows)

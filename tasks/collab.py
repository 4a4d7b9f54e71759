"""Collaborative item vectors from user interactions, fused with the text embeddings (``semid run --interactions``).

Text says what an item *is*; interactions say what users consume *together*,
which is what a generative recommender has to predict. Measured on Beauty
(``semid evaluate``, same budget and seed), residual-quantizing the fused vectors
raised test Recall@10 well above text-only residual k-means: see the README.

The collaborative part is the standard item2vec-as-matrix-factorisation recipe
(Levy & Goldberg, 2014): count item pairs that occur within ``window`` positions
of each other in a user's sequence, take the positive pointwise mutual
information, and keep the top ``dim`` singular directions (``U·√S``). Each part is
L2-normalised, so ``weight`` alone sets how much interactions count against text:

    fused = [ text / ‖text‖ , weight · cf / ‖cf‖ ]

Items without interactions (cold items) get ``cf = 0``: their IDs follow text only.

Leakage: each user's last ``holdout_last`` items (after keeping only the run's
items, as ``semid evaluate`` does) are left out, so with the default 2 an
evaluation on the same file never sees its validation or test targets in the ID fit.

The whole computation runs in one Ray task (not on the driver), which returns a
small summary; the fused vectors are written next to the embed stage's, in the
same layout, one part per embeddings part.
"""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np
import pyarrow as pa
import ray

from tasks import storage
from tasks.config import CollabConfig
from tasks.embed import vectors_array, vectors_matrix
from tasks.evaluate.interactions import InteractionsError, read_interactions, restrict_to_known
from tasks.manifest import CollabResult, hash_of, run_stage, stage_dir


def cooccurrence_ppmi(sequences: list[np.ndarray], *, n_items: int, window: int):
    """Positive PMI of item pairs within ``window`` positions (both directions), as a CSR matrix."""
    import scipy.sparse as sp

    rows, cols = [], []
    for seq in sequences:
        for offset in range(1, window + 1):
            if len(seq) > offset:
                rows += [seq[:-offset], seq[offset:]]
                cols += [seq[offset:], seq[:-offset]]
    if not rows:
        return sp.csr_matrix((n_items, n_items), dtype=np.float64)
    r, c = np.concatenate(rows), np.concatenate(cols)
    counts = sp.coo_matrix((np.ones(len(r)), (r, c)), shape=(n_items, n_items)).tocsr()
    counts.sum_duplicates()
    counts.setdiag(0)  # an item repeated next to itself says nothing about what goes together
    counts.eliminate_zeros()
    total = counts.sum()
    row_sums, col_sums = np.asarray(counts.sum(1)).ravel(), np.asarray(counts.sum(0)).ravel()
    coo = counts.tocoo()
    pmi = np.log(coo.data * total / (row_sums[coo.row] * col_sums[coo.col]))
    keep = pmi > 0
    return sp.csr_matrix((pmi[keep], (coo.row[keep], coo.col[keep])), shape=(n_items, n_items))


def collaborative_vectors(ppmi, *, dim: int, seed: int) -> np.ndarray:
    """(n_items, dim) rows U·√S of the truncated SVD, L2-normalised; all-zero rows for items without interactions."""
    from scipy.sparse.linalg import svds

    n = ppmi.shape[0]
    out = np.zeros((n, dim), dtype=np.float64)
    k = min(dim, n - 1)
    if ppmi.nnz == 0 or k < 1:
        return out.astype(np.float32)
    u, s, _ = svds(ppmi, k=k, random_state=seed)
    order = np.argsort(-s)  # largest first, so column j means the same whatever svds returned
    cf = u[:, order] * np.sqrt(s[order])
    norms = np.linalg.norm(cf, axis=1, keepdims=True)
    out[:, :k] = np.divide(cf, norms, out=np.zeros_like(cf), where=norms > 1e-12)
    return out.astype(np.float32)


def fuse(text: np.ndarray, cf: np.ndarray, *, weight: float) -> np.ndarray:
    """[text/‖text‖, weight·cf]: both parts unit length, so ``weight`` sets their balance."""
    norms = np.linalg.norm(text, axis=1, keepdims=True)
    text = np.divide(text, norms, out=np.zeros_like(text), where=norms > 0)
    return np.concatenate([text, weight * cf], axis=1).astype(np.float32)


def _collab_job(*, files: list[str], interactions: str, out_dir: str, config: dict[str, Any], seed: int) -> dict[str, Any]:
    cfg = CollabConfig(**config)
    tables = [storage.read_parquet(f) for f in files]
    item_ids = [i for t in tables for i in t["item_id"].to_pylist()]
    index = {item: row for row, item in enumerate(item_ids)}
    text = np.concatenate([vectors_matrix(t) for t in tables])
    sequences, dropped = restrict_to_known(read_interactions(interactions), set(index), min_items=1)
    train = [np.array([index[i] for i in seq[: len(seq) - cfg.holdout_last]], dtype=np.int64) for seq in sequences.items]
    train = [s for s in train if len(s)]
    ppmi = cooccurrence_ppmi(train, n_items=len(item_ids), window=cfg.window)
    cf = collaborative_vectors(ppmi, dim=cfg.dim, seed=seed)
    fused = fuse(text, cf, weight=cfg.weight)
    start = 0
    for n, (f, t) in enumerate(zip(files, tables)):
        part = fused[start : start + t.num_rows]
        start += t.num_rows
        storage.write_parquet(pa.table({"item_id": t["item_id"], "text_hash": t["text_hash"], "vector": vectors_array(part)}),
                              storage.join(out_dir, f"part-{n:05d}.parquet"))
    with_cf = int((np.abs(cf).sum(1) > 0).sum())
    return {
        "items": len(item_ids), "dim": int(fused.shape[1]), "text_dim": int(text.shape[1]),
        "users": len(sequences.users), "interactions_used": int(sum(len(s) for s in train)),
        "items_with_interactions": with_cf, "cold_items": len(item_ids) - with_cf,
        "unknown_items": dropped.unknown_items, "unknown_interactions": dropped.unknown_interactions,
    }


def interactions_sha256(uri: str) -> str:
    try:
        return hashlib.sha256(storage.read_bytes(uri)).hexdigest()
    except FileNotFoundError as e:
        raise InteractionsError(f"interactions file not found: {uri}") from e


def collab_identity(interactions: str, config: CollabConfig) -> dict[str, str]:
    """What fused vectors depend on beyond the text embedder: part of the run's embedding identity.

    A frozen prior model only serves vectors from the same interactions and settings (another
    snapshot of the interactions is another vector space: use ``--reembed`` to refit)."""
    return {
        "interactions_sha256": interactions_sha256(interactions),
        "collab": f"dim={config.dim} weight={config.weight} window={config.window} holdout_last={config.holdout_last}",
    }


def collab(*, embeddings_uri: str, embeddings_hash: str, interactions: str, interactions_sha256: str, work_uri: str,
           config: CollabConfig, seed: int) -> CollabResult:
    """Fuse the run's text vectors with collaborative vectors learned from ``interactions`` (one Ray task).

    ``interactions_sha256``: from :func:`collab_identity`, which the flow computes before embedding.
    """
    sha = interactions_sha256
    files = storage.list_parquet(embeddings_uri)
    if not files:
        raise FileNotFoundError(f"no embeddings under {embeddings_uri}")

    def build() -> CollabResult:
        out_dir = stage_dir(work_uri, "collab")
        storage.remove(out_dir)
        job = ray.remote(_collab_job).options(num_cpus=1, max_retries=0)
        summary = ray.get(job.remote(files=files, interactions=interactions, out_dir=out_dir, config=config.model_dump(), seed=seed))
        return CollabResult(embeddings=out_dir, interactions=interactions, interactions_sha256=sha, cf_dim=config.dim,
                            weight=config.weight, window=config.window, holdout_last=config.holdout_last, **summary)

    return run_stage(work_uri=work_uri, result_type=CollabResult, input_hash=hash_of("collab", embeddings_hash, sha, config.model_dump(), seed), build=build)

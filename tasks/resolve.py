"""Collision resolution partitioned by the first-level code, identical to the single-process rules.

A collision group is a full L-tuple and overflow moves an item only to another
last-level code under the same (L-1)-prefix, so neither ever crosses the
first-level code (for L >= 2). Each first-level code is therefore an
independent problem: its items, plus the occupied IDs (kept + retired) that
start with that code. ``resolve_partitioned`` / ``reassign_partitioned`` split
the work that way and hand each partition to ``map_fn`` (``map`` in-process,
Ray tasks in the assign stage); the results are byte-identical to
``rqvae_core.ids.resolve_collisions`` / ``reassign_stable`` on the whole
catalog, which stay the reference (tests/tasks/test_resolve.py).

With L = 1 the first code is the last code, overflow may move between first
codes, and the whole catalog is one partition.
"""

from __future__ import annotations

from typing import Callable, Iterable, NamedTuple

import numpy as np

from rqvae_core.ids import IdAssignment, StableAssignment, check_capacity, resolve_collisions

MapFn = Callable[[Callable, Iterable], Iterable]


class Partition(NamedTuple):
    """One first-level code's share of the problem (rows are indices into the catalog arrays)."""

    rows: np.ndarray
    item_ids: np.ndarray
    codes: np.ndarray
    distances: np.ndarray
    occupied: np.ndarray


def partition_key(codes: np.ndarray) -> np.ndarray:
    """The partition of each row: its first-level code, or 0 for everything when L = 1."""
    codes = np.asarray(codes)
    return codes[:, 0].astype(np.int64) if codes.shape[1] >= 2 else np.zeros(codes.shape[0], dtype=np.int64)


def _split(item_ids: np.ndarray, codes: np.ndarray, distances: np.ndarray, occupied: np.ndarray) -> list[Partition]:
    key = partition_key(codes)
    occ_key = partition_key(occupied[:, : codes.shape[1]]) if occupied.shape[0] else np.zeros(0, dtype=np.int64)
    order = np.argsort(key, kind="stable")
    bounds = np.flatnonzero(np.diff(key[order])) + 1
    parts = []
    for rows in np.split(order, bounds) if order.size else []:
        c = key[rows[0]]
        parts.append(Partition(rows=rows, item_ids=item_ids[rows], codes=codes[rows], distances=distances[rows], occupied=occupied[occ_key == c]))
    return parts


def resolve_partition(part: Partition, *, codebook_size: int, last_level_distances: Callable[[np.ndarray], np.ndarray] | None) -> IdAssignment:
    """``resolve_collisions`` on one partition; the callback gets catalog row indices."""
    callback = None if last_level_distances is None else (lambda idx: last_level_distances(part.rows[idx]))
    return resolve_collisions(item_ids=part.item_ids, codes=part.codes, distances=part.distances, codebook_size=codebook_size,
                              last_level_distances=callback, occupied=part.occupied)


def merge(parts: list[Partition], results: list[IdAssignment], *, n: int, n_levels: int) -> IdAssignment:
    """Put partition results back in catalog row order; counts add, the largest group is the max."""
    out = np.empty((n, n_levels + 1), dtype=np.int32)
    groups = 0
    for part, res in zip(parts, results):
        out[part.rows] = res.codes
        groups += round(res.unique_tuple_rate * len(part.rows))
    return IdAssignment(
        codes=out,
        n_moved=sum(r.n_moved for r in results),
        largest_group=max((r.largest_group for r in results), default=0),
        unique_tuple_rate=groups / n if n else 1.0,
    )


def resolve_partitioned(*, item_ids: np.ndarray, codes: np.ndarray, distances: np.ndarray, codebook_size: int,
                        last_level_distances: Callable[[np.ndarray], np.ndarray] | None = None,
                        occupied: np.ndarray | None = None, map_fn: MapFn = map) -> IdAssignment:
    """``resolve_collisions`` computed one first-level code at a time (same IDs, same counts)."""
    codes = np.asarray(codes)
    n, n_levels = codes.shape
    ids = np.asarray(item_ids)
    ids = ids if ids.dtype.kind == "U" else ids.astype(str)
    occupied = np.zeros((0, n_levels + 1), dtype=np.int64) if occupied is None else np.asarray(occupied)
    check_capacity(n_items=n + len({tuple(r) for r in occupied.tolist()}), n_levels=n_levels, codebook_size=codebook_size)
    if len(np.unique(ids)) != n:  # across partitions too: the reference checks the whole catalog
        raise ValueError("item_ids must be unique")
    parts = _split(ids, codes, np.asarray(distances, dtype=np.float64).reshape(-1), occupied)
    results = list(map_fn(lambda p: resolve_partition(p, codebook_size=codebook_size, last_level_distances=last_level_distances), parts))
    return merge(parts, results, n=n, n_levels=n_levels)


def reassign_partitioned(*, item_ids: np.ndarray, text_hashes: np.ndarray, codes: np.ndarray, distances: np.ndarray,
                         codebook_size: int, prior_item_ids: np.ndarray, prior_text_hashes: np.ndarray,
                         prior_codes: np.ndarray, prior_retired: np.ndarray | None = None,
                         last_level_distances: Callable[[np.ndarray], np.ndarray] | None = None,
                         map_fn: MapFn = map) -> StableAssignment:
    """``reassign_stable`` with the fresh items resolved per first-level code.

    Every prior ID is either still held (kept) or retired, so the occupied IDs of a
    partition are exactly the prior IDs and prior retired IDs that start with its code.
    """
    ids = np.asarray(item_ids).astype(str)
    prior_ids = np.asarray(prior_item_ids).astype(str)
    hashes, prior_hashes = np.asarray(text_hashes).astype(str), np.asarray(prior_text_hashes).astype(str)
    codes = np.asarray(codes)
    n, n_levels = codes.shape
    prior_codes = np.asarray(prior_codes).reshape(-1, n_levels + 1)
    prior_retired = np.zeros((0, n_levels + 1), dtype=np.int64) if prior_retired is None else np.asarray(prior_retired)
    if len(np.unique(prior_ids)) != len(prior_ids):
        raise ValueError("prior_item_ids must be unique")
    if len(np.unique(ids)) != n:
        raise ValueError("item_ids must be unique")
    prior_order = np.argsort(prior_ids)
    pos = np.minimum(np.searchsorted(prior_ids[prior_order], ids), max(len(prior_ids) - 1, 0))
    matched = np.zeros(n, dtype=bool)
    prior_row = np.full(n, -1, dtype=np.int64)
    if len(prior_ids):
        matched = prior_ids[prior_order][pos] == ids
        prior_row[matched] = prior_order[pos[matched]]
    kept = matched.copy()
    kept[matched] = prior_hashes[prior_row[matched]] == hashes[matched]
    changed = matched & ~kept
    held = np.zeros(len(prior_ids), dtype=bool)
    held[prior_row[kept]] = True
    removed = np.ones(len(prior_ids), dtype=bool)
    removed[prior_row[matched]] = False
    retired_all = np.concatenate([prior_retired, prior_codes[~held]]).astype(np.int64)
    retired = np.unique(retired_all, axis=0).astype(np.int32) if len(retired_all) else retired_all.astype(np.int32)
    kept_codes = prior_codes[prior_row[kept]]
    occupied = np.concatenate([kept_codes, retired]).astype(np.int64)
    if len(np.unique(occupied, axis=0)) != len(occupied):
        raise ValueError("prior run is inconsistent: a kept ID is duplicated or also retired")

    todo = np.flatnonzero(~kept)
    callback = None if last_level_distances is None else (lambda idx: last_level_distances(todo[idx]))
    fresh = resolve_partitioned(item_ids=ids[todo], codes=codes[todo], distances=np.asarray(distances)[todo], codebook_size=codebook_size,
                                last_level_distances=callback, occupied=occupied, map_fn=map_fn)
    out = np.empty((n, n_levels + 1), dtype=np.int32)
    out[kept] = kept_codes
    out[todo] = fresh.codes
    status = np.where(kept, "kept", np.where(changed, "changed", "new")).astype("<U7")
    return StableAssignment(codes=out, status=status, removed_item_ids=prior_ids[removed], retired=retired)

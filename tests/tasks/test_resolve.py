"""Resolution partitioned by first-level code == the single-process reference, byte for byte."""

from __future__ import annotations

import numpy as np
import pytest

from rqvae_core.ids import IdSpaceError, reassign_stable, resolve_collisions
from tasks.resolve import reassign_partitioned, resolve_partitioned


def _catalog(n, *, n_levels, k, seed, skew=1.2, first_code=None):
    rng = np.random.default_rng(seed)
    p = 1.0 / np.arange(1, k + 1) ** skew
    codes = np.stack([rng.choice(k, size=n, p=p / p.sum()) for _ in range(n_levels)], axis=1)
    if first_code is not None:
        codes[:, 0] = first_code
    ids = np.array([f"item{j}" for j in rng.permutation(n)])
    dist = rng.random(n).round(2)  # ties -> item_id tie-break
    table = rng.random((n, k)).round(2)
    return ids, codes, dist, table


def _same(a, b):
    assert a.codes.dtype == b.codes.dtype and a.codes.tobytes() == b.codes.tobytes()
    assert (a.n_moved, a.largest_group) == (b.n_moved, b.largest_group)
    assert a.unique_tuple_rate == pytest.approx(b.unique_tuple_rate, abs=1e-12)


class PartitionsSeen:
    """A map_fn that records how many partitions ran (and runs them in reverse, to show order does not matter)."""

    def __init__(self):
        self.sizes = []

    def __call__(self, fn, parts):
        parts = list(parts)
        self.sizes = [len(p.rows) for p in parts]
        return list(reversed([fn(p) for p in reversed(parts)]))


@pytest.mark.parametrize("n,n_levels,k,skew,first_code,seed", [
    (3000, 3, 16, 0.6, None, 0),      # random, skewed
    (1200, 2, 16, 0.5, None, 1),      # groups overflow and move
    (300, 3, 8, 0.3, 3, 2),           # adversarial: one first-level code holds everything
    (600, 1, 32, 0.5, None, 3),       # L = 1: one partition
])
def test_partitioned_equals_reference(n, n_levels, k, skew, first_code, seed):
    ids, codes, dist, table = _catalog(n, n_levels=n_levels, k=k, seed=seed, skew=skew, first_code=first_code)
    for callback in (None, lambda idx: table[idx]):
        ref = resolve_collisions(item_ids=ids, codes=codes, distances=dist, codebook_size=k, last_level_distances=callback)
        seen = PartitionsSeen()
        got = resolve_partitioned(item_ids=ids, codes=codes, distances=dist, codebook_size=k, last_level_distances=callback, map_fn=seen)
        _same(got, ref)
        assert sum(seen.sizes) == n
        assert len(seen.sizes) == (1 if first_code is not None or n_levels == 1 else len(np.unique(codes[:, 0])))
    if n_levels < 3 or first_code is not None:
        assert ref.n_moved > 0, "the case is meant to exercise overflow"


def test_partitioned_stable_rerun_equals_reference_with_kept_and_retired_ids():
    k, n_levels = 16, 3
    ids, codes, dist, table = _catalog(1200, n_levels=n_levels, k=k, seed=5, skew=0.6)
    hashes = np.array([f"h-{i}" for i in ids])
    first = resolve_collisions(item_ids=ids, codes=codes, distances=dist, codebook_size=k)
    rng = np.random.default_rng(9)
    keep = rng.random(len(ids)) > 0.15
    cur_ids, cur_hashes, cur_codes, cur_dist = ids[keep], hashes[keep].copy(), codes[keep].copy(), dist[keep]
    changed = rng.random(len(cur_ids)) < 0.1
    cur_hashes[changed] = np.char.add(cur_hashes[changed], "-v2")
    new_ids = np.array([f"new{j}" for j in range(300)])
    new_codes = rng.integers(0, 2, size=(300, n_levels))  # crowd a few prefixes: overflow around kept IDs
    cur_ids = np.concatenate([cur_ids, new_ids])
    cur_hashes = np.concatenate([cur_hashes, np.char.add("h-", new_ids)])
    cur_codes = np.concatenate([cur_codes, new_codes])
    cur_dist = np.concatenate([cur_dist, rng.random(300).round(2)])
    lld_table = rng.random((len(cur_ids), k)).round(2)
    issued = {tuple(r) for r in first.codes.tolist()}
    free = [(a, 0, b, d) for a in (0, 1) for b in (0, 1) for d in range(k) if (a, 0, b, d) not in issued]
    prior_retired = np.array(free[::3], dtype=np.int32)  # IDs given out by an earlier run, in the crowded prefixes
    kwargs = dict(item_ids=cur_ids, text_hashes=cur_hashes, codes=cur_codes, distances=cur_dist, codebook_size=k,
                  prior_item_ids=ids, prior_text_hashes=hashes, prior_codes=first.codes, prior_retired=prior_retired,
                  last_level_distances=lambda idx: lld_table[idx])
    ref = reassign_stable(**kwargs)
    got = reassign_partitioned(**kwargs, map_fn=PartitionsSeen())
    assert got.codes.tobytes() == ref.codes.tobytes()
    assert got.status.tolist() == ref.status.tolist()
    assert sorted(got.removed_item_ids.tolist()) == sorted(ref.removed_item_ids.tolist())
    assert got.retired.tobytes() == ref.retired.tobytes()
    assert {"kept", "changed", "new"} == set(got.status.tolist()) and len(prior_retired) > 0


def test_partitioned_fails_like_the_reference():
    ids, codes, dist, _ = _catalog(100, n_levels=2, k=4, seed=1, first_code=0)
    with pytest.raises(IdSpaceError):
        resolve_collisions(item_ids=ids, codes=codes, distances=dist, codebook_size=4)
    with pytest.raises(IdSpaceError):
        resolve_partitioned(item_ids=ids, codes=codes, distances=dist, codebook_size=4)
    with pytest.raises(ValueError, match="unique"):
        resolve_partitioned(item_ids=np.array(["a", "a"]), codes=np.array([[0, 0], [1, 0]]), distances=np.zeros(2), codebook_size=4)

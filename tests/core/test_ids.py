"""Semantic-ID assignment: uniqueness, order independence, overflow, capacity, stability.

Most checks compare `resolve_collisions` with `_reference`, a plain-Python
transcription of the rules in DESIGN.md ("Semantic IDs"), so the vectorised
code is held to the spec rather than to itself.
"""

from __future__ import annotations

from collections import Counter, defaultdict

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rqvae_core.ids import (
    IdAssignment,
    IdSpaceError,
    StableAssignment,
    check_capacity,
    format_sid,
    reassign_stable,
    resolve_collisions,
)


def _reference(ids, codes, dist, k, table=None, occupied=()):
    """The spec, one item at a time (slow, obviously right)."""
    n, n_levels = codes.shape
    occ = {tuple(int(x) for x in r) for r in occupied}
    if n + len(occ) > k ** (n_levels + 1):
        raise IdSpaceError("global")
    ids, dist = [str(x) for x in ids], [float(x) for x in dist]
    tup = [tuple(int(x) for x in r) for r in codes]
    per_prefix = Counter(t[:-1] for t in tup) + Counter(o[: n_levels - 1] for o in occ)
    used = Counter(o[:n_levels] for o in occ)  # slots held per L-tuple
    groups = defaultdict(list)
    for i, t in enumerate(tup):
        groups[t].append(i)
    overflow = []
    for g, members in groups.items():
        members.sort(key=lambda i: (dist[i], ids[i]))
        free = k - used[g]
        overflow += members[free:]
        used[g] += min(len(members), free)
    if overflow and max(per_prefix[tup[i][:-1]] for i in overflow) > k * k:
        raise IdSpaceError("prefix")
    final, eff = list(tup), list(dist)
    for i in sorted(overflow, key=lambda i: (dist[i], ids[i])):
        prefix = tup[i][:-1]
        open_codes = [c for c in range(k) if used[prefix + (c,)] < k]
        c = min(open_codes, key=lambda c: (table[i][c], c)) if table is not None else open_codes[0]
        used[prefix + (c,)] += 1
        final[i] = prefix + (c,)
        if table is not None:
            eff[i] = float(table[i][c])
    out = np.zeros((n, n_levels + 1), dtype=np.int64)
    regroup = defaultdict(list)
    for i, t in enumerate(final):
        regroup[t].append(i)
    for g, members in regroup.items():
        members.sort(key=lambda i: (eff[i], ids[i]))
        free_slots = [d for d in range(k) if g + (d,) not in occ]
        assert len(members) <= len(free_slots)
        for i, d in zip(members, free_slots):
            out[i] = g + (d,)
    return out, len(overflow)


def _assert_unique(codes: np.ndarray) -> None:
    assert np.unique(codes, axis=0).shape[0] == codes.shape[0]


def _rows(codes: np.ndarray) -> set[tuple[int, ...]]:
    return {tuple(int(x) for x in r) for r in codes}


def _catalog(n: int, *, n_levels: int, k: int, seed: int, skew: float = 1.2):
    """Skewed synthetic codes so that collision groups actually happen."""
    rng = np.random.default_rng(seed)
    p = 1.0 / np.arange(1, k + 1) ** skew
    codes = np.stack([rng.choice(k, size=n, p=p / p.sum()) for _ in range(n_levels)], axis=1)
    ids = np.array([f"item{j}" for j in rng.permutation(n)])
    dist = rng.random(n).round(2)  # rounding creates distance ties -> item_id tie-break
    return ids, codes, dist


# ---------------------------------------------------------------------------
# basic rules


def test_unique_and_matches_reference():
    ids, codes, dist = _catalog(3000, n_levels=3, k=16, seed=0, skew=0.7)
    res = resolve_collisions(item_ids=ids, codes=codes, distances=dist, codebook_size=16)
    assert isinstance(res, IdAssignment)
    assert res.codes.shape == (3000, 4) and res.codes.dtype == np.int32
    _assert_unique(res.codes)
    expected, n_moved = _reference(ids, codes, dist, 16)
    np.testing.assert_array_equal(res.codes, expected)
    assert res.n_moved == n_moved > 0
    sizes = Counter(map(tuple, codes.tolist()))
    assert res.largest_group == max(sizes.values())
    assert res.unique_tuple_rate == pytest.approx(len(sizes) / 3000)


def test_rank_by_distance_then_item_id():
    codes = np.array([[1, 2]] * 4 + [[1, 3]])
    ids = np.array(["b", "z", "a", "c", "q"])
    dist = np.array([0.5, 0.1, 0.5, 0.3, 9.0])
    res = resolve_collisions(item_ids=ids, codes=codes, distances=dist, codebook_size=4)
    assert res.codes[:, 2].tolist() == [3, 0, 2, 1, 0]  # z, c, a(0.5), b(0.5); singleton q -> 0
    assert res.n_moved == 0 and res.largest_group == 4 and res.unique_tuple_rate == pytest.approx(2 / 5)


def test_shuffle_invariant():
    ids, codes, dist = _catalog(5000, n_levels=3, k=16, seed=1, skew=0.7)
    table = np.random.default_rng(2).random((5000, 16))
    base = resolve_collisions(item_ids=ids, codes=codes, distances=dist, codebook_size=16,
                              last_level_distances=lambda idx: table[idx])
    for seed in range(3):
        perm = np.random.default_rng(seed).permutation(5000)
        res = resolve_collisions(item_ids=ids[perm], codes=codes[perm], distances=dist[perm], codebook_size=16,
                                 last_level_distances=lambda idx: table[perm][idx])
        np.testing.assert_array_equal(res.codes, base.codes[perm])
        assert res[1:] == base[1:] and base.n_moved > 0


def test_partitioned_input_reassembled_in_other_order_is_identical():
    ids, codes, dist = _catalog(4000, n_levels=3, k=16, seed=3, skew=0.7)
    base = resolve_collisions(item_ids=ids, codes=codes, distances=dist, codebook_size=16)
    assert base.n_moved > 0
    parts = np.array_split(np.arange(4000), 7)[::-1]
    parts = [p[::-1] for p in parts]
    perm = np.concatenate(parts)
    res = resolve_collisions(item_ids=ids[perm], codes=codes[perm], distances=dist[perm], codebook_size=16)
    np.testing.assert_array_equal(res.codes, base.codes[perm])


def test_subset_with_whole_groups_gives_same_codes_for_those_groups():
    ids, codes, dist = _catalog(4000, n_levels=3, k=32, seed=4, skew=0.8)
    base = resolve_collisions(item_ids=ids, codes=codes, distances=dist, codebook_size=32)
    assert base.n_moved == 0 and base.largest_group > 3
    keys = codes @ np.array([32 * 32, 32, 1])
    big = np.unique(keys)[np.unique(keys, return_counts=True)[1] > 1][:20]
    whole = np.isin(keys, big)
    rng = np.random.default_rng(5)
    subset = np.flatnonzero(whole | (rng.random(4000) < 0.3))
    rng.shuffle(subset)
    res = resolve_collisions(item_ids=ids[subset], codes=codes[subset], distances=dist[subset], codebook_size=32)
    in_whole = whole[subset]
    np.testing.assert_array_equal(res.codes[in_whole], base.codes[subset][in_whole])


def test_duplicate_item_ids_rejected():
    with pytest.raises(ValueError, match="unique"):
        resolve_collisions(item_ids=np.array(["a", "b", "a"]), codes=np.zeros((3, 2), int),
                           distances=np.zeros(3), codebook_size=4)


def test_object_ids_and_empty_input():
    res = resolve_collisions(item_ids=np.array(["x", "y"], dtype=object), codes=np.array([[0], [0]]),
                             distances=np.array([1.0, 1.0]), codebook_size=2)
    assert res.codes.tolist() == [[0, 0], [0, 1]]
    empty = resolve_collisions(item_ids=np.array([], dtype=str), codes=np.zeros((0, 3), int),
                               distances=np.zeros(0), codebook_size=4)
    assert empty.codes.shape == (0, 4) and empty.n_moved == 0


# ---------------------------------------------------------------------------
# overflow and capacity


def test_overflow_group_of_1000_moves_to_nearest_free_code_under_same_prefix():
    k, n = 256, 1000
    rng = np.random.default_rng(6)
    codes = np.tile([3, 7, 9], (n, 1))
    # code 10 under the same prefix is already full: nobody may move there even though it is nearest
    full = np.tile([3, 7, 10], (k, 1))
    all_codes = np.concatenate([codes, full])
    ids = np.array([f"it{j:05d}" for j in range(n + k)])
    dist = rng.random(n + k)
    table = rng.random((n + k, k)) + 0.5
    table[:, 10] = 0.0
    table[:, 9] = 0.0
    preferred = rng.integers(20, 30, size=n + k)  # each item has a favourite code among 20..29
    table[np.arange(n + k), preferred] = 0.1
    calls = []

    def last_level_distances(idx):
        calls.append(len(idx))
        return table[idx]

    res = resolve_collisions(item_ids=ids, codes=all_codes, distances=dist, codebook_size=k,
                             last_level_distances=last_level_distances)
    _assert_unique(res.codes)
    assert res.n_moved == n - k and res.largest_group == n and calls
    assert (res.codes[:, :2] == [3, 7]).all()  # moved items keep the (L-1)-prefix
    moved = res.codes[:n, 2] != 9
    assert moved.sum() == n - k
    assert not (res.codes[:n, 2] == 10).any()
    # the K nearest (distance, item_id) stay in the original group, the rest moved
    stay_order = np.lexsort((ids[:n], dist[:n]))
    assert set(np.flatnonzero(~moved)) == set(stay_order[:k])
    # 744 movers, favourites spread over 10 codes of room 256: everyone gets their favourite
    np.testing.assert_array_equal(res.codes[:n][moved, 2], preferred[:n][moved])
    expected, _ = _reference(ids, all_codes, dist, k, table=table)
    np.testing.assert_array_equal(res.codes, expected)


def test_overflow_competition_for_scarce_room_is_greedy_in_distance_order():
    k = 4
    # group (0, 0) has 9 items: 5 overflow; codes 1 and 2 have room 1 each, code 3 room 4
    codes = np.array([[0, 0]] * 9 + [[0, 1]] * 3 + [[0, 2]] * 3)
    ids = np.array([f"i{j}" for j in range(15)])
    dist = np.arange(15, dtype=float) / 10
    table = np.tile([9.0, 1.0, 2.0, 3.0], (15, 1))  # everyone prefers 1, then 2, then 3
    res = resolve_collisions(item_ids=ids, codes=codes, distances=dist, codebook_size=k,
                             last_level_distances=lambda idx: table[idx])
    assert res.codes[4:9, 1].tolist() == [1, 2, 3, 3, 3]
    expected, _ = _reference(ids, codes, dist, k, table=table)
    np.testing.assert_array_equal(res.codes, expected)
    # without a callback: lowest-numbered code with room
    res = resolve_collisions(item_ids=ids, codes=codes, distances=dist, codebook_size=k)
    assert res.codes[4:9, 1].tolist() == [1, 2, 3, 3, 3]


def test_moved_items_rerank_by_new_distance():
    k = 2
    codes = np.array([[0, 0]] * 3 + [[0, 1]])
    ids = np.array(["a", "b", "c", "d"])
    dist = np.array([0.1, 0.2, 0.3, 0.5])
    table = np.array([[0, 0.0]] * 3 + [[0, 0.5]]) + np.array([[0, 0], [0, 0], [0, 0.05], [0, 0]])
    res = resolve_collisions(item_ids=ids, codes=codes, distances=dist, codebook_size=k,
                             last_level_distances=lambda idx: table[idx])
    # c overflows to code 1; there its distance 0.05 beats d's 0.5, so c takes slot 0
    assert res.codes.tolist() == [[0, 0, 0], [0, 0, 1], [0, 1, 0], [0, 1, 1]]


def test_id_space_error_when_catalog_cannot_fit():
    with pytest.raises(IdSpaceError):
        resolve_collisions(item_ids=np.array(list("abcde")), codes=np.zeros((5, 1), int),
                           distances=np.zeros(5), codebook_size=2)
    # fits globally (8 IDs) but one (L-1)-prefix holds 5 > K*K = 4 items
    with pytest.raises(IdSpaceError, match=r"5 items") as err:
        resolve_collisions(item_ids=np.array(list("abcde")), codes=np.array([[0, 0]] * 4 + [[0, 1]]),
                           distances=np.zeros(5), codebook_size=2)
    assert isinstance(err.value, ValueError) and "4" in str(err.value)


def test_check_capacity_message_has_the_numbers():
    check_capacity(n_items=16, n_levels=3, codebook_size=2)
    with pytest.raises(IdSpaceError) as err:
        check_capacity(n_items=17, n_levels=3, codebook_size=2)
    msg = str(err.value)
    assert "17" in msg and "16" in msg and "2**4" in msg


# ---------------------------------------------------------------------------
# occupied slots


def test_occupied_slots_are_skipped_in_rank_order():
    codes = np.array([[1, 2]] * 3 + [[1, 3]])
    ids = np.array(["a", "b", "c", "d"])
    dist = np.array([0.3, 0.1, 0.2, 0.0])
    occupied = np.array([[1, 2, 0], [1, 2, 2], [1, 2, 2], [1, 3, 1]])
    res = resolve_collisions(item_ids=ids, codes=codes, distances=dist, codebook_size=8, occupied=occupied)
    assert res.codes.tolist() == [[1, 2, 4], [1, 2, 1], [1, 2, 3], [1, 3, 0]]
    assert not (_rows(res.codes) & _rows(occupied))


def test_occupied_full_group_forces_move_and_counts_capacity():
    k = 2
    occupied = np.array([[0, 0, 0], [0, 0, 1], [0, 1, 0]])
    res = resolve_collisions(item_ids=np.array(["x"]), codes=np.array([[0, 0]]), distances=np.zeros(1),
                             codebook_size=k, occupied=occupied)
    assert res.codes.tolist() == [[0, 1, 1]] and res.n_moved == 1
    with pytest.raises(IdSpaceError):
        resolve_collisions(item_ids=np.array(["x", "y"]), codes=np.array([[0, 0], [0, 1]]), distances=np.zeros(2),
                           codebook_size=k, occupied=occupied)


# ---------------------------------------------------------------------------
# property test against the reference


@st.composite
def _problems(draw):
    k = draw(st.integers(2, 4))
    n_levels = draw(st.integers(1, 3))
    n = draw(st.integers(0, 40))
    codes = np.array(draw(st.lists(st.lists(st.integers(0, k - 1), min_size=n_levels, max_size=n_levels),
                                   min_size=n, max_size=n)), dtype=np.int64).reshape(n, n_levels)
    dist = np.array(draw(st.lists(st.sampled_from([0.0, 0.5, 1.0, 2.0]), min_size=n, max_size=n)))
    ids = np.array([str(p) for p in draw(st.permutations(range(n)))], dtype=str)  # "10" < "9": string order
    table = None
    if draw(st.booleans()):
        table = np.array(draw(st.lists(st.sampled_from([0.0, 1.0, 2.0]), min_size=n * k, max_size=n * k))).reshape(n, k)
    m = draw(st.integers(0, 12))
    occupied = np.array(draw(st.lists(st.lists(st.integers(0, k - 1), min_size=n_levels + 1, max_size=n_levels + 1),
                                      min_size=m, max_size=m)), dtype=np.int64).reshape(m, n_levels + 1)
    perm = np.array(draw(st.permutations(range(n))), dtype=np.int64)
    return k, codes, dist, ids, table, occupied, perm


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_problems())
def test_property_unique_shuffle_invariant_and_matches_reference(problem):
    k, codes, dist, ids, table, occupied, perm = problem

    def run(rows):
        cb = None if table is None else (lambda idx: table[rows][idx])
        return resolve_collisions(item_ids=ids[rows], codes=codes[rows], distances=dist[rows], codebook_size=k,
                                  last_level_distances=cb, occupied=occupied)

    try:
        expected, n_moved = _reference(ids, codes, dist, k, table=table, occupied=occupied)
    except IdSpaceError:
        with pytest.raises(IdSpaceError):
            run(np.arange(len(ids)))
        return
    res = run(np.arange(len(ids)))
    np.testing.assert_array_equal(res.codes, expected)
    assert res.n_moved == n_moved
    _assert_unique(res.codes)
    assert not (_rows(res.codes) & _rows(occupied))
    np.testing.assert_array_equal(run(perm).codes, res.codes[perm])


# ---------------------------------------------------------------------------
# stable re-assignment


def test_reassign_stable_over_successive_runs():
    k, n_levels = 16, 3
    rng = np.random.default_rng(7)
    p = 1.0 / np.arange(1, k + 1) ** 0.8
    p /= p.sum()

    def fresh_codes(count):
        return rng.choice(k, size=(count, n_levels), p=p), rng.random(count)

    ids = np.array([f"sku-{j}" for j in range(1500)])
    hashes = np.array([f"h{j}-0" for j in range(1500)])
    codes, dist = fresh_codes(1500)
    first = resolve_collisions(item_ids=ids, codes=codes, distances=dist, codebook_size=k)
    prior_ids, prior_hashes, prior_codes = ids, hashes, first.codes
    retired = None
    ever_issued = _rows(first.codes)
    next_id = 1500
    for run in range(1, 6):
        keep = rng.random(prior_ids.size) > 0.1  # 10% removed
        cur_ids, cur_hashes = prior_ids[keep].copy(), prior_hashes[keep].copy()
        cur_codes, cur_dist = codes[keep].copy(), dist[keep].copy()
        change = rng.random(cur_ids.size) < 0.05
        cur_hashes[change] = np.char.add(cur_hashes[change], f"-v{run}")
        cur_codes[change], cur_dist[change] = fresh_codes(int(change.sum()))
        n_new = 200
        cur_ids = np.concatenate([cur_ids, [f"sku-{j}" for j in range(next_id, next_id + n_new)]])
        cur_hashes = np.concatenate([cur_hashes, [f"h{j}-0" for j in range(next_id, next_id + n_new)]])
        new_codes, new_dist = fresh_codes(n_new)
        cur_codes, cur_dist = np.concatenate([cur_codes, new_codes]), np.concatenate([cur_dist, new_dist])
        next_id += n_new
        shuffle = rng.permutation(cur_ids.size)  # row order must not matter
        cur_ids, cur_hashes, cur_codes, cur_dist = cur_ids[shuffle], cur_hashes[shuffle], cur_codes[shuffle], cur_dist[shuffle]

        res = reassign_stable(item_ids=cur_ids, text_hashes=cur_hashes, codes=cur_codes, distances=cur_dist,
                              codebook_size=k, prior_item_ids=prior_ids, prior_text_hashes=prior_hashes,
                              prior_codes=prior_codes, prior_retired=retired)
        assert isinstance(res, StableAssignment)
        _assert_unique(res.codes)
        prior_by_id = dict(zip(prior_ids.tolist(), map(tuple, prior_codes.tolist())))
        prior_hash = dict(zip(prior_ids.tolist(), prior_hashes.tolist()))
        for i, item in enumerate(cur_ids.tolist()):
            expected = "new" if item not in prior_by_id else ("kept" if prior_hash[item] == cur_hashes[i] else "changed")
            assert res.status[i] == expected
        kept = res.status == "kept"
        assert kept.sum() > 0.8 * cur_ids.size
        # 100% of unchanged items keep their exact ID
        assert all(tuple(res.codes[i].tolist()) == prior_by_id[cur_ids[i]] for i in np.flatnonzero(kept))
        fresh = _rows(res.codes[~kept])
        assert not fresh & _rows(res.codes[kept])  # new never collide with kept
        assert not fresh & ever_issued  # no ID ever issued (and retired) is reissued
        changed = res.status == "changed"
        assert changed.sum() > 0 and all(tuple(res.codes[i].tolist()) != prior_by_id[cur_ids[i]] for i in np.flatnonzero(changed))
        assert set(res.removed_item_ids.tolist()) == set(prior_ids.tolist()) - set(cur_ids.tolist())
        # retired = everything issued and no longer held
        assert _rows(res.retired) == ever_issued - _rows(res.codes)
        if retired is not None:
            assert _rows(retired) <= _rows(res.retired)
        ever_issued |= fresh
        prior_ids, prior_hashes, prior_codes, retired = cur_ids, cur_hashes, res.codes, res.retired
        codes, dist = cur_codes, cur_dist


def test_reassign_stable_without_prior_is_plain_resolution():
    ids, codes, dist = _catalog(500, n_levels=3, k=8, seed=8, skew=0.5)
    res = reassign_stable(item_ids=ids, text_hashes=ids, codes=codes, distances=dist, codebook_size=8,
                          prior_item_ids=np.array([], dtype=str), prior_text_hashes=np.array([], dtype=str),
                          prior_codes=np.zeros((0, 4), dtype=np.int32))
    assert (res.status == "new").all() and res.retired.shape == (0, 4) and res.removed_item_ids.size == 0
    np.testing.assert_array_equal(res.codes, resolve_collisions(item_ids=ids, codes=codes, distances=dist,
                                                                codebook_size=8).codes)


def test_reassign_stable_rejects_inconsistent_prior():
    with pytest.raises(ValueError, match="inconsistent"):
        reassign_stable(item_ids=np.array(["a"]), text_hashes=np.array(["h"]), codes=np.array([[0]]),
                        distances=np.zeros(1), codebook_size=4, prior_item_ids=np.array(["a"]),
                        prior_text_hashes=np.array(["h"]), prior_codes=np.array([[0, 0]]),
                        prior_retired=np.array([[0, 0]]))


# ---------------------------------------------------------------------------
# formatting


def test_format_sid():
    assert format_sid(np.array([[12, 200, 5, 0], [0, 0, 0, 1]], dtype=np.int32)).tolist() == ["12-200-5-0", "0-0-0-1"]
    assert format_sid(np.zeros((0, 4), dtype=np.int32)).shape == (0,)
    big = np.random.default_rng(9).integers(0, 256, size=(200_000, 4))
    sids = format_sid(big)
    assert sids.shape == (200_000,) and sids[17] == "-".join(map(str, big[17]))


def test_negative_and_signed_zero_distances_order_like_floats():
    rng = np.random.default_rng(10)
    dist = rng.choice([-2.5, -1e-300, -0.0, 0.0, 1e-300, 3.0, 1.0000000000000002, 1.0], size=60)
    codes = np.zeros((60, 2), dtype=np.int64)
    codes[:, 1] = rng.integers(0, 2, size=60)
    ids = np.array([f"n{j}" for j in rng.permutation(60)])
    res = resolve_collisions(item_ids=ids, codes=codes, distances=dist, codebook_size=64)
    np.testing.assert_array_equal(res.codes, _reference(ids, codes, dist, 64)[0])


def test_overflow_into_group_known_only_from_occupied_slots():
    # (0,1) exists only as occupied slots, (0,2) has items: both receive one mover each
    codes = np.array([[0, 0]] * 5 + [[0, 2]] * 2)
    ids = np.array([f"r{j}" for j in range(7)])
    dist = np.arange(7, dtype=float)
    occupied = np.array([[0, 1, 0], [0, 1, 1]])
    res = resolve_collisions(item_ids=ids, codes=codes, distances=dist, codebook_size=3, occupied=occupied)
    np.testing.assert_array_equal(res.codes, _reference(ids, codes, dist, 3, occupied=occupied)[0])
    assert res.codes[3:5].tolist() == [[0, 1, 2], [0, 2, 0]] and res.n_moved == 2  # r4 is nearer than r5, r6


@pytest.mark.parametrize("k, n_levels", [(256, 4), (65536, 4)])  # wide group keys; K**L beyond int64 packing
def test_wide_id_spaces_match_reference(k, n_levels):
    rng = np.random.default_rng(11)
    codes = rng.integers(0, 3, size=(300, n_levels))
    codes[:, 0] = rng.choice([0, k - 1], size=300)
    ids = np.array([f"w{j}" for j in rng.permutation(300)])
    dist = rng.integers(0, 4, size=300).astype(float)
    occupied = np.concatenate([codes[:20], rng.integers(0, 3, size=(20, 1))], axis=1)
    res = resolve_collisions(item_ids=ids, codes=codes, distances=dist, codebook_size=k, occupied=occupied)
    np.testing.assert_array_equal(res.codes, _reference(ids, codes, dist, k, occupied=occupied)[0])
    stable = reassign_stable(item_ids=ids, text_hashes=ids, codes=codes, distances=dist, codebook_size=k,
                             prior_item_ids=ids[:150], prior_text_hashes=ids[:150], prior_codes=res.codes[:150])
    np.testing.assert_array_equal(stable.codes[:150], res.codes[:150])
    _assert_unique(stable.codes)


def test_occupied_keys_beyond_int64_packing():
    k, n_levels = 256, 7  # K**L fits int64, K**(L+1) does not
    codes = np.array([[255] * n_levels] * 3 + [[1] * n_levels])
    ids = np.array(["a", "b", "c", "d"])
    occupied = np.array([[255] * n_levels + [0], [255] * n_levels + [1]])
    res = resolve_collisions(item_ids=ids, codes=codes, distances=np.array([0.1, 0.2, 0.3, 0.0]),
                             codebook_size=k, occupied=occupied)
    assert res.codes[:, -1].tolist() == [2, 3, 4, 0]

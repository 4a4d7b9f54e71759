"""Semantic IDs: from RQ codes to unique, fixed-length, stable item IDs.

An RQ-VAE gives every item L codes. Two items can share all L of them (a
*collision group*), so TIGER appends one more code, the disambiguation code,
and a catalog's IDs are the (L+1)-tuples. This module does that assignment in
a way public implementations do not:

* **Deterministic and order-independent.** Within a group the disambiguation
  code is the rank of the item by (distance to the group's shared quantized
  vector, item_id). Nothing depends on row order or on how the catalog was
  partitioned, so a re-run, a shuffled file or a distributed job give the same
  IDs.
* **Never longer than L+1.** A group with more than K items cannot be told
  apart by one code in [0, K). Its farthest items ("overflow") move to the
  nearest last-level code under the same (L-1)-prefix that still has room,
  exactly as a sequential greedy pass in (distance, item_id) order would
  place them. Only when a whole prefix holds more than K*K IDs is the catalog
  impossible, and then we fail loudly with the counts (`IdSpaceError`).
* **O(N log N) and vectorised.** Everything is sorting and grouping of packed
  int64 keys; no Python loop runs per item. The overflow placement is a
  vectorised deferred-acceptance loop whose rounds are bounded by K.
* **Stable across runs.** `reassign_stable` keeps the exact ID of every
  unchanged item, never reissues an ID that was ever given out and let go,
  and places new items in the free slots only.

numpy only, so it runs the same in a notebook, a Ray worker or a test.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, NamedTuple

import numpy as np

_INT64_SAFE = 2**62  # headroom below 2**63 for packed sort keys
_CALLBACK_CHUNK = 1 << 14  # rows per last_level_distances call: bounds memory to chunk x K floats (32 MB at K=256)
_HASH_CHUNK = 1 << 15  # rows per id-hashing block (fits in L2)


class IdSpaceError(ValueError):
    """The catalog (plus occupied IDs) cannot get unique IDs of length L+1."""


class IdAssignment(NamedTuple):
    codes: np.ndarray  # (N, L+1) int32: L RQ codes (last level possibly moved) + disambiguation code
    n_moved: int  # items moved to another last-level code because their group exceeded K
    largest_group: int  # largest collision group before disambiguation (original codes)
    unique_tuple_rate: float  # distinct L-tuples / N before disambiguation (1.0 for N = 0)


class StableAssignment(NamedTuple):
    codes: np.ndarray  # (N, L+1) int32 for the current items, row-aligned with the input
    status: np.ndarray  # (N,) str: "kept" | "new" | "changed"
    removed_item_ids: np.ndarray  # prior items absent now
    retired: np.ndarray  # (R, L+1) int32: every ID ever issued and no longer held; never reissued


# ---------------------------------------------------------------------------
# capacity


def check_capacity(*, n_items: int, n_levels: int, codebook_size: int) -> None:
    """Fail before any work when the ID space is too small for the catalog.

    L levels of K codes plus one disambiguation code give K**(L+1) IDs; a
    catalog larger than that cannot be served whatever the codes are, and the
    user needs the numbers to pick a bigger K or L.
    """
    capacity = codebook_size ** (n_levels + 1)
    if n_items > capacity:
        raise IdSpaceError(
            f"{n_items} IDs are needed but {n_levels} levels x {codebook_size} codes + 1 "
            f"disambiguation code give only {codebook_size}**{n_levels + 1} = {capacity} IDs; "
            f"raise codebook_size or n_levels"
        )


# ---------------------------------------------------------------------------
# small vectorised helpers


def _as_str_ids(item_ids: np.ndarray) -> np.ndarray:
    """item_ids as a numpy unicode array: ties are broken by string order, whatever the input type."""
    ids = np.asarray(item_ids)
    if ids.ndim != 1:
        raise ValueError(f"item_ids must be 1-D, got shape {ids.shape}")
    return ids if ids.dtype.kind == "U" else ids.astype(str)


def _dense_rank(values: np.ndarray) -> tuple[np.ndarray, int]:
    """Rank of each value among the distinct values (equal values, equal rank).

    Shrinks wide group keys to small ints so they pack with a distance into
    one sort key.
    """
    n = values.shape[0]
    if n == 0:
        return np.zeros(0, dtype=np.int64), 0
    order = np.argsort(values)
    v = values[order]
    new = np.empty(n, dtype=bool)
    new[0] = True
    np.not_equal(v[1:], v[:-1], out=new[1:])
    rank = np.empty(n, dtype=np.int64)
    rank[order] = np.cumsum(new) - 1
    return rank, int(rank[order[-1]]) + 1


def _sorted_unique(values: np.ndarray) -> np.ndarray:
    """np.unique via sort + diff: numpy's hash-based unique is far slower on 10M int64."""
    if values.size == 0:
        return values.copy()
    v = np.sort(values)
    keep = np.empty(v.size, dtype=bool)
    keep[0] = True
    np.not_equal(v[1:], v[:-1], out=keep[1:])
    return v[keep]


def _check_unique_ids(ids: np.ndarray, *, what: str = "item_ids") -> None:
    """Raise if an id repeats. A 64-bit FNV-style hash of the raw UCS4 words, sorted,
    is ~3x faster than sorting 10M strings; hash collisions are re-checked on the strings."""
    n = ids.shape[0]
    if n < 2:
        return
    words = np.ascontiguousarray(ids).view(np.uint32).reshape(n, -1)
    if words.shape[1] % 2 == 0:
        words = words.view(np.uint64)
    h = np.empty(n, dtype=np.uint64)
    prime = np.uint64(1099511628211)
    for lo in range(0, n, _HASH_CHUNK):  # row chunks keep the strided column reads in cache
        hc = h[lo : lo + _HASH_CHUNK]
        hc[:] = 14695981039346656037
        for j in range(words.shape[1]):
            hc ^= words[lo : lo + _HASH_CHUNK, j]
            hc *= prime
    hs = np.sort(h)
    dup = hs[1:] == hs[:-1]
    if not dup.any():
        return
    suspect = np.sort(ids[np.isin(h, hs[1:][dup])])
    same = suspect[1:] == suspect[:-1]
    if same.any():
        examples = _sorted_unique(suspect[1:][same])[:5].tolist()
        raise ValueError(f"{what} must be unique; duplicated: {examples}")


def _group_starts(sorted_keys: np.ndarray) -> np.ndarray:
    """Boolean mask: True where a run of equal keys starts (input already sorted)."""
    starts = np.empty(sorted_keys.shape[0], dtype=bool)
    if starts.size:
        starts[0] = True
        np.not_equal(sorted_keys[1:], sorted_keys[:-1], out=starts[1:])
    return starts


def _rank_in_runs(starts: np.ndarray) -> np.ndarray:
    """0-based position of each element inside its run of equal keys."""
    pos = np.arange(starts.shape[0], dtype=np.int64)
    first = np.where(starts, pos, 0)
    np.maximum.accumulate(first, out=first)
    return np.subtract(pos, first, out=pos)


def _float_sort_bits(x: np.ndarray) -> np.ndarray:
    """Monotone float64 -> uint64 map (the IEEE-754 radix-sort trick), with -0.0 == 0.0.

    Lets a distance share one integer sort key with its group instead of
    needing a second sort pass.
    """
    bits = np.add(x, 0.0, dtype=np.float64).view(np.int64)  # fresh copy; + 0.0 turns -0.0 into 0.0
    neg = bits < 0
    bits[neg] ^= np.int64(0x7FFFFFFFFFFFFFFF)  # negatives: larger magnitude sorts lower
    out = bits.view(np.uint64)
    out ^= np.uint64(1 << 63)
    return out


def _group_order(*, group: np.ndarray, distance: np.ndarray, item_ids: np.ndarray) -> np.ndarray:
    """Row order sorted by (group, distance, item_id), independent of input order.

    One fast argsort on a packed uint64 key: the group in the high bits, the
    leading bits of the distance's order-preserving bit pattern below. Rows
    whose keys tie (equal distances, or distances equal in those leading
    bits) are then re-sorted exactly by (distance, item_id); that subset is
    usually tiny, so strings are almost never compared.
    """
    n = group.shape[0]
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    g = group.astype(np.int64, copy=False)
    if int(g.max()).bit_length() > 31:
        g, _ = _dense_rank(g)  # keep >= 32 bits for the distance
    shift = 63 - max(int(g.max()).bit_length(), 1)
    key = _float_sort_bits(distance)
    key >>= np.uint64(64 - shift)
    key |= g.astype(np.uint64) << np.uint64(shift)
    order = np.argsort(key)
    ks = key[order]
    del key
    tie = ks[1:] == ks[:-1]
    if tie.any():
        t = np.flatnonzero(tie)
        pos = _sorted_unique(np.concatenate([t, t + 1]))  # sorted positions inside a tied run
        starts = np.ones(pos.shape[0], dtype=bool)
        starts[1:] = ~((pos[1:] == pos[:-1] + 1) & tie[pos[:-1]])
        run = np.cumsum(starts)
        sub = order[pos]
        order[pos] = sub[np.lexsort((item_ids[sub], distance[sub], run))]
    return order


# ---------------------------------------------------------------------------
# keys


def _prefix_keys(item_codes: np.ndarray, occupied_codes: np.ndarray, *, codebook_size: int) -> tuple[np.ndarray, np.ndarray]:
    """An int64 id for each row's (L-1)-prefix, comparable between items and occupied rows.

    Packed base-K when K**L fits comfortably in int64 (all practical configs);
    otherwise a joint dense rank of the prefix rows. Only identity matters:
    groups are never ordered against each other.
    """
    n_levels = item_codes.shape[1]
    n, m = item_codes.shape[0], occupied_codes.shape[0]
    if n_levels == 1:
        return np.zeros(n, dtype=np.int64), np.zeros(m, dtype=np.int64)
    if codebook_size**n_levels < _INT64_SAFE:
        weights = codebook_size ** np.arange(n_levels - 2, -1, -1, dtype=np.int64)
        return item_codes[:, :-1].astype(np.int64) @ weights, occupied_codes[:, :-1].astype(np.int64) @ weights
    both = np.concatenate([item_codes[:, :-1], occupied_codes[:, :-1]]).astype(np.int64)
    _, inverse = np.unique(both, axis=0, return_inverse=True)
    inverse = inverse.reshape(-1).astype(np.int64)
    return inverse[:n], inverse[n:]


@dataclass(frozen=True)
class _Occupancy:
    """Occupied disambiguation slots per group, shaped for vectorised "r-th free slot" queries.

    For one group with sorted occupied slots o_0 < o_1 < ..., let a_i = o_i - i
    (free slots below o_i). The r-th free slot is r + #{i : a_i <= r}: one
    searchsorted per item, no per-group loop.
    """

    groups: np.ndarray  # sorted unique group keys that hold occupied slots
    counts: np.ndarray  # occupied slots per group
    gap_keys: np.ndarray  # sorted group_index * (K+1) + a_i
    codebook_size: int

    @classmethod
    def build(cls, *, group: np.ndarray, slot: np.ndarray, codebook_size: int) -> _Occupancy:
        k = codebook_size
        dense = group.size > 0 and int(group.max()) >= _INT64_SAFE // k  # group * K would overflow int64
        gkey = _dense_rank(group)[0] if dense else group
        key = _sorted_unique(gkey * k + slot)  # sorted, repeated occupied rows counted once
        g, s = key // k, key % k
        starts = _group_starts(g)
        groups = _sorted_unique(group)[g[starts]] if dense else g[starts]
        counts = np.diff(np.append(np.flatnonzero(starts), g.shape[0]))
        gap = s - _rank_in_runs(starts)
        gidx = np.cumsum(starts) - 1
        return cls(groups=groups, counts=counts, gap_keys=gidx * (k + 1) + gap, codebook_size=k)

    @property
    def n_slots(self) -> int:
        return int(self.counts.sum())

    def lookup(self, group: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(index into self.groups, whether the group holds occupied slots)."""
        gi = np.searchsorted(self.groups, group)
        found = gi < self.groups.shape[0]
        found[found] = self.groups[gi[found]] == group[found]
        return gi, found

    def free_slot(self, *, group: np.ndarray, rank: np.ndarray) -> np.ndarray:
        """Slot of the rank-th free disambiguation code of each group (>= K means none left)."""
        slot = rank.astype(np.int64, copy=True)
        if self.groups.size == 0 or group.size == 0:
            return slot
        gi, found = self.lookup(group)
        base = gi[found] * (self.codebook_size + 1)
        r = np.minimum(slot[found], self.codebook_size)
        below = np.searchsorted(self.gap_keys, base + r, side="right") - np.searchsorted(self.gap_keys, base, side="left")
        slot[found] += below
        return slot


# ---------------------------------------------------------------------------
# overflow placement


def _preference_dtype(codebook_size: int) -> type:
    return np.uint8 if codebook_size <= 256 else np.uint16 if codebook_size <= 65536 else np.int32


def _callback_rows(fn: Callable[[np.ndarray], np.ndarray], idx: np.ndarray, codebook_size: int) -> np.ndarray:
    d = np.asarray(fn(idx), dtype=np.float64)
    if d.shape != (idx.shape[0], codebook_size):
        raise ValueError(f"last_level_distances returned shape {d.shape}, expected {(idx.shape[0], codebook_size)}")
    if np.isnan(d).any():
        raise ValueError("last_level_distances returned NaN")
    return d


def _deferred_acceptance(*, preference: np.ndarray, pref_row: np.ndarray, prefix_row: np.ndarray,
                         room: np.ndarray, codebook_size: int) -> np.ndarray:
    """Place items (given in priority order) into codes with limited room.

    Every code ranks proposers by the same priority (position in the input),
    so deferred acceptance returns exactly what a one-by-one greedy pass in
    priority order returns (each item takes its best code with room left) —
    but in vectorised rounds: all unplaced items propose to their next
    choice, each code keeps its best `room` candidates, the rest move on.
    """
    k = codebook_size
    n = pref_row.shape[0]
    ptr = np.zeros(n, dtype=np.int64)
    held = np.full(n, -1, dtype=np.int64)  # flat key prefix_row * K + code, -1 = unplaced
    active = np.arange(n, dtype=np.int64)
    while active.size:
        if int(ptr[active].max()) >= k:
            raise AssertionError("overflow placement ran out of codes although capacity was checked")
        code = preference[pref_row[active], ptr[active]].astype(np.int64)
        key = prefix_row[active] * k + code
        holders = np.flatnonzero(held >= 0)
        holders = holders[np.isin(held[holders], key)]
        cand = np.concatenate([active, holders])
        ckey = np.concatenate([key, held[holders]])
        if int(ckey.max()) < _INT64_SAFE // n:
            s = np.argsort(ckey * n + cand)  # cand index is the priority
        else:
            s = np.lexsort((cand, ckey))
        cand, ckey = cand[s], ckey[s]
        accept = _rank_in_runs(_group_starts(ckey)) < room[ckey]
        held[cand[accept]] = ckey[accept]
        active = cand[~accept]
        held[active] = -1
        ptr[active] += 1
    return held % k


def _place_overflow(*, over: np.ndarray, prefix: np.ndarray, codes: np.ndarray, item_ids: np.ndarray, distances: np.ndarray,
                    group_keys: np.ndarray, group_sizes: np.ndarray, occ: _Occupancy, codebook_size: int,
                    last_level_distances: Callable[[np.ndarray], np.ndarray] | None) -> tuple[np.ndarray, np.ndarray]:
    """New last-level code and new distance for each overflow item (rows `over`).

    Room of a code = K - occupied - items already holding a slot there. Items
    are served in (distance, item_id) order, each to the nearest code with
    room (nearest by `last_level_distances`; without it, all codes count as
    equally far and the lowest-numbered code with room wins). A moved item's
    distance becomes its distance to the new group's quantized vector, which
    is the callback's value at the new code (without a callback it keeps its
    old distance: no better estimate exists).
    """
    k = codebook_size
    over = over[_group_order(group=np.zeros(over.shape[0], dtype=np.int64), distance=distances[over], item_ids=item_ids[over])]
    prefixes = _sorted_unique(prefix[over])
    prefix_row = np.searchsorted(prefixes, prefix[over])

    room = np.full((prefixes.shape[0], k), k, dtype=np.int64)
    n_items = np.zeros(prefixes.shape[0], dtype=np.int64)
    for keys, counts, is_items in ((group_keys, group_sizes, True), (occ.groups, occ.counts, False)):
        row = np.searchsorted(prefixes, keys // k)
        hit = row < prefixes.shape[0]
        hit[hit] = prefixes[row[hit]] == keys[hit] // k
        np.subtract.at(room, (row[hit], keys[hit] % k), counts[hit])
        if is_items:
            np.add.at(n_items, row[hit], counts[hit])
    n_occupied = k * k - n_items - room.sum(axis=1)  # room sums K - occ - items over all K codes
    np.maximum(room, 0, out=room)

    demand = np.bincount(prefix_row, minlength=prefixes.shape[0])
    short = np.flatnonzero(room.sum(axis=1) < demand)
    if short.size:
        i = short[0]
        example = tuple(int(c) for c in codes[over[np.flatnonzero(prefix_row == i)[0]], :-1])
        raise IdSpaceError(
            f"{short.size} (L-1)-prefix(es) cannot hold their items; e.g. prefix {example} holds "
            f"{int(n_items[i])} items + {int(n_occupied[i])} occupied IDs but only K*K = {k * k} IDs exist "
            f"under one prefix (K = {k}); raise codebook_size or n_levels, or retrain for better code balance"
        )

    if last_level_distances is None:
        # identical preferences: codes with room first, in code order (stable sort)
        preference = np.argsort(room == 0, axis=1, kind="stable").astype(_preference_dtype(k))
        pref_row = prefix_row
    else:
        preference = np.empty((over.shape[0], k), dtype=_preference_dtype(k))
        for lo in range(0, over.shape[0], _CALLBACK_CHUNK):
            sl = slice(lo, lo + _CALLBACK_CHUNK)
            d = _callback_rows(last_level_distances, over[sl], k)
            d[room[prefix_row[sl]] == 0] = np.inf  # full codes last; ties by code number (stable)
            preference[sl] = np.argsort(d, axis=1, kind="stable")
        pref_row = np.arange(over.shape[0])

    new_code = _deferred_acceptance(preference=preference, pref_row=pref_row, prefix_row=prefix_row,
                                    room=room.reshape(-1), codebook_size=k)
    new_distance = distances[over].copy()
    if last_level_distances is not None:
        for lo in range(0, over.shape[0], _CALLBACK_CHUNK):
            sl = slice(lo, lo + _CALLBACK_CHUNK)
            d = _callback_rows(last_level_distances, over[sl], k)
            new_distance[sl] = d[np.arange(d.shape[0]), new_code[sl]]
    back = np.argsort(over)  # from priority order back to row order
    return new_code[back], new_distance[back]  # aligned with np.sort(over)


def _rows_of_groups(*, wanted: np.ndarray, group_keys: np.ndarray, group_start: np.ndarray,
                    group_sizes: np.ndarray, order: np.ndarray) -> np.ndarray:
    """Rows of the groups `wanted` (sorted keys; absent ones skipped), read as runs of the sorted order.

    O(rows returned) instead of an O(N) membership test over the whole catalog.
    """
    gi = np.searchsorted(group_keys, wanted)
    present = gi < group_keys.shape[0]
    present[present] = group_keys[gi[present]] == wanted[present]
    gi = gi[present]
    lens = group_sizes[gi]
    offsets = np.cumsum(lens) - lens
    idx = np.repeat(group_start[gi] - offsets, lens) + np.arange(int(lens.sum()))
    return order[idx]


# ---------------------------------------------------------------------------
# public API


def _validate_codes(codes: np.ndarray, *, codebook_size: int, what: str) -> np.ndarray:
    codes = np.asarray(codes)
    if codes.ndim != 2 or codes.shape[1] < 1:
        raise ValueError(f"{what} must be a 2-D (N, L) array with L >= 1, got shape {codes.shape}")
    if codes.size and not np.issubdtype(codes.dtype, np.integer):
        raise ValueError(f"{what} must be integers, got {codes.dtype}")
    if codes.size and (codes.min() < 0 or codes.max() >= codebook_size):
        raise ValueError(f"{what} must lie in [0, {codebook_size}), got [{codes.min()}, {codes.max()}]")
    return codes.astype(np.int64, copy=False)


def resolve_collisions(
    *,
    item_ids: np.ndarray,
    codes: np.ndarray,
    distances: np.ndarray,
    codebook_size: int,
    last_level_distances: Callable[[np.ndarray], np.ndarray] | None = None,
    occupied: np.ndarray | None = None,
) -> IdAssignment:
    """Give every item a unique (L+1)-code ID.

    item_ids: (N,) unique ids (compared as strings for tie-breaks).
    codes: (N, L) RQ codes. distances: (N,) each item's distance to its
    quantized vector (same codes => same vector, so this orders a group).
    last_level_distances(idx) -> (len(idx), K): distance of those rows'
    level-L residual to each last-level codeword, in the same metric as
    `distances`; used to move overflow items to the nearest code with room.
    occupied: (M, L+1) IDs that must not be issued (kept + retired IDs of
    earlier runs); new items take the free slots of their group in rank order.
    """
    k = int(codebook_size)
    if k < 1:
        raise ValueError(f"codebook_size must be >= 1, got {codebook_size}")
    codes = _validate_codes(codes, codebook_size=k, what="codes")
    n, n_levels = codes.shape
    ids = _as_str_ids(item_ids)
    distances = np.asarray(distances, dtype=np.float64).reshape(-1)
    if ids.shape[0] != n or distances.shape[0] != n:
        raise ValueError(f"item_ids ({ids.shape[0]}), codes ({n}) and distances ({distances.shape[0]}) must have the same length")
    if n and not np.isfinite(distances).all():
        raise ValueError("distances must be finite")
    if occupied is None:
        occupied = np.zeros((0, n_levels + 1), dtype=np.int64)
    occupied = _validate_codes(occupied, codebook_size=k, what="occupied")
    if occupied.shape[1] != n_levels + 1:
        raise ValueError(f"occupied must have L+1 = {n_levels + 1} columns, got {occupied.shape[1]}")
    _check_unique_ids(ids)

    item_prefix, occ_prefix = _prefix_keys(codes, occupied[:, :n_levels], codebook_size=k)
    group = item_prefix * k + codes[:, -1]
    occ = _Occupancy.build(group=occ_prefix * k + occupied[:, n_levels - 1], slot=occupied[:, -1], codebook_size=k)
    check_capacity(n_items=n + occ.n_slots, n_levels=n_levels, codebook_size=k)
    if n == 0:
        return IdAssignment(np.zeros((0, n_levels + 1), dtype=np.int32), 0, 0, 1.0)

    # first pass: rank inside the original groups, skipping occupied slots
    order = _group_order(group=group, distance=distances, item_ids=ids)
    sorted_group = group[order]
    starts = _group_starts(sorted_group)
    group_keys = sorted_group[starts]
    group_start = np.flatnonzero(starts)
    group_sizes = np.diff(np.append(group_start, n))
    slot = np.empty(n, dtype=np.int64)
    slot[order] = occ.free_slot(group=sorted_group, rank=_rank_in_runs(starts))
    del sorted_group, starts

    last = codes[:, -1].copy()
    over = np.flatnonzero(slot >= k)
    if over.size:
        new_code, new_distance = _place_overflow(
            over=over, prefix=item_prefix, codes=codes, item_ids=ids, distances=distances, group_keys=group_keys,
            group_sizes=group_sizes, occ=occ, codebook_size=k, last_level_distances=last_level_distances,
        )
        last[over] = new_code
        group[over] = item_prefix[over] * k + new_code
        # second pass: re-rank only the groups that received moved items. Their earlier
        # members are contiguous runs of the first-pass order (a group that overflowed had
        # no room, so it received nobody and the movers are not among them).
        stay = _rows_of_groups(wanted=_sorted_unique(group[over]), group_keys=group_keys,
                               group_start=group_start, group_sizes=group_sizes, order=order)
        members = np.concatenate([stay, over])
        member_distance = np.concatenate([distances[stay], new_distance])
        sub_order = _group_order(group=group[members], distance=member_distance, item_ids=ids[members])
        sub = members[sub_order]
        sub_group = group[sub]
        sub_slot = occ.free_slot(group=sub_group, rank=_rank_in_runs(_group_starts(sub_group)))
        if sub_slot.size and int(sub_slot.max()) >= k:
            raise AssertionError("a group still overflows after placement; this is a bug")
        slot[sub] = sub_slot

    out = np.empty((n, n_levels + 1), dtype=np.int32)
    out[:, : n_levels - 1] = codes[:, :-1]
    out[:, n_levels - 1] = last
    out[:, n_levels] = slot
    return IdAssignment(
        codes=out,
        n_moved=int(over.size),
        largest_group=int(group_sizes.max()),
        unique_tuple_rate=float(group_keys.shape[0] / n),
    )


def _row_keys(rows: np.ndarray, *, codebook_size: int) -> np.ndarray:
    """One int64 per (L+1)-row, equal iff rows are equal (packed when it fits, else a dense rank)."""
    rows = rows.astype(np.int64, copy=False)
    if codebook_size ** rows.shape[1] < _INT64_SAFE:
        return rows @ (codebook_size ** np.arange(rows.shape[1] - 1, -1, -1, dtype=np.int64))
    _, inverse = np.unique(rows, axis=0, return_inverse=True)
    return inverse.reshape(-1).astype(np.int64)


def _unique_rows(rows: np.ndarray, *, codebook_size: int) -> np.ndarray:
    if rows.shape[0] == 0:
        return rows.astype(np.int32)
    keys = _row_keys(rows, codebook_size=codebook_size)
    order = np.argsort(keys)
    first = _group_starts(keys[order])
    return rows[order[first]].astype(np.int32)


def reassign_stable(
    *,
    item_ids: np.ndarray,
    text_hashes: np.ndarray,
    codes: np.ndarray,
    distances: np.ndarray,
    codebook_size: int,
    prior_item_ids: np.ndarray,
    prior_text_hashes: np.ndarray,
    prior_codes: np.ndarray,
    prior_retired: np.ndarray | None = None,
    last_level_distances: Callable[[np.ndarray], np.ndarray] | None = None,
) -> StableAssignment:
    """IDs for today's catalog that keep yesterday's IDs wherever the item did not change.

    kept (same item_id, same text hash): exactly its prior ID. changed (same
    id, new hash): a fresh ID; the old one is retired. new: a fresh ID.
    removed: the ID is retired. Fresh IDs come from `resolve_collisions`
    with kept + retired as occupied, so they collide with no kept ID and no
    ID ever issued is handed to a different item. `codes`/`distances` come
    from the reused (frozen) model; `last_level_distances` takes row indices
    into the current arrays.
    """
    k = int(codebook_size)
    ids = _as_str_ids(item_ids)
    prior_ids = _as_str_ids(prior_item_ids)
    codes = _validate_codes(codes, codebook_size=k, what="codes")
    n, n_levels = codes.shape
    prior_codes = _validate_codes(prior_codes, codebook_size=k, what="prior_codes")
    if prior_codes.shape != (prior_ids.shape[0], n_levels + 1):
        raise ValueError(f"prior_codes must be ({prior_ids.shape[0]}, {n_levels + 1}), got {prior_codes.shape}")
    if prior_retired is None:
        prior_retired = np.zeros((0, n_levels + 1), dtype=np.int64)
    prior_retired = _validate_codes(prior_retired, codebook_size=k, what="prior_retired")
    if prior_retired.shape[1] != n_levels + 1:
        raise ValueError(f"prior_retired must have L+1 = {n_levels + 1} columns, got {prior_retired.shape[1]}")
    hashes, prior_hashes = np.asarray(text_hashes), np.asarray(prior_text_hashes)
    distances = np.asarray(distances, dtype=np.float64).reshape(-1)
    if ids.shape != (n,) or hashes.shape != (n,) or distances.shape != (n,):
        raise ValueError(f"item_ids, text_hashes and distances must have one entry per row of codes ({n})")
    if prior_hashes.shape != prior_ids.shape:
        raise ValueError("prior_text_hashes must have one entry per prior item")
    if hashes.dtype.kind != prior_hashes.dtype.kind:
        hashes, prior_hashes = hashes.astype(str), prior_hashes.astype(str)

    # join on item_id: sort both sides once, then a monotone searchsorted
    prior_order = np.argsort(prior_ids)
    prior_sorted = prior_ids[prior_order]
    if (prior_sorted[1:] == prior_sorted[:-1]).any():
        raise ValueError("prior_item_ids must be unique")
    cur_order = np.argsort(ids)
    cur_sorted = ids[cur_order]
    if (cur_sorted[1:] == cur_sorted[:-1]).any():
        raise ValueError("item_ids must be unique")
    if prior_sorted.size:
        pos_sorted = np.minimum(np.searchsorted(prior_sorted, cur_sorted), prior_sorted.size - 1)
        hit_sorted = prior_sorted[pos_sorted] == cur_sorted
    else:
        pos_sorted, hit_sorted = np.zeros(n, dtype=np.int64), np.zeros(n, dtype=bool)
    prior_row = np.full(n, -1, dtype=np.int64)
    prior_row[cur_order[hit_sorted]] = prior_order[pos_sorted[hit_sorted]]
    matched = prior_row >= 0
    kept = matched.copy()
    kept[matched] = prior_hashes[prior_row[matched]] == hashes[matched]
    changed = matched & ~kept

    still_held = np.zeros(prior_ids.shape[0], dtype=bool)
    still_held[prior_row[kept]] = True
    freed = prior_codes[~still_held]  # removed items + changed items' old IDs
    removed = np.ones(prior_ids.shape[0], dtype=bool)
    removed[prior_row[matched]] = False

    kept_codes = prior_codes[prior_row[kept]]
    retired = _unique_rows(np.concatenate([prior_retired, freed]), codebook_size=k)
    keys = _row_keys(np.concatenate([kept_codes, retired]), codebook_size=k)
    if _sorted_unique(keys).shape[0] != keys.shape[0]:
        raise ValueError("prior run is inconsistent: a kept ID is duplicated or also retired")

    todo = np.flatnonzero(~kept)
    callback = None if last_level_distances is None else (lambda idx: last_level_distances(todo[idx]))
    fresh = resolve_collisions(
        item_ids=ids[todo], codes=codes[todo], distances=distances[todo],
        codebook_size=k, last_level_distances=callback, occupied=np.concatenate([kept_codes, retired]),
    )
    out = np.empty((n, n_levels + 1), dtype=np.int32)
    out[kept] = kept_codes
    out[todo] = fresh.codes
    status = np.where(kept, "kept", np.where(changed, "changed", "new")).astype("<U7")
    return StableAssignment(codes=out, status=status, removed_item_ids=prior_ids[removed], retired=retired)


def format_sid(codes: np.ndarray) -> np.ndarray:
    """"12-200-5-0" strings for (N, C) codes: the human/Parquet form of an ID, one ufunc pass per column."""
    codes = np.asarray(codes)
    if codes.ndim != 2 or codes.shape[1] < 1:
        raise ValueError(f"codes must be 2-D (N, C) with C >= 1, got shape {codes.shape}")
    out = codes[:, 0].astype(np.int64).astype(np.str_)
    for j in range(1, codes.shape[1]):
        out = np.strings.add(np.strings.add(out, "-"), codes[:, j].astype(np.int64).astype(np.str_))
    return out

"""The TIGER leave-one-out split, as index arrays.

Per user: the last item is the test target, the second-to-last the
validation target, and every earlier position is a training target whose
history is the items before it (at most ``max_history``, the most recent).
Training therefore never sees a user's validation or test interaction, and
validation never sees the test one. Histories are stored left-aligned in a
fixed-width int32 matrix padded with -1, so batches are built with numpy
indexing rather than Python loops.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tasks.evaluate.interactions import MIN_ITEMS

PAD = -1


@dataclass(frozen=True)
class Examples:
    """(history, target) pairs; ``user`` is the row of the user in the input sequences."""

    history: np.ndarray  # (n, max_history) int32 item rows, PAD-padded at the end
    target: np.ndarray  # (n,) int32 item row
    user: np.ndarray  # (n,) int32
    position: np.ndarray  # (n,) int32: index of the target in the user's sequence

    def __len__(self) -> int:
        return int(self.target.shape[0])

    def lengths(self) -> np.ndarray:
        return (self.history != PAD).sum(axis=1)

    def take(self, idx: np.ndarray) -> "Examples":
        return Examples(history=self.history[idx], target=self.target[idx], user=self.user[idx], position=self.position[idx])


@dataclass(frozen=True)
class Split:
    train: Examples
    validation: Examples
    test: Examples
    max_history: int


def _examples(seqs: list[np.ndarray], users: np.ndarray, positions: np.ndarray, max_history: int) -> Examples:
    n = users.shape[0]
    hist = np.full((n, max_history), PAD, dtype=np.int32)
    target = np.empty(n, dtype=np.int32)
    for row, (u, p) in enumerate(zip(users.tolist(), positions.tolist())):
        s = seqs[u]
        h = s[max(0, p - max_history) : p]
        hist[row, : h.shape[0]] = h
        target[row] = s[p]
    return Examples(history=hist, target=target, user=users.astype(np.int32), position=positions.astype(np.int32))


def leave_one_out(sequences: list[np.ndarray], *, max_history: int = 20) -> Split:
    """Split item-row sequences (one int array per user, time order) by the TIGER protocol."""
    if max_history < 1:
        raise ValueError(f"max_history must be >= 1, got {max_history}")
    seqs = [np.asarray(s, dtype=np.int32) for s in sequences]
    lengths = np.array([s.shape[0] for s in seqs], dtype=np.int64)
    if lengths.size and lengths.min() < MIN_ITEMS:
        raise ValueError(f"every user needs >= {MIN_ITEMS} items; drop short users first (restrict_to_known does)")
    all_users = np.arange(len(seqs))
    n_train = np.maximum(lengths - 3, 0)  # targets at positions 1 .. n-3
    train_users = np.repeat(all_users, n_train)
    starts = np.repeat(np.cumsum(n_train) - n_train, n_train)
    train_pos = (np.arange(train_users.shape[0]) - starts + 1) if train_users.size else np.zeros(0, dtype=np.int64)
    return Split(
        train=_examples(seqs, train_users, train_pos, max_history),
        validation=_examples(seqs, all_users, lengths - 2, max_history),
        test=_examples(seqs, all_users, lengths - 1, max_history),
        max_history=max_history,
    )

"""The ID-free next-item reference: exact ranks, training split only."""

import numpy as np
import pytest

from tasks.evaluate import reference
from tasks.evaluate.split import leave_one_out


def _dense_ranks(model: reference.Transitions, prev: np.ndarray, target: np.ndarray, n_items: int) -> np.ndarray:
    """Brute force: sort every item by (count desc, popularity desc, row asc) and find the target."""
    counts = np.zeros((n_items, n_items), dtype=np.int64)
    for a in range(n_items):
        lo, hi = model.indptr[a], model.indptr[a + 1]
        counts[a, model.indices[lo:hi]] = model.counts[lo:hi]
    out = []
    for a, b in zip(prev.tolist(), target.tolist()):
        order = np.lexsort((np.arange(n_items), -model.popularity, -counts[a]))
        out.append(int(np.flatnonzero(order == b)[0]))
    return np.array(out)


def test_hand_computed_ranks():
    seqs = [np.array(s) for s in ([0, 1, 5, 2, 3], [0, 1, 5, 3, 4], [0, 2, 5, 1, 2], [4, 0, 1, 2, 0, 1])]
    split = leave_one_out(seqs, max_history=20)
    model = reference.fit_transitions(split.train, n_items=6)
    # training targets are positions 1..n-3, so the pairs (last history item -> target) are
    # 0->1, 1->5 | 0->1, 1->5 | 0->2, 2->5 | 4->0, 0->1, 1->2
    row0 = model.indices[model.indptr[0]:model.indptr[1]].tolist(), model.counts[model.indptr[0]:model.indptr[1]].tolist()
    assert row0 == ([1, 2], [3, 1])
    assert model.popularity.tolist() == [1, 3, 2, 0, 0, 3]  # how often each item is a training target
    assert np.argsort(model.order).tolist() == [1, 5, 2, 0, 3, 4]  # popularity order, ties (1 and 5; 3 and 4) by row
    # test examples: last history item -> test target
    assert reference.last_items(split.test).tolist() == [2, 3, 1, 0] and split.test.target.tolist() == [3, 4, 2, 1]
    ranks = reference.target_ranks(model, split.test)
    # user 0: 3 never followed 2; ahead: the follower 5, then the non-followers before 3 in popularity order (1, 2, 0) -> 4
    # user 1: 3 never ended a training history: popularity order alone, 4 is last -> 5
    # user 2: after 1: 5 (twice) then 2 (once) -> 1
    # user 3: after 0: 1 (three times) first -> 0
    assert ranks.tolist() == [4, 5, 1, 0]
    assert ranks.tolist() == _dense_ranks(model, reference.last_items(split.test), split.test.target, 6).tolist()


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_sparse_ranks_equal_brute_force(seed):
    rng = np.random.default_rng(seed)
    n_items = 30
    seqs = [rng.integers(0, n_items, size=rng.integers(3, 12)) for _ in range(60)]
    split = leave_one_out(seqs, max_history=4)
    model = reference.fit_transitions(split.train, n_items=n_items)
    for examples in (split.train, split.validation, split.test):
        got = reference.target_ranks(model, examples)
        assert got.tolist() == _dense_ranks(model, reference.last_items(examples), examples.target, n_items).tolist()


def test_fitted_on_training_targets_only_and_scores_a_learnable_chain():
    # every user walks the chain i -> i+1; the held-out last two steps never enter the counts
    seqs = [np.arange(start, start + 6) % 20 for start in range(20)]
    split = leave_one_out(seqs, max_history=20)
    changed = [s.copy() for s in seqs]
    for s in changed:
        s[-2:] = (s[-2:] + 7) % 20  # other validation and test items
    a, b = (reference.fit_transitions(leave_one_out(x, max_history=20).train, n_items=20) for x in (seqs, changed))
    for field in ("indptr", "indices", "counts", "popularity", "order"):
        assert getattr(a, field).tolist() == getattr(b, field).tolist(), field
    metrics = reference.score(split, n_items=20)
    assert metrics["recall@5"].mean == 1.0 and metrics["ndcg@5"].mean == 1.0  # the chain's next item is always ranked first


def test_bad_rows_are_refused():
    split = leave_one_out([np.array([0, 1, 2, 3, 4])], max_history=20)  # trains 0->1, 1->2
    with pytest.raises(ValueError, match=r"item rows must lie in \[0, 2\)"):
        reference.fit_transitions(split.train, n_items=2)

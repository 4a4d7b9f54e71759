import math

import numpy as np
import pytest

from tasks.evaluate import metrics as M
from tasks.evaluate.split import PAD, leave_one_out


def test_leave_one_out_never_trains_on_validation_or_test():
    rng = np.random.default_rng(0)
    seqs = [rng.permutation(100)[: rng.integers(3, 40)] for _ in range(50)]
    sp = leave_one_out(seqs, max_history=5)
    assert len(sp.validation) == len(sp.test) == 50
    assert len(sp.train) == sum(len(s) - 3 for s in seqs)
    for u, s in enumerate(seqs):
        n = len(s)
        rows = sp.train.user == u
        # training targets are positions 1..n-3; histories only hold earlier positions (< n-2)
        assert set(sp.train.position[rows].tolist()) == set(range(1, n - 2))
        assert s[n - 1] not in set(sp.train.target[rows]) | set(sp.train.history[rows].ravel())
        assert s[n - 2] not in set(sp.train.target[rows]) | set(sp.train.history[rows].ravel())
        assert sp.test.target[u] == s[-1] and sp.validation.target[u] == s[-2]
        h = sp.test.history[u]
        assert h[h != PAD].tolist() == s[-6:-1].tolist()  # capped at the 5 most recent
    assert (sp.train.lengths() <= 5).all()


def test_split_rejects_short_users():
    with pytest.raises(ValueError, match=">= 3 items"):
        leave_one_out([np.array([1, 2])])


def test_metrics_match_hand_computed():
    ranked = np.array([[7, 3, 9], [1, 2, 3], [4, 5, 6], [0, -1, -1]])
    target = np.array([3, 1, 8, 0])
    ranks = M.target_ranks(ranked, target)
    assert ranks.tolist() == [1, 0, -1, 0]
    m = M.summarize(ranks)
    assert m["recall@5"].mean == pytest.approx(3 / 4)
    ndcg = [1 / math.log2(3), 1.0, 0.0, 1.0]
    assert m["ndcg@10"].mean == pytest.approx(np.mean(ndcg))
    assert m["ndcg@10"].se == pytest.approx(np.std(ndcg, ddof=1) / 2)
    assert m["recall@5"].se == pytest.approx(np.std([1, 1, 0, 1], ddof=1) / 2)


def test_rank_beyond_cutoff_counts_for_10_not_5():
    ranks = np.array([6])
    m = M.summarize(ranks)
    assert m["recall@5"].mean == 0 and m["recall@10"].mean == 1
    assert m["ndcg@10"].mean == pytest.approx(1 / math.log2(8))


def test_combine_seeds():
    c = M.combine_seeds([M.Metric(0.1, 0.01), M.Metric(0.2, 0.02)])
    assert c.mean == pytest.approx(0.15)
    assert c.se == pytest.approx(math.sqrt((0.01**2 + 0.02**2) / 2 + np.var([0.1, 0.2], ddof=1) / 2))
    assert M.combine_seeds([M.Metric(0.3, 0.05)]) == M.Metric(0.3, 0.05)


def _result(name: str, seed: int, users: list[str], ranks: list[int]):
    from tasks.evaluate.engine import EvalResult

    return EvalResult(name=name, seed=seed, metrics={}, curve=[], steps=1, best_step=1, stopped="budget", train_seconds=0.0,
                      eval_seconds=0.0, cpu_seconds=0.0, n_users=len(users), n_train_examples=1, device="cpu",
                      test_users=tuple(users), test_ranks=tuple(ranks))


def test_paired_difference_matches_users_by_id_within_each_shared_seed():
    from tasks.evaluate.engine import paired_difference

    # seed 0: b lists the same users in another order plus one a lacks; seed 1: both; seed 2: only a (ignored)
    a = [_result("a", 0, ["u1", "u2", "u3"], [0, -1, 12]), _result("a", 1, ["u1", "u2"], [4, 9]), _result("a", 2, ["u1"], [0])]
    b = [_result("b", 0, ["u3", "x", "u1", "u2"], [2, 0, -1, 3]), _result("b", 1, ["u1", "u2"], [-1, 0])]
    d = paired_difference(a, b)
    # recall@10 differences, user by user: seed 0 u1 1-0, u2 0-1, u3 0-1; seed 1 u1 1-0, u2 1-1
    s0, s1 = np.array([1.0, -1.0, -1.0]), np.array([1.0, 0.0])
    se = [x.std(ddof=1) / math.sqrt(x.size) for x in (s0, s1)]
    means = np.array([s0.mean(), s1.mean()])
    assert d["recall@10"].mean == pytest.approx(means.mean())
    assert d["recall@10"].se == pytest.approx(math.sqrt(np.mean(np.square(se)) + means.var(ddof=1) / 2))
    # ndcg@5 = 1/log2(rank+2) inside the top 5: seed 0 u1 1-0, u2 0-1/log2(5), u3 0-1/log2(4) (rank 12 is outside);
    # seed 1 u1 1/log2(6)-0, u2 0-1 (rank 9 is outside)
    seed0 = (1 - 1 / math.log2(5) - 1 / math.log2(4)) / 3
    seed1 = (1 / math.log2(6) - 1) / 2
    assert d["ndcg@5"].mean == pytest.approx((seed0 + seed1) / 2)
    # an ID set against itself: exactly zero, with zero error
    same = paired_difference(a, a)
    assert all(v.mean == 0 and v.se == 0 for v in same.values())
    with pytest.raises(ValueError, match="no seed"):
        paired_difference(a[2:], b)

import json
import math

import numpy as np
import pytest
import torch

from rqvae_core.metrics import (
    CorpusMetrics,
    MetricsAccumulator,
    corpus_metrics,
    prefix_coherence,
)


def _finalize(codes, *, K, inputs=None, recon=None):
    codes = np.asarray(codes)
    n = codes.shape[0]
    inputs = np.ones((n, 4), dtype=np.float32) if inputs is None else inputs
    recon = inputs if recon is None else recon
    acc = MetricsAccumulator(n_levels=codes.shape[1], codebook_size=K)
    acc.update(inputs=inputs, recon=recon, codes=codes)
    return acc.finalize()


def test_uniform_usage_over_m_codes_has_perplexity_m():
    K, m = 16, 5
    codes = np.repeat(np.arange(m), 7)[:, None]  # each of m codes used 7 times
    lv = _finalize(codes, K=K).levels[0]
    assert lv.active_codes == m
    assert lv.usage_rate == pytest.approx(m / K)
    assert lv.entropy == pytest.approx(math.log(m))
    assert lv.perplexity == pytest.approx(m)
    assert lv.counts == [7] * m + [0] * (K - m)


def test_single_code_is_collapse():
    codes = np.full((20, 2), 3)
    metrics = _finalize(codes, K=8)
    for lv in metrics.levels:
        assert lv.active_codes == 1
        assert lv.perplexity == pytest.approx(1.0)
        assert lv.entropy == pytest.approx(0.0)
    assert metrics.unique_tuple_rate == pytest.approx(1 / 20)
    assert metrics.largest_collision_group == 20
    assert metrics.collision_group_sizes == {20: 1}


def test_per_level_counts_are_independent():
    codes = np.array([[0, 1], [0, 2], [1, 2], [0, 2]])
    levels = _finalize(codes, K=3).levels
    assert [lv.level for lv in levels] == [0, 1]
    assert levels[0].counts == [3, 1, 0]
    assert levels[1].counts == [0, 1, 3]


def test_unique_tuple_rate_and_collision_groups():
    codes = np.array(
        [
            [0, 0, 0],
            [0, 0, 0],
            [0, 0, 0],  # group of 3
            [1, 2, 3],
            [1, 2, 3],  # group of 2
            [0, 0, 1],
            [3, 2, 1],  # singletons (note: permutation of [1,2,3] must not collide)
            [1, 0, 0],  # differs from [0,0,0] only in the first code
        ]
    )
    m = _finalize(codes, K=4)
    assert m.n_items == 8
    assert m.unique_tuple_rate == pytest.approx(5 / 8)
    assert m.largest_collision_group == 3
    assert m.collision_group_sizes == {1: 3, 2: 1, 3: 1}


def test_tuples_beyond_int64_packing_still_grouped():
    # K**L = 2**80 does not pack into an int64: falls back to row-wise unique
    K, L = 2**16, 5
    codes = np.array([[K - 1] * L, [K - 1] * L, [0] * L, [K - 1] * (L - 1) + [0]])
    m = _finalize(codes, K=K)
    assert m.unique_tuple_rate == pytest.approx(3 / 4)
    assert m.collision_group_sizes == {1: 2, 2: 1}


def test_reconstruction_errors():
    x = np.array([[1.0, 0.0], [0.0, 2.0]])
    m = _finalize(np.zeros((2, 1), int), K=2, inputs=x, recon=x)
    assert m.recon_mse == 0.0 and m.recon_mae == 0.0
    assert m.recon_cosine == pytest.approx(1.0)

    r = np.array([[0.0, 1.0], [0.0, -2.0]])  # orthogonal, opposite
    m = _finalize(np.zeros((2, 1), int), K=2, inputs=x, recon=r)
    # diffs: [1,-1], [0,4] → squared 1+1+0+16=18, abs 1+1+0+4=6 over 4 values
    assert m.recon_mse == pytest.approx(18 / 4)
    assert m.recon_mae == pytest.approx(6 / 4)
    assert m.recon_cosine == pytest.approx((0.0 - 1.0) / 2)


def test_streaming_over_three_batches_equals_one_shot():
    rng = np.random.default_rng(0)
    n, d, L, K = 300, 8, 3, 16
    x = rng.normal(size=(n, d)).astype(np.float32)
    r = x + 0.1 * rng.normal(size=(n, d)).astype(np.float32)
    c = rng.integers(0, K, size=(n, L))
    c[:40] = c[0]  # a real collision group

    one = MetricsAccumulator(n_levels=L, codebook_size=K)
    one.update(inputs=x, recon=r, codes=c)
    streamed = MetricsAccumulator(n_levels=L, codebook_size=K)
    for sl in (slice(0, 77), slice(77, 200), slice(200, n)):
        # mix torch and numpy batches: both are accepted
        streamed.update(inputs=torch.from_numpy(x[sl]), recon=r[sl], codes=torch.from_numpy(c[sl]))
    a, b = one.finalize(), streamed.finalize()
    assert a.n_items == b.n_items == n
    for field in ("recon_mse", "recon_mae", "recon_cosine", "unique_tuple_rate"):
        assert getattr(a, field) == pytest.approx(getattr(b, field), rel=1e-12)
    assert a.levels == b.levels
    assert a.largest_collision_group == b.largest_collision_group == 40
    assert a.collision_group_sizes == b.collision_group_sizes


def test_update_validates_shapes_and_range():
    acc = MetricsAccumulator(n_levels=2, codebook_size=4)
    x = np.zeros((3, 2))
    with pytest.raises(ValueError):
        acc.update(inputs=x, recon=x, codes=np.zeros((3, 3), int))
    with pytest.raises(ValueError):
        acc.update(inputs=x, recon=np.zeros((3, 5)), codes=np.zeros((3, 2), int))
    with pytest.raises(ValueError):
        acc.update(inputs=x, recon=x, codes=np.full((3, 2), 4))
    with pytest.raises(ValueError):
        acc.finalize()


def _clustered(*, n_clusters, per_cluster, dim, seed):
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(n_clusters, dim)) * 10
    labels = np.repeat(np.arange(n_clusters), per_cluster)
    vectors = centers[labels] + rng.normal(size=(len(labels), dim))
    return vectors.astype(np.float32), labels


def test_prefix_coherence_high_when_codes_follow_clusters():
    vectors, labels = _clustered(n_clusters=16, per_cluster=50, dim=16, seed=1)
    # level 1 = cluster id (coherent); level 2 is random within the cluster, so the
    # two-code prefix drops to about 1/8 while level 1 stays ~1.
    rng = np.random.default_rng(2)
    codes = np.stack([labels, rng.integers(0, 8, size=len(labels))], axis=1)
    pc = prefix_coherence(vectors=vectors, codes=codes, k=10, n_queries=300, seed=0)
    assert len(pc) == 2
    assert pc[0] > 0.97
    assert pc[1] < 0.3


def test_prefix_coherence_low_for_random_codes():
    vectors, labels = _clustered(n_clusters=16, per_cluster=50, dim=16, seed=3)
    codes = np.random.default_rng(4).integers(0, 16, size=(len(labels), 3))
    pc = prefix_coherence(vectors=vectors, codes=codes, k=10, n_queries=400, seed=0)
    assert len(pc) == 2
    assert pc[0] < 0.2  # ≈ 1/16
    assert pc[1] <= pc[0]


def test_prefix_coherence_excludes_self_and_is_deterministic():
    # every item is its own cluster: if self were counted, the share would be >= 1/k
    rng = np.random.default_rng(5)
    vectors = rng.normal(size=(200, 8)).astype(np.float32)
    codes = np.arange(200)[:, None]
    pc = prefix_coherence(vectors=vectors, codes=codes, k=5, n_queries=50, max_database=120, seed=7)
    assert pc == [0.0]
    a = prefix_coherence(vectors=vectors, codes=codes % 4, k=5, n_queries=50, max_database=120, seed=7)
    b = prefix_coherence(vectors=vectors, codes=codes % 4, k=5, n_queries=50, max_database=120, seed=7)
    assert a == b
    assert prefix_coherence(vectors=vectors[:1], codes=codes[:1]) == []


def test_corpus_metrics_end_to_end_and_json():
    vectors, labels = _clustered(n_clusters=8, per_cluster=40, dim=12, seed=6)
    codes = np.stack([labels, labels % 2, np.arange(len(labels)) % 5], axis=1)
    m = corpus_metrics(inputs=vectors, recon=vectors, codes=codes, codebook_size=8, k=5, n_queries=100)
    assert isinstance(m, CorpusMetrics)
    assert m.n_items == 320
    assert m.recon_mse == 0.0
    assert m.recon_cosine == pytest.approx(1.0)
    assert len(m.levels) == 3 and len(m.prefix_coherence) == 2
    assert m.prefix_coherence[0] > 0.95
    d = m.to_dict()
    back = json.loads(json.dumps(d, allow_nan=False))
    assert back["n_items"] == 320
    assert len(back["levels"][0]["counts"]) == 8
    assert sum(int(s) * g for s, g in back["collision_group_sizes"].items()) == 320


def test_distinct_prefixes_counts_each_depth():
    from rqvae_core.metrics import distinct_prefixes

    codes = np.array([[0, 1, 2], [0, 1, 3], [0, 2, 2], [1, 1, 2]])
    assert distinct_prefixes(codes) == [2, 3, 4]


def test_comparison_with_residual_kmeans_flags_codes_that_ignore_neighbourhoods():
    from rqvae_core.kmeans import residual_kmeans
    from rqvae_core.metrics import compare_with_residual_kmeans

    rng = np.random.default_rng(0)
    centres = rng.normal(size=(16, 8)) * 4
    x = (centres[rng.integers(16, size=800)] + rng.normal(size=(800, 8))).astype(np.float32)
    sq_err = np.full(800, 8.0)
    random_codes = rng.integers(0, 16, size=(800, 2))
    bad = compare_with_residual_kmeans(vectors=x, codes=random_codes, recon_sq_err=sq_err, codebook_size=16, n_queries=400)
    assert bad["less_coherent_at_depths"] == [1, 2] and "less coherent" in bad["warning"]
    assert bad["run"]["recon_mse"] == pytest.approx(1.0)
    assert bad["residual_kmeans"]["distinct_prefixes"][0] == 16
    # the baseline's own codes (same seed) are exactly as coherent: no warning
    own = residual_kmeans(torch.from_numpy(x), n_levels=2, k=16, iters=10, seed=0).codes.numpy()
    good = compare_with_residual_kmeans(vectors=x, codes=own, recon_sq_err=sq_err, codebook_size=16, n_queries=400)
    assert good["warning"] is None and good["run"]["prefix_coherence"] == good["residual_kmeans"]["prefix_coherence"]
    assert good["fewer_prefixes_at_depths"] == []
    # merging level-1 codes pairwise makes the IDs look more coherent; the report names the lost prefixes
    merged = own.copy()
    merged[:, 0] //= 2
    flagged = compare_with_residual_kmeans(vectors=x, codes=merged, recon_sq_err=sq_err, codebook_size=16, n_queries=400)
    assert flagged["fewer_prefixes_at_depths"][0] == 1 and "fewer distinct prefixes" in flagged["warning"]
    assert flagged["run"]["distinct_prefixes"][0] == 8

import numpy as np
import pytest

from rqvae_core.similarity import (
    SimilarItems,
    codeword_cosine,
    exact_match_share,
    shared_prefix_length,
    top_k_similar,
)

# Hand-built catalog: 4 codes per item (3 levels + disambiguation).
CODES = np.array(
    [
        [1, 2, 3, 0],  # 0 query
        [1, 2, 3, 1],  # 1 prefix 3, dist 2
        [1, 2, 9, 0],  # 2 prefix 2, dist 1
        [1, 2, 3, 2],  # 3 prefix 3, dist 1
        [1, 5, 3, 0],  # 4 prefix 1 (shares later codes, must not count)
        [7, 2, 3, 0],  # 5 prefix 0
        [1, 2, 8, 0],  # 6 prefix 2, dist 1 (tie with 2 → index order)
        [1, 2, 3, 3],  # 7 prefix 3, dist 2 (tie with 1 → index order)
    ]
)
VECTORS = np.array(
    [
        [0.0, 0.0],
        [2.0, 0.0],
        [0.0, 1.0],
        [1.0, 0.0],
        [0.5, 0.0],  # nearest of all, but shortest prefix among close items
        [0.1, 0.0],
        [0.0, -1.0],
        [0.0, 2.0],
    ]
)


def test_exact_match_share():
    q = np.array([1, 2, 3, 0])
    np.testing.assert_allclose(
        exact_match_share(q, CODES), [1.0, 0.75, 0.75, 0.75, 0.75, 0.75, 0.75, 0.75]
    )
    assert exact_match_share(np.array([1, 2]), np.array([3, 4])) == 0.0
    np.testing.assert_allclose(exact_match_share(CODES[:2], CODES[1:3]), [0.75, 0.5])
    with pytest.raises(ValueError):
        exact_match_share(np.array([1, 2]), np.array([1, 2, 3]))


def test_shared_prefix_length_stops_at_first_mismatch():
    got = shared_prefix_length(CODES[0], CODES)
    assert got.dtype == np.int64
    np.testing.assert_array_equal(got, [4, 3, 2, 3, 1, 0, 2, 3])


def test_codeword_cosine():
    cos = codeword_cosine(np.array([1.0, 0.0]), VECTORS)
    assert cos[0] == 0.0  # zero vector: 0, not NaN
    np.testing.assert_allclose(cos[[1, 2, 3, 6, 7]], [1.0, 0.0, 1.0, 0.0, 0.0], atol=1e-12)
    np.testing.assert_allclose(codeword_cosine(np.array([1.0, 1.0]), np.array([[-2.0, -2.0]])), [-1.0])


def test_top_k_ranking_prefix_then_distance_then_index():
    res = top_k_similar(query_index=0, codes=CODES, vectors=VECTORS, k=7)
    assert isinstance(res, SimilarItems)
    # prefix 3: {3 (d1), 1 (d2), 7 (d2)}; prefix 2: {2 (d1), 6 (d1)}; prefix 1: {4}; prefix 0: {5}
    np.testing.assert_array_equal(res.indices, [3, 1, 7, 2, 6, 4, 5])
    np.testing.assert_array_equal(res.shared_prefix, [3, 3, 3, 2, 2, 1, 0])
    np.testing.assert_allclose(res.distance, [1.0, 2.0, 2.0, 1.0, 1.0, 0.5, 0.1])
    assert 0 not in res.indices


@pytest.mark.parametrize("k", [1, 2, 3, 4, 5, 6])
def test_top_k_is_prefix_of_full_ranking(k):
    full = top_k_similar(query_index=0, codes=CODES, vectors=VECTORS, k=100)
    part = top_k_similar(query_index=0, codes=CODES, vectors=VECTORS, k=k)
    np.testing.assert_array_equal(part.indices, full.indices[:k])
    assert len(full.indices) == len(CODES) - 1  # k capped, query excluded


def test_top_k_excludes_query_even_with_duplicate_items():
    codes = np.array([[0, 0], [0, 0], [0, 0], [1, 0]])
    vectors = np.zeros((4, 3))
    res = top_k_similar(query_index=1, codes=codes, vectors=vectors, k=2)
    np.testing.assert_array_equal(res.indices, [0, 2])  # exact ties → index order
    np.testing.assert_array_equal(res.shared_prefix, [2, 2])
    assert len(top_k_similar(query_index=0, codes=codes, vectors=vectors, k=0).indices) == 0
    with pytest.raises(IndexError):
        top_k_similar(query_index=4, codes=codes, vectors=vectors)


def test_top_k_matches_brute_force_on_random_catalog():
    rng = np.random.default_rng(0)
    n = 3000
    codes = rng.integers(0, 3, size=(n, 4))
    vectors = rng.integers(0, 3, size=(n, 2)).astype(np.float32)  # many exact distance ties
    for q in (0, 17, 2999):
        res = top_k_similar(query_index=q, codes=codes, vectors=vectors, k=25)
        prefix = shared_prefix_length(codes[q], codes)
        dist = np.linalg.norm(vectors.astype(np.float64) - vectors[q], axis=1)
        idx = np.arange(n)
        keep = idx != q
        ref = idx[keep][np.lexsort((idx[keep], dist[keep], -prefix[keep]))][:25]
        np.testing.assert_array_equal(res.indices, ref)

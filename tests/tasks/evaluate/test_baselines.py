import warnings

import numpy as np
import pytest

from tasks.evaluate.baselines import baseline_ids
from tasks.evaluate.stage import ids_hash


def _clustered(n=300, k=6, dim=16, seed=0):
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(k, dim)) * 4
    labels = rng.integers(k, size=n)
    return centers[labels] + rng.normal(size=(n, dim)), labels


@pytest.mark.parametrize("name", ["rkmeans", "random"])
def test_baselines_are_unique_fixed_length_and_deterministic(name):
    x, _ = _clustered()
    item_ids = np.array([f"it{i}" for i in range(len(x))])
    a = baseline_ids(name, item_ids, x, n_levels=2, codebook_size=8, seed=3)
    b = baseline_ids(name, item_ids, x, n_levels=2, codebook_size=8, seed=3)
    assert a.codes.shape == (300, 3) and a.codes.min() >= 0 and a.codes.max() < 8 and a.codebook_size == 8
    assert len({tuple(c) for c in a.codes.tolist()}) == 300
    assert ids_hash(a) == ids_hash(b)


def test_rkmeans_first_code_follows_the_clusters():
    x, labels = _clustered()
    ids = baseline_ids("rkmeans", np.array([str(i) for i in range(len(x))]), x, n_levels=2, codebook_size=8, seed=0)
    rnd = baseline_ids("random", np.array([str(i) for i in range(len(x))]), x, n_levels=2, codebook_size=8, seed=0)

    def purity(first):  # share of items whose first code's majority cluster is their own
        return np.mean([np.bincount(labels[first == c]).max() / (first == c).sum() for c in np.unique(first)])

    assert purity(ids.codes[:, 0]) > 0.95 > 0.5 > purity(rnd.codes[:, 0])
    with pytest.raises(ValueError, match="unknown baseline"):
        baseline_ids("nope", np.array(["a"]), x[:1], n_levels=1, codebook_size=2, seed=0)


def test_rkmeans_takes_the_vectors_as_read_back_from_parquet(tmp_path):
    """The evaluation reads the run's vectors from Parquet (read-only Arrow memory); vectors_matrix hands them
    over as a writable copy, so residual k-means takes them without torch's non-writable-array warning."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from tasks.embed import vectors_array, vectors_matrix

    x, _ = _clustered()
    pq.write_table(pa.table({"vector": vectors_array(x)}), tmp_path / "v.parquet")
    vectors = vectors_matrix(pq.read_table(tmp_path / "v.parquet"))
    item_ids = np.array([str(i) for i in range(len(x))])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # torch warns (and would share memory) on a non-writable array
        ids = baseline_ids("rkmeans", item_ids, vectors, n_levels=2, codebook_size=8, seed=0)
    assert ids_hash(ids) == ids_hash(baseline_ids("rkmeans", item_ids, x.astype(np.float32), n_levels=2, codebook_size=8, seed=0))

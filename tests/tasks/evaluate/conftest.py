import numpy as np
import pytest
import torch

from tasks.evaluate import Sequences


@pytest.fixture(autouse=True, scope="session")
def _one_thread():
    torch.set_num_threads(1)  # OpenMP with 2 threads is up to 10x slower on this 2-vCPU box


def cluster_world(*, n_clusters: int = 8, per_cluster: int = 16, n_users: int = 400, seed: int = 0):
    """Items in clusters; each user consumes 4-8 distinct items of one cluster, in random order.

    Returns item ids, sequences, IDs that follow the clusters (code 1 = cluster) and
    the same code tuples dealt to items at random.
    """
    rng = np.random.default_rng(seed)
    items = [f"i{c}_{j}" for c in range(n_clusters) for j in range(per_cluster)]
    users, seqs = [], []
    for u in range(n_users):
        c = int(rng.integers(n_clusters))
        n = int(rng.integers(4, 9))
        seqs.append([f"i{c}_{j}" for j in rng.choice(per_cluster, n, replace=False)])
        users.append(f"u{u}")
    cluster_codes = np.array([[c, j // 4, j % 4] for c in range(n_clusters) for j in range(per_cluster)])
    random_codes = cluster_codes[rng.permutation(len(items))]
    return items, Sequences(users=users, items=seqs), cluster_codes, random_codes

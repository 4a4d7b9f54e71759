import pytest
import torch


@pytest.fixture(autouse=True, scope="session")
def _one_thread():
    torch.set_num_threads(1)  # OpenMP with 2 threads is up to 10x slower on this 2-vCPU box


def clustered(n: int = 20000, k: int = 4000, dim: int = 64, noise: float = 0.1, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    centers = torch.randn(k, dim, generator=g)
    return centers[torch.randint(k, (n,), generator=g)] + noise * torch.randn(n, dim, generator=g)


def epochs_of(x: torch.Tensor, batch_size: int = 512):
    def batches(epoch: int):
        perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(epoch))
        for i in range(0, len(x), batch_size):
            yield x[perm[i : i + batch_size]]

    return batches

"""The Ray session the pipeline starts for itself, with another Ray cluster running on the same host."""

from __future__ import annotations

import ray

from tasks import ray_local
from tasks.ray_runtime import ray_session


@ray.remote(num_cpus=0)
def _cluster_found_by_a_worker() -> str:
    # What Ray Train's placement-group cleaner does in its actor: look up "the" cluster without an address.
    from ray._private.services import canonicalize_bootstrap_address_or_die

    return canonicalize_bootstrap_address_or_die(None)


def test_workers_find_their_own_cluster_when_another_ray_runs_on_the_host():
    """Without ``RAY_ADDRESS`` in the workers' environment the lookup raises "Found multiple active Ray instances"
    (seen in bench/quality.py while a `semid run` was running beside it)."""
    other = ray_local.start(num_cpus=1)
    try:
        with ray_session(num_cpus=1):
            own = ray.get_runtime_context().gcs_address
            assert own != other.address
            assert ray.get(_cluster_found_by_a_worker.remote()) == own
    finally:
        other.stop()

"""Ray start-up and device choice, shared by the stages that distribute work.

``ray_session()`` is the only place that calls ``ray.init``:

* ``RAY_ADDRESS`` set  -> connect to that cluster (``auto``, ``host:port`` or ``ray://``);
* Ray already running in this process -> reuse it and leave it running;
* otherwise -> start a quiet local Ray of its own (never another process's;
  no dashboard, no usage stats, no token auth warning) in its own session
  through ``tasks.ray_local``, and shut it down again on exit, whatever
  happens inside (SIGKILL of this process included).

Workers get one OpenMP/MKL thread each (``torch`` with more threads than cores
is many times slower on small VMs) and offline Hugging Face access by default.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from typing import Literal

import ray

from tasks import progress, ray_local

# Read by the driver when it starts a local cluster; set before ray.init.
_DRIVER_ENV_DEFAULTS = {
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_AUTH_MODE": "disabled",
    "HF_HUB_OFFLINE": "1",
    "TOKENIZERS_PARALLELISM": "false",
}


# Ray Train's placement-group cleaner asks the state API once a second whether the training controller
# still lives, and warns each time the query fails; on a busy 2-CPU box that was 2,238 of the 2,344 lines
# of one Beauty evaluation's log. Its failures to clean up stay visible (errors).
_QUIET_WORKER_LOGGERS = {"ray.train.v2._internal.execution.controller.placement_group_cleaner": logging.ERROR}


def quiet_worker_loggers() -> None:
    """Runs when each Ray worker process starts (``worker_process_setup_hook``): mutes known log spam."""
    for name, level in _QUIET_WORKER_LOGGERS.items():
        logging.getLogger(name).setLevel(level)


def worker_runtime_env() -> dict:
    """Runtime environment of every Ray job this project starts: :func:`worker_env_vars` and the setup hook."""
    return {"env_vars": worker_env_vars(), "worker_process_setup_hook": "tasks.ray_runtime.quiet_worker_loggers"}


def worker_env_vars() -> dict[str, str]:
    """Environment for every Ray worker this project starts (thread caps, offline hub)."""
    return {
        "OMP_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
        "OPENBLAS_NUM_THREADS": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "HF_HUB_OFFLINE": os.environ.get("HF_HUB_OFFLINE", "1"),
        "HF_HUB_DISABLE_PROGRESS_BARS": "1",
        "TRANSFORMERS_VERBOSITY": "error",
        "RAY_USAGE_STATS_ENABLED": "0",
        "DO_NOT_TRACK": "1",
    }


@contextlib.contextmanager
def ray_session(num_cpus: int | None = None) -> Iterator[None]:
    """Make Ray available for the body; shut down only what this call started.

    ``num_cpus`` applies only when a local cluster is started here (it caps the
    CPUs Ray schedules on); it is ignored when joining a cluster or reusing one.
    """
    if ray.is_initialized():
        yield
        return

    for key, value in _DRIVER_ENV_DEFAULTS.items():
        os.environ.setdefault(key, value)
    runtime_env = worker_runtime_env()
    address = os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(
            address=address,
            runtime_env=runtime_env,
            logging_level=logging.WARNING,
            log_to_driver=True,
        )
        local = None
    else:
        # A cluster of our own (the keeper uses address="local": ray.init() would otherwise join any Ray
        # already running on the host, whose shutdown then kills this run's work).
        local = ray_local.start(num_cpus)
        # Workers are told their cluster's address: Ray Train's placement-group cleaner looks the cluster up
        # without one and, with a second Ray on the host (another run, a test), fails with "Found multiple
        # active Ray instances", leaving that run's placement groups to leak if its controller dies.
        runtime_env["env_vars"]["RAY_ADDRESS"] = local.address
        try:
            ray.init(address=local.address, runtime_env=runtime_env, logging_level=logging.WARNING, log_to_driver=True)
        except BaseException:
            local.stop()
            raise
    progress.forward_worker_reports()
    try:
        yield
    finally:
        ray.shutdown()
        if local is not None:
            local.stop()


def cpu_threads_per_worker(num_workers: int) -> int:
    """Torch threads (and Ray CPUs) of each of ``num_workers`` CPU workers: the cluster's CPUs shared out, at most one node's worth.

    One worker on a 2-CPU box embeds (and fits) 1.6-2x faster with both cores than with
    one (measured: 53 vs 94 texts/s on the demo catalog); several workers on one node each
    get their share, so the node is never oversubscribed.
    """
    nodes = [n["Resources"].get("CPU", 0) for n in ray.nodes() if n.get("Alive")]
    total = int(sum(nodes))
    largest = int(max(nodes, default=1))
    return max(1, min(largest, total // max(num_workers, 1)))


def gpu_available() -> bool:
    """Whether the Ray cluster (or, without Ray, this process) has a GPU to schedule on."""
    if ray.is_initialized():
        return ray.cluster_resources().get("GPU", 0) > 0
    import torch

    return torch.cuda.is_available()


def resolve_device(pref: Literal["auto", "cpu", "cuda"]) -> str:
    """``auto`` -> ``cuda`` when the cluster has a GPU *now*, else ``cpu`` (it never waits for an autoscaler:
    set ``cuda`` for that); ``cuda`` on a local Ray without a GPU fails loudly."""
    if pref == "cpu":
        return "cpu"
    if pref == "cuda":
        # On a cluster (RAY_ADDRESS) the GPU actors' resource request is what makes an autoscaler
        # start GPU workers from zero; only a local Ray without GPUs can never satisfy it.
        if not gpu_available() and not os.environ.get("RAY_ADDRESS"):
            raise RuntimeError("device='cuda' was requested but no GPU is visible to Ray")
        return "cuda"
    if pref == "auto":
        return "cuda" if gpu_available() else "cpu"
    raise ValueError(f"device must be 'auto', 'cpu' or 'cuda', got {pref!r}")

"""How a stage runs the calls of one step: in parallel Ray tasks, or one after another in this process.

A large catalog's stage fans each step out (one task per file, bucket or partition);
a small catalog's stage runs inside one Ray task and calls the very same step
functions in-process, so both paths write the same files. Stage code takes a
``StepRunner`` and never knows which one it got.
"""

from __future__ import annotations

from typing import Any, Callable

StepRunner = Callable[[Callable[..., Any], list[dict[str, Any]]], list[Any]]

TASK_OPTIONS = {"num_cpus": 1, "max_retries": 2}
"""Every step writes deterministic file names, so a retried task overwrites its own output."""


def in_tasks(fn: Callable[..., Any], calls: list[dict[str, Any]]) -> list[Any]:
    """Each call of ``fn`` (keyword arguments) in its own Ray task, all in parallel; results in call order."""
    import ray

    task = ray.remote(fn).options(**TASK_OPTIONS)
    return ray.get([task.remote(**kwargs) for kwargs in calls])


def inline(fn: Callable[..., Any], calls: list[dict[str, Any]]) -> list[Any]:
    """Each call of ``fn`` in this process, one after the other (inside a small catalog's one task)."""
    return [fn(**kwargs) for kwargs in calls]

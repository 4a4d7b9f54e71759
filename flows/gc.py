"""Retention as a Prefect flow, for a weekly deployment: ``flows/gc.py:gc``.

It only wires ``tasks.gc.collect_garbage`` (what is kept and why is documented
there); ``semid gc`` calls the same function without Prefect.
"""

from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger

from flows.ops import expand_env, flow_timeout_seconds
from tasks.gc import collect_garbage


def _run_name() -> str:
    from prefect.runtime import flow_run

    return f"gc/{(flow_run.parameters or {}).get('name', 'catalog')}"


@flow(name="gc", flow_run_name=_run_name, timeout_seconds=flow_timeout_seconds(3600))
def gc(out: str, name: str, keep: int = 7, dry_run: bool = False, min_age_hours: float = 24.0) -> dict[str, Any]:
    """Remove runs of ``<out>/<name>`` beyond the ``keep`` newest (never the latest or a kept run's prior),
    stale ``_work/`` dirs and embedding-cache entries no remaining run uses; ``dry_run`` only lists them.
    ``out`` may hold ``${VAR}``, read from the flow run's environment (deploy/prefect.yaml)."""
    report = collect_garbage(out=expand_env(out, "out"), name=name, keep=keep, dry_run=dry_run, min_age_hours=min_age_hours)
    logger = get_run_logger()
    for line in report.lines():
        logger.info(line)
    return report.model_dump()

"""Retention as a Prefect flow, for a weekly deployment: ``flows/gc.py:gc``.

It only wires ``tasks.gc.collect_garbage`` (what is kept and why is documented
there); ``semid gc`` calls the same function without Prefect.
"""

from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger

from tasks.gc import collect_garbage


@flow(name="gc")
def gc(out: str, name: str, keep: int = 7, dry_run: bool = False, min_age_hours: float = 24.0) -> dict[str, Any]:
    """Remove runs of ``<out>/<name>`` beyond the ``keep`` newest (never the latest or a kept run's prior),
    stale ``_work/`` dirs and embedding-cache entries no remaining run uses; ``dry_run`` only lists them."""
    report = collect_garbage(out=out, name=name, keep=keep, dry_run=dry_run, min_age_hours=min_age_hours)
    logger = get_run_logger()
    for line in report.lines():
        logger.info(line)
    return report.model_dump()

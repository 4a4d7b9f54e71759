"""The logger a stage should use: Prefect's run logger inside a flow or task run, a plain one outside.

Stage functions are plain Python (callable from a notebook or a test); inside the
flow their messages must reach the Prefect run log like the flow's own.
"""

from __future__ import annotations

import logging


def stage_logger(stage: str) -> logging.Logger | logging.LoggerAdapter:
    from prefect.exceptions import MissingContextError
    from prefect.logging import get_run_logger

    try:
        return get_run_logger()
    except MissingContextError:
        return logging.getLogger(f"semid.{stage}")

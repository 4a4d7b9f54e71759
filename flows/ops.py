"""Prefect-native operations around a flow run: run ids from schedule slots, run names, run-time env, artifacts.

* Run id: without an explicit one, a run is named after its flow run's
  *expected start time* (Prefect's ``scheduled_start_time``): for a scheduled
  nightly run that is the schedule slot, so a retry of the same night (a flow
  retry, or a new run for the same slot) lands on the same run id and resumes
  its work dir instead of starting over. For an ad-hoc run it is when the run
  was created. Format: UTC ``YYYYMMDDTHHMMSSZ``.
* ``${VAR}`` in a catalog/out/name parameter is read from the flow-run
  process's environment when the run starts (set by the worker or by the
  deployment's ``job_variables.env``), never when deploying; an unset variable
  is an error that names it, never an empty string.
"""

from __future__ import annotations

import datetime as dt
import os
import re
from typing import Any

from tasks.errors import BadInput

RUN_ID_FORMAT = "%Y%m%dT%H%M%SZ"
_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


class UnsetVariable(BadInput):
    """A ``${VAR}`` parameter refers to an environment variable the flow-run process does not have."""


def expand_env(value: str | None, what: str) -> str | None:
    """Replace each ``${VAR}`` with the variable's value; an unset or empty variable is a clear error."""
    if value is None:
        return None

    def sub(m: re.Match) -> str:
        found = os.environ.get(m.group(1))
        if not found:
            raise UnsetVariable(
                f"{what} {value!r} needs ${{{m.group(1)}}}, which is not set in the flow run's environment "
                "(set it on the worker or in the deployment's job_variables.env)"
            )
        return found

    return _ENV_REF.sub(sub, value)


def slot_run_id() -> str:
    """The run id of a run given none: its flow run's expected start time (the schedule slot), UTC."""
    from prefect.runtime import flow_run

    start = flow_run.scheduled_start_time  # expected start time of this flow run; now outside a flow run
    return _as_utc(start).strftime(RUN_ID_FORMAT)


def _as_utc(t: Any) -> dt.datetime:
    t = dt.datetime.fromisoformat(str(t)) if not isinstance(t, dt.datetime) else t
    return t.astimezone(dt.timezone.utc) if t.tzinfo else t.replace(tzinfo=dt.timezone.utc)


def run_name(default_name) -> str:
    """``<name>/<run_id>`` for the flow run currently starting (its parameters, its schedule slot)."""
    from prefect.runtime import flow_run

    params = flow_run.parameters or {}
    try:
        catalog = expand_env(params.get("catalog"), "catalog") or ""
        name = expand_env(params.get("name"), "name") or default_name(catalog)
    except UnsetVariable:
        name = params.get("name") or "catalog"  # the flow body reports the unset variable
    return f"{name}/{params.get('run_id') or slot_run_id()}"


def flow_timeout_seconds(default: float = 6 * 3600) -> float:
    """A flow run that exceeds this is failed by Prefect; ``SEMID_FLOW_TIMEOUT_SECONDS`` (job variable) overrides."""
    return float(os.environ.get("SEMID_FLOW_TIMEOUT_SECONDS") or default)


def artifact_key(name: str) -> str:
    """One artifact key per catalog: the Prefect UI shows each night's summary as a new version of it."""
    return "semid-" + (re.sub(r"[^a-z0-9-]+", "-", name.lower()).strip("-") or "catalog")


def publish_summary_artifact(prefix: str) -> str | None:
    """A markdown artifact of a published run (counts, quarantine, changes, quality, report); None outside a run."""
    from prefect import get_run_logger
    from prefect.artifacts import create_markdown_artifact
    from prefect.context import FlowRunContext

    from flows.runs import run_summary, summary_markdown

    if FlowRunContext.get() is None:
        return None
    summary = run_summary(prefix)
    try:
        create_markdown_artifact(
            key=artifact_key(summary["catalog"]),
            markdown=summary_markdown(summary),
            description=f"semid run {summary['catalog']}/{summary['run_id']}",
        )
    except Exception as e:  # noqa: BLE001 - the run is published; a lost summary must not fail it
        get_run_logger().warning("could not store the run's summary artifact: %s: %s", type(e).__name__, e)
        return None
    return artifact_key(summary["catalog"])

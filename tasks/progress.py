"""Stage progress as log records, so stages report without knowing who (if anyone) shows it.

A stage calls ``report(stage, done, total)`` from the driver (e.g. once per batch it
collects) and ``stage_done(manifest)`` when it finishes; code running inside a Ray
worker calls ``worker_report(...)``, which prints one marker line that Ray forwards to
the driver (``log_to_driver``) and ``forward_worker_reports`` turns back into a record.

Records go to the ``semid.progress`` logger at DEBUG with the event in
``record.semid_progress``. Nothing listens by default, so a notebook or a test pays
one disabled-logger check per call; the ``semid`` CLI attaches a handler that draws
one line (or bar) per stage. Reporting is cheap but not free: call it per batch or
per epoch, not per item.
"""

from __future__ import annotations

import json
import logging
import sys
from dataclasses import dataclass

LOGGER_NAME = "semid.progress"
WORKER_MARKER = "[semid-progress] "
_logger = logging.getLogger(LOGGER_NAME)
_logger.propagate = False  # never reaches Prefect's or the root logger's handlers


@dataclass(frozen=True)
class ProgressEvent:
    stage: str
    done: int
    total: int | None = None
    unit: str = "items"
    finished: bool = False
    seconds: float | None = None
    """Set on the finishing event: the stage's own wall time (the view measures otherwise)."""
    note: str = ""
    """A short summary shown after the counts, e.g. ``resumed`` or ``4 quarantined``."""


def emit(event: ProgressEvent) -> None:
    if _logger.isEnabledFor(logging.DEBUG):
        _logger.debug("%s %s/%s %s", event.stage, event.done, event.total, event.unit, extra={"semid_progress": event})


def report(stage: str, done: int, total: int | None = None, *, unit: str = "items") -> None:
    """``done`` of ``total`` units of ``stage`` are complete (call from the driver process)."""
    emit(ProgressEvent(stage=stage, done=int(done), total=None if total is None else int(total), unit=unit))


def finished(stage: str, *, done: int, unit: str = "items", seconds: float | None = None, note: str = "") -> None:
    """``stage`` is complete (``done`` units in ``seconds``); ``note`` is a short summary."""
    emit(ProgressEvent(stage=stage, done=int(done), total=int(done), unit=unit, finished=True, seconds=seconds, note=note))


def stage_done(result) -> None:
    """A stage finished: one event from its typed result (``tasks.manifest.StageResult``: counts, seconds, resumed)."""
    counts = result.summary()
    if "epochs_run" in counts:
        done, unit = counts["epochs_run"], "epochs"
    else:
        done, unit = next((counts[k] for k in ("input", "items", "ided") if k in counts), next(iter(counts.values()), 0)), "items"
    note = ", ".join(f"{k} {v}" for k, v in counts.items())
    if result.resumed:
        note = f"resumed ({note})" if note else "resumed"
    finished(result.stage, done=done, unit=unit, seconds=0.0 if result.resumed else float(result.seconds), note=note)


def worker_line(line: str) -> None:
    """From inside a Ray worker: ``line`` on stdout, forwarded once to the driver (and semid's log file).

    Not ``print``: Ray Train patches ``print`` in its workers to log the text *and* echo it to
    stdout, so every printed line reached the driver twice.
    """
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def worker_report(stage: str, done: int, total: int | None = None, *, unit: str = "items") -> None:
    """From inside a Ray worker: one stdout line that ``forward_worker_reports`` turns into a record."""
    payload = {"stage": stage, "done": int(done), "total": None if total is None else int(total), "unit": unit}
    worker_line(WORKER_MARKER + json.dumps(payload))


def parse_worker_line(line: str) -> ProgressEvent | None:
    at = line.find(WORKER_MARKER)
    if at < 0:
        return None
    try:
        data = json.loads(line[at + len(WORKER_MARKER):])
        return ProgressEvent(stage=str(data["stage"]), done=int(data["done"]), total=data.get("total"), unit=str(data.get("unit", "items")))
    except (ValueError, KeyError, TypeError):
        return None


def forward_worker_reports() -> None:
    """Turn marker lines forwarded from Ray workers into progress records (needs ``log_to_driver=True``).

    Uses Ray's driver-side stdout dispatcher (``ray._private``; pinned Ray 2.60). When
    that is missing, worker progress is simply not shown: the marker lines still reach
    the log like any worker output.
    """
    try:
        from ray._private.ray_logging import global_worker_stdstream_dispatcher as dispatcher
    except ImportError:  # pragma: no cover - another Ray version
        return

    def handle(data: dict) -> None:
        if not _logger.isEnabledFor(logging.DEBUG):
            return
        for line in data.get("lines", ()):
            event = parse_worker_line(line)
            if event is not None:
                emit(event)

    dispatcher.remove_handler("semid_progress")
    dispatcher.add_handler("semid_progress", handle)


def event_of(record: logging.LogRecord) -> ProgressEvent | None:
    return getattr(record, "semid_progress", None)


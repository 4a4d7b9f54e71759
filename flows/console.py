"""What ``semid`` shows on the terminal, and where everything else goes.

The terminal gets the CLI's own words only: one progress line (or bar) per stage,
a short summary, and at most one line per error. Ray's and Prefect's logs, worker
output, third-party warnings and tracebacks go to a log file whose path is printed.
``--json`` replaces the human output on stdout by one JSON document (errors too),
so scripts never parse prose. Subcommands share this through ``add_output_options``,
``Console.from_args`` and ``Console.result``.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import logging
import os
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TextIO

from tasks import progress


def add_output_options(parser: argparse.ArgumentParser) -> None:
    """``-v/-q/--json`` for one subcommand (they go after the subcommand: ``semid run ... -q``)."""
    parser.add_argument("-v", "--verbose", action="count", default=0,
                        help="-v: also show the flow's and stages' log messages; -vv: show everything (Ray, Prefect, warnings) instead of writing it to the log file")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress lines, only the result and errors")
    parser.add_argument("--json", action="store_true", help="print one JSON document on stdout (the result, or {\"error\": ...}) for scripts")


class Console:
    """The CLI's own output streams: ``out`` for results, ``err`` for progress and errors."""

    def __init__(self, *, out: TextIO, err: TextIO, verbose: int = 0, quiet: bool = False, json_mode: bool = False) -> None:
        self.out, self.err = out, err
        self.verbose, self.quiet, self.json_mode = verbose, quiet, json_mode
        self.log_file: str | None = None

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> "Console":
        return cls(out=sys.stdout, err=sys.stderr, verbose=getattr(args, "verbose", 0), quiet=getattr(args, "quiet", False), json_mode=getattr(args, "json", False))

    @property
    def shows_progress(self) -> bool:
        return not self.quiet

    def info(self, text: str) -> None:
        """A line for people (stderr): hidden by -q, never mixed into --json stdout."""
        if not self.quiet:
            print(text, file=self.err, flush=True)

    def result(self, data: dict[str, Any], text: str | Callable[[dict[str, Any]], str]) -> None:
        """The command's result: JSON with --json, else the text (or text(data))."""
        if self.json_mode:
            print(json.dumps(data, default=str, indent=None), file=self.out, flush=True)
        else:
            print(text(data) if callable(text) else text, file=self.out, flush=True)

    def error(self, message: str, *, kind: str, exit_code: int) -> None:
        """One readable line on stderr (plus the JSON error on stdout with --json)."""
        message = " ".join(part.strip() for part in str(message).splitlines() if part.strip())  # one line, whatever the exception said
        line = f"semid: {message}"
        if self.log_file and exit_code != 2:
            line += f" (details: {self.log_file})"
        print(line, file=self.err, flush=True)
        if self.json_mode:
            print(json.dumps({"error": {"type": kind, "message": message, "exit_code": exit_code, "log_file": self.log_file}}), file=self.out, flush=True)

    def write_traceback(self, exc: BaseException) -> None:
        """The full traceback, into the log file only."""
        import traceback

        path = self.log_file or default_log_path("semid")
        try:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            with open(path, "a", encoding="utf-8") as f:
                f.write(f"\n--- semid error at {time.strftime('%Y-%m-%dT%H:%M:%S%z')}\n")
                traceback.print_exception(exc, file=f)
            self.log_file = path
        except OSError:
            pass  # a log we cannot write must not hide the error line


def default_log_path(command: str) -> str:
    """Where commands without a run (validate, inspect, ...) log: ``$SEMID_LOG_DIR`` or a temp dir."""
    import tempfile

    root = os.environ.get("SEMID_LOG_DIR") or os.path.join(tempfile.gettempdir(), "semid-logs")
    return os.path.join(root, f"semid-{command}.log")


def run_log_path(out: str, name: str, run_id: str) -> str:
    """A run's log: ``<out>/<name>/_logs/<run_id>.log`` for a local --out (kept after the run publishes,
    unlike ``_work/``), else under ``$SEMID_LOG_DIR`` (logs stay local when outputs go to S3)."""
    if "://" not in out:
        return os.path.join(os.path.abspath(out), name, "_logs", f"{run_id}.log")  # name "": OUT/_logs/
    root = os.environ.get("SEMID_LOG_DIR") or os.path.join(os.path.expanduser("~"), ".cache", "semid", "logs")
    return os.path.join(root, name, f"{run_id}.log")


def evaluation_log_path(run: str, eval_id: str) -> str:
    """An evaluation's log, one file per (run, eval id), beside the run's own log: ``<out>/<name>/_logs/
    <run_id>-evaluate-<eval_id>.log`` for a local run, under ``$SEMID_LOG_DIR/<name>/`` for a remote one.
    Named by the eval id alone, evaluations of different runs under one id would share a file."""
    catalog_dir, _, run_id = run.rstrip("/").rpartition("/")  # a run prefix is OUT/NAME/RUN_ID
    out, _, name = catalog_dir.rpartition("/")
    return run_log_path(out, name, f"{run_id}-evaluate-{eval_id}")


def _fd_backed(stream: TextIO, fd: int) -> bool:
    try:
        return stream.fileno() == fd
    except (AttributeError, OSError, ValueError, io.UnsupportedOperation):
        return False


# Environment that keeps third-party output out of the terminal; set before Ray/Prefect start.
CAPTURE_ENV = {
    "PREFECT_LOGGING_LEVEL": "INFO",
}


@contextlib.contextmanager
def capture(console: Console, log_path: str) -> Iterator[None]:
    """Send everything but the CLI's own output to ``log_path`` for the rest of the process.

    In a real process the file descriptors 1 and 2 are pointed at the log (so Ray's C++
    logs, forwarded worker output, the Prefect server subprocess and warnings all land
    there) and the console keeps duplicates of the terminal. They are not restored: late
    output at interpreter exit (Ray and Prefect shutting down) belongs in the log too.
    In-process callers whose streams are not the process's fds (pytest's capsys, a
    notebook) keep their streams; only the log file and handlers are added.
    ``-vv`` disables the capture (everything on the terminal, as without the CLI).
    """
    for key, value in CAPTURE_ENV.items():
        os.environ.setdefault(key, value)
    try:
        Path(log_path).parent.mkdir(parents=True, exist_ok=True)
        log = open(log_path, "a", encoding="utf-8", buffering=1)
    except OSError:  # an unusable --out is the run's error to report, not the log's: log elsewhere
        log_path = default_log_path(Path(log_path).stem)
        Path(log_path).parent.mkdir(parents=True, exist_ok=True)
        log = open(log_path, "a", encoding="utf-8", buffering=1)
    console.log_file = log_path
    if console.verbose >= 2:
        log.close()
        yield
        return
    log.write(f"\n=== semid {' '.join(sys.argv[1:])} (pid {os.getpid()}) {time.strftime('%Y-%m-%dT%H:%M:%S%z')}\n")
    if _fd_backed(sys.stdout, 1) and _fd_backed(sys.stderr, 2):
        sys.stdout.flush()
        sys.stderr.flush()
        console.out = os.fdopen(os.dup(1), "w", buffering=1, encoding=sys.stdout.encoding or "utf-8", errors="replace")
        console.err = os.fdopen(os.dup(2), "w", buffering=1, encoding=sys.stderr.encoding or "utf-8", errors="replace")
        os.dup2(log.fileno(), 1)
        os.dup2(log.fileno(), 2)
        logging.captureWarnings(True)
        yield
        return
    handler = logging.StreamHandler(log)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.getLogger().addHandler(handler)
    try:
        yield
    finally:
        logging.getLogger().removeHandler(handler)
        log.flush()


@contextlib.contextmanager
def show_run_logs(console: Console) -> Iterator[None]:
    """-v: the flow's and stages' own log records on the terminal too (they stay in the log file)."""
    if console.verbose != 1 or console.quiet:
        yield
        return
    handler = logging.StreamHandler(console.err)
    handler.setLevel(logging.INFO)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(message)s", datefmt="%H:%M:%S"))
    loggers = [logging.getLogger(n) for n in ("prefect.flow_runs", "prefect.task_runs", "semid")]
    for lg in loggers:
        lg.addHandler(handler)
    try:
        yield
    finally:
        for lg in loggers:
            lg.removeHandler(handler)


class ProgressView(logging.Handler):
    """Draws ``semid.progress`` events: live bars on a terminal, one finished line per stage otherwise."""

    def __init__(self, console: Console) -> None:
        super().__init__(level=logging.DEBUG)
        self.console = console
        self.live = _is_tty(console.err)
        self.started: dict[str, float] = {}
        self.last: dict[str, progress.ProgressEvent] = {}
        self.finished: list[progress.ProgressEvent] = []
        self._bars = None
        self._tasks: dict[str, Any] = {}

    def __enter__(self) -> "ProgressView":
        if self.console.shows_progress:
            if self.live:
                from rich.console import Console as RichConsole
                from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn

                self._bars = Progress(
                    TextColumn("{task.description:<7}"), BarColumn(bar_width=28), MofNCompleteColumn(), TextColumn("{task.fields[unit]}"),
                    TaskProgressColumn(), TextColumn("{task.fields[rate]}"), TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(),
                    TextColumn("{task.fields[note]}"),
                    console=RichConsole(file=self.console.err, force_terminal=True), redirect_stdout=False, redirect_stderr=False, transient=False,
                )
                self._bars.start()
            logger = logging.getLogger(progress.LOGGER_NAME)
            logger.setLevel(logging.DEBUG)
            logger.addHandler(self)
        return self

    def __exit__(self, *exc: object) -> None:
        logger = logging.getLogger(progress.LOGGER_NAME)
        logger.removeHandler(self)
        if not logger.handlers:
            logger.setLevel(logging.NOTSET)
        if self._bars is not None:
            self._bars.stop()

    def emit(self, record: logging.LogRecord) -> None:
        event = progress.event_of(record)
        if event is None:
            return
        try:
            self._show(event)
        except Exception:  # noqa: BLE001 - a drawing error must never fail a run
            self.handleError(record)

    def _show(self, e: progress.ProgressEvent) -> None:
        if not e.finished and any(f.stage == e.stage for f in self.finished):
            return  # a worker's line forwarded after its stage finished
        now = time.monotonic()
        start = self.started.setdefault(e.stage, now)
        if e.finished:
            seconds = e.seconds if e.seconds is not None else now - start
            # The final count wins; a stage that counted other units while running (and says none now) keeps those.
            live = self.last.get(e.stage)
            done, unit = (live.done, live.unit) if live is not None and live.done and live.unit != e.unit else (e.done, e.unit)
            e = progress.ProgressEvent(stage=e.stage, done=done, total=done, unit=unit, finished=True, seconds=seconds, note=e.note)
            self.finished.append(e)
        self.last[e.stage] = e
        if self._bars is not None:
            self._draw(e, now - start)
        elif e.finished:
            print(format_stage_line(e), file=self.console.err, flush=True)

    def _draw(self, e: progress.ProgressEvent, elapsed: float) -> None:
        rate = f"{e.done / elapsed:,.0f} {e.unit}/s" if elapsed > 0 and e.done and not e.finished else ""
        fields = {"unit": e.unit, "rate": rate, "note": e.note if e.finished else ""}
        if e.stage not in self._tasks:
            self._tasks[e.stage] = self._bars.add_task(e.stage, total=e.total, completed=e.done, **fields)
        else:
            self._bars.update(self._tasks[e.stage], total=e.total if e.total is not None else None, completed=e.done, **fields)
        if e.finished:
            self._bars.stop_task(self._tasks[e.stage])


def format_stage_line(e: progress.ProgressEvent) -> str:
    """``  embed      3,000 items      41.2s      73 items/s  items 3000, embedded 3000, cache_hits 0``"""
    seconds = e.seconds or 0.0
    per_s = e.done / seconds if seconds >= 0.05 and e.done else 0.0
    rate = f"{per_s:,.{0 if per_s >= 10 else 1 if per_s >= 1 else 2}f} {e.unit}/s" if per_s else ""
    return f"  {e.stage:<7} {e.done:>9,} {e.unit:<7} {seconds:7.1f}s {rate:>16}  {e.note}".rstrip()


def _is_tty(stream: TextIO) -> bool:
    try:
        return stream.isatty() and os.environ.get("TERM") != "dumb"
    except (AttributeError, ValueError):
        return False

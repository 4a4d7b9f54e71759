"""The benchmarks' own output: their figures on the terminal, what Ray and Prefect print in a log file.

A bench runs the flows in-process, so without this the figures drown in forwarded Ray worker lines
and Prefect's task-run records (80-110 lines per Beauty evaluation). The CLI's capture is reused:
file descriptors 1 and 2 point at the log for the rest of the process, and the bench prints its
figures to the stream this yields (a duplicate of the terminal). A bench that fails says so on
the terminal too (the traceback itself goes to the log with the rest).
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from typing import TextIO


@contextlib.contextmanager
def figures_only(bench: str) -> Iterator[TextIO]:
    from flows.console import Console, capture, default_log_path

    console = Console(out=sys.stdout, err=sys.stderr)
    log_path = default_log_path(f"bench-{bench}")
    print(f"Ray, Prefect and stage logs: {log_path}", file=sys.stderr, flush=True)
    with capture(console, log_path):
        try:
            yield console.out
        except SystemExit as exc:
            if exc.code not in (None, 0):
                print(f"bench {bench} stopped: {exc.code}", file=console.err, flush=True)
            raise
        except BaseException as exc:
            print(f"bench {bench} failed: {type(exc).__name__}: {exc} (traceback in {log_path})", file=console.err, flush=True)
            raise

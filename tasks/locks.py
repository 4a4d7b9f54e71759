"""One run per catalog at a time: an advisory lock held for the whole flow run.

``fcntl.flock`` is released by the kernel when the process dies (SIGKILL
included), so a killed run never leaves a stale lock behind. Local outputs lock
``<out>/<catalog>/.lock`` itself; S3 outputs lock a file named after the
prefix in the local temp dir, which serialises runs on one host. Across hosts,
the Prefect deployment's concurrency limit (deploy/prefect.yaml) does the job.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import tempfile
import time
from collections.abc import Iterator

from tasks import storage


class RunLocked(RuntimeError):
    """Another run of the same catalog holds the lock."""


def lock_path(catalog_prefix: str) -> str:
    if storage.is_s3(catalog_prefix):
        digest = hashlib.sha256(catalog_prefix.encode()).hexdigest()[:24]
        return os.path.join(tempfile.gettempdir(), f"semid-{digest}.lock")
    os.makedirs(catalog_prefix, exist_ok=True)
    return os.path.join(catalog_prefix, ".lock")


@contextlib.contextmanager
def catalog_lock(catalog_prefix: str, *, wait_seconds: float = 0.0) -> Iterator[None]:
    """Hold the catalog's lock; wait up to ``wait_seconds`` for it, then fail clearly."""
    path = lock_path(catalog_prefix)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    deadline = time.monotonic() + wait_seconds
    try:
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "unknown"
                    raise RunLocked(f"another run of {catalog_prefix} is in progress (lock {path}, held by {holder}); retry later") from None
                time.sleep(0.5)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()}".encode(), 0)
        yield
    finally:
        os.close(fd)  # closing releases the flock

"""One run per catalog at a time, held for the whole flow run.

With a Prefect server configured (``PREFECT_API_URL`` set), the exclusion is a
Prefect *global concurrency limit* named after the catalog prefix (limit 1,
created on first use): it holds across hosts, pods and deployments and shows in
the UI under Concurrency. A holder that dies loses its slot when its lease
expires, or at once when the next run finds the holder gone (see
:func:`prefect_catalog_limit`).

Without a server (``semid run`` with Prefect's in-process API) it falls back to
an advisory ``fcntl.flock``, released by the kernel when the process dies
(SIGKILL included). Local outputs lock ``<out>/<catalog>/.lock`` itself; S3
outputs lock a file named after the prefix in the local temp dir, which
serialises runs on one host only.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import socket
import tempfile
import time
import uuid
from collections.abc import Iterator

from tasks import storage


class RunLocked(RuntimeError):
    """Another run of the same catalog holds the lock."""


LEASE_SECONDS = 60.0
"""A live holder renews its lease in the background; a vanished one frees the slot after this long."""
HOLDER_FILE = ".holder.json"
FREE_SLOT_GRACE_SECONDS = 120.0
"""How long to keep asking for a slot that the server reports free (a busy server can answer late)."""


def concurrency_limit_name(catalog_prefix: str) -> str:
    """The Prefect global concurrency limit of one catalog: readable, and unique per output prefix."""
    prefix = catalog_prefix.rstrip("/")
    digest = hashlib.sha256(prefix.encode()).hexdigest()[:10]
    return f"semid-{prefix.rsplit('/', 1)[-1]}-{digest}"


def server_configured() -> bool:
    from prefect.settings import PREFECT_API_URL

    return bool(PREFECT_API_URL.value())


@contextlib.contextmanager
def catalog_exclusion(catalog_prefix: str, *, wait_seconds: float = 0.0) -> Iterator[None]:
    """One run of a catalog at a time: a Prefect global concurrency limit with a server, else :func:`catalog_lock`."""
    if server_configured():
        with prefect_catalog_limit(catalog_prefix, wait_seconds=wait_seconds):
            yield
    else:
        with catalog_lock(catalog_prefix, wait_seconds=wait_seconds):
            yield


def ensure_concurrency_limit(name: str, *, limit: int = 1) -> None:
    """Create the global concurrency limit if it does not exist yet (an operator's own setting is kept)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
    from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound

    with get_client(sync_client=True) as client:
        try:
            client.read_global_concurrency_limit_by_name(name)
        except ObjectNotFound:
            with contextlib.suppress(ObjectAlreadyExists):  # another run created it first
                client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name=name, limit=limit))


@contextlib.contextmanager
def prefect_catalog_limit(catalog_prefix: str, *, wait_seconds: float = 0.0) -> Iterator[None]:
    """Hold the one slot of the catalog's global concurrency limit; wait up to ``wait_seconds``, then fail clearly.

    The holder is recorded in ``<catalog prefix>/.holder.json`` (lease id, flow
    run, host, pid). A lease whose holder is gone (its process dead on this
    host, or its flow run in a final state such as Crashed) is released at once,
    so a retried night or a resumed run does not wait for the lease to expire.
    """
    # Prefect's public ``concurrency()`` hides the lease id, which reclaiming a dead holder's slot needs.
    from prefect.concurrency._asyncio import AcquireConcurrencySlotTimeoutError
    from prefect.concurrency._leases import maintain_concurrency_lease
    from prefect.concurrency._sync import acquire_concurrency_slots_with_lease, release_concurrency_slots_with_lease

    name = concurrency_limit_name(catalog_prefix)
    ensure_concurrency_limit(name)
    marker = storage.join(catalog_prefix, HOLDER_FILE)
    flow_run_id = _flow_run_id()
    holder = None
    if flow_run_id:
        from prefect.types._concurrency import ConcurrencyLeaseHolder

        holder = ConcurrencyLeaseHolder(type="flow_run", id=flow_run_id)
    start = time.monotonic()
    while True:
        try:
            # One attempt is a round trip to the server: a zero timeout would expire before the answer.
            lease = acquire_concurrency_slots_with_lease([name], 1, timeout_seconds=5.0, lease_duration=LEASE_SECONDS, strict=True, holder=holder)
            break
        except AcquireConcurrencySlotTimeoutError:
            if _release_if_holder_gone(marker, release_concurrency_slots_with_lease):
                continue
            waited = time.monotonic() - start
            # A free slot that a slow server did not hand out in time is not a lock held by another run.
            if waited < max(wait_seconds, FREE_SLOT_GRACE_SECONDS) and _slot_free(name):
                continue
            if waited >= wait_seconds:
                raise RunLocked(f"another run of {catalog_prefix} is in progress (Prefect concurrency limit {name}); retry later") from None
    me = {"lease_id": str(lease.lease_id), "flow_run_id": flow_run_id, "host": socket.gethostname(), "pid": os.getpid(), "limit": name}
    try:
        storage.write_json(marker, me)
        with maintain_concurrency_lease(lease.lease_id, LEASE_SECONDS):
            yield
    finally:
        with contextlib.suppress(Exception):
            if storage.read_json(marker).get("lease_id") == me["lease_id"]:
                storage.remove(marker)
        release_concurrency_slots_with_lease(lease.lease_id)


def _slot_free(name: str) -> bool:
    from prefect.client.orchestration import get_client

    try:
        with get_client(sync_client=True) as client:
            limit = client.read_global_concurrency_limit_by_name(name)
    except Exception:  # noqa: BLE001 - cannot tell: treat as held
        return False
    return limit.active_slots < limit.limit


def _flow_run_id() -> str | None:
    from prefect.context import FlowRunContext

    ctx = FlowRunContext.get()
    return str(ctx.flow_run.id) if ctx and ctx.flow_run else None


def _release_if_holder_gone(marker: str, release) -> bool:
    """Release the recorded holder's lease when that holder can no longer be running; True if released."""
    try:
        held = storage.read_json(marker)
    except Exception:  # noqa: BLE001 - no record: the holder has only just acquired, or its lease will expire
        return False
    if not _holder_gone(held):
        return False
    with contextlib.suppress(Exception):  # another waiter released it first
        release(uuid.UUID(held["lease_id"]))
    with contextlib.suppress(Exception):
        storage.remove(marker)
    return True


def _holder_gone(held: dict) -> bool:
    if held.get("host") == socket.gethostname():
        try:
            os.kill(int(held["pid"]), 0)
        except ProcessLookupError:
            return True
        except (PermissionError, ValueError, KeyError, TypeError):
            pass
    if held.get("flow_run_id"):
        from prefect.client.orchestration import get_client

        try:
            with get_client(sync_client=True) as client:
                state = client.read_flow_run(uuid.UUID(held["flow_run_id"])).state
        except Exception:  # noqa: BLE001 - an unknown run: let its lease expire
            return False
        return state is not None and state.is_final()
    return False


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

"""Small manifests that tasks return, and the stage-completion records that make re-runs resume.

A stage writes its outputs under ``<work>/<stage>/`` and then, last,
``<work>/<stage>/_stage.json``. A re-run of the same run id with the same
input hash finds that record and skips the stage; anything without the record
is treated as absent and rebuilt.
"""

from __future__ import annotations

import hashlib
import json
import time
from typing import Any

from pydantic import BaseModel, Field

from tasks import storage

STAGE_RECORD = "_stage.json"


class StageManifest(BaseModel):
    """What one stage produced: URIs, counts and hashes, never the data itself."""

    stage: str
    input_hash: str
    """Hash of everything the stage's output depends on (inputs' hashes + config)."""
    outputs: dict[str, str] = Field(default_factory=dict)
    counts: dict[str, int] = Field(default_factory=dict)
    info: dict[str, Any] = Field(default_factory=dict)
    seconds: float = 0.0
    resumed: bool = False


def hash_of(*parts: Any) -> str:
    """A stable sha256 over JSON-serialisable parts (dict keys sorted)."""
    h = hashlib.sha256()
    for p in parts:
        h.update(json.dumps(p, sort_keys=True, default=str).encode())
        h.update(b"\x00")
    return h.hexdigest()


def stage_dir(work_uri: str, stage: str) -> str:
    return storage.join(work_uri, stage)


def load_completed(work_uri: str, stage: str, input_hash: str) -> StageManifest | None:
    """The stage's manifest if it finished before with the same input hash, else None."""
    record = storage.join(stage_dir(work_uri, stage), STAGE_RECORD)
    if not storage.exists(record):
        return None
    manifest = StageManifest.model_validate(storage.read_json(record))
    if manifest.input_hash != input_hash:
        return None
    return manifest.model_copy(update={"resumed": True})


def record_completed(work_uri: str, manifest: StageManifest) -> StageManifest:
    """Write the completion record last, after every output of the stage exists."""
    storage.write_json(storage.join(stage_dir(work_uri, manifest.stage), STAGE_RECORD), manifest.model_dump())
    return manifest


class Stopwatch:
    def __init__(self) -> None:
        self.start = time.perf_counter()

    @property
    def seconds(self) -> float:
        return round(time.perf_counter() - self.start, 3)

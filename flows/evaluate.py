"""``semid evaluate`` as a Prefect flow: how well a generative recommender learns from a run's IDs.

Only wiring: each task calls stage code in :mod:`tasks.evaluate` (read the run
and the interactions, build the baselines from the run's embeddings, train and
score through Ray Train, write ``<run>/eval/<eval_id>/``) and the flow
publishes the comparison table as a Markdown artifact.
"""

from __future__ import annotations

import datetime as dt
import time
from typing import Any, Literal

from prefect import flow, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from pydantic import BaseModel, ConfigDict, Field, model_validator

from flows.retokenize import check_safe
from tasks import storage
from tasks.evaluate import stage
from tasks.evaluate.engine import EvalConfig, EvalResult, IdSet
from tasks.evaluate.interactions import Sequences, read_interactions, restrict_to_known
from tasks.evaluate.report import below_reference_lines, markdown_table, paired_section, summarize_id_set
from tasks.evaluate.retriever import RetrieverConfig
from tasks.logs import stage_logger
from tasks.ray_runtime import ray_session

DEFAULT_STEPS = 600


class EvaluateParams(BaseModel):
    """Everything an evaluation depends on (recorded in evaluation.json)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    run: str
    """A published run prefix OUT/NAME/RUN_ID (local or s3://)."""
    interactions: str
    """user_sequence.txt-style file, or a .parquet/.csv/.tsv table of user_id, item_id, timestamp."""
    baselines: list[Literal["rkmeans", "rkmeans_fused", "random"]] = ["rkmeans", "random"]
    """Residual k-means of the run's text vectors; of its fused text + collaborative vectors (runs built with
    --interactions); random codes. Same ID length and disambiguation as the run's."""
    steps: int | None = Field(None, ge=1)
    """Optimiser steps per (ID set, seed); default DEFAULT_STEPS when no time budget is given."""
    time_budget_s: float | None = Field(None, gt=0)
    """Seconds of training per (ID set, seed), instead of steps."""
    seeds: list[int] = Field(default_factory=lambda: [0, 1], min_length=1)
    eval_id: str | None = None
    """Folder name under <run>/eval/ (default: UTC timestamp)."""
    num_workers: int | None = Field(None, ge=1)
    """Ray Train workers (one CPU, or one GPU, each); None: one per (ID set, seed) job, up to the cluster's
    CPUs, or GPUs when training on them (all of them with ddp)."""
    parallel: Literal["jobs", "ddp"] = "jobs"
    """jobs: the (ID set, seed) jobs are spread over the workers; ddp: each job trains data-parallel on all."""
    use_gpu: bool | None = None
    """None: use a GPU when the Ray cluster has one."""
    in_process: bool = False
    """Train in this process instead of Ray Train (same engine)."""
    batch_size: int = Field(128, ge=1)
    lr: float = Field(1e-3, gt=0)
    beam: int = Field(20, ge=1)
    eval_every: int = Field(200, ge=1)
    val_users: int = Field(1000, ge=1)
    patience: int = Field(4, ge=1)
    max_history: int = Field(20, ge=1)
    retriever: RetrieverConfig = RetrieverConfig()

    @model_validator(mode="after")
    def _one_budget(self) -> "EvaluateParams":
        if self.steps is not None and self.time_budget_s is not None:
            raise ValueError("give steps or time_budget_s, not both")
        if len(set(self.baselines)) != len(self.baselines):
            raise ValueError(f"baselines repeat: {self.baselines}")
        return self

    def engine_config(self) -> EvalConfig:
        steps = self.steps if self.steps is not None or self.time_budget_s is not None else DEFAULT_STEPS
        return EvalConfig(
            steps=steps, time_budget_s=self.time_budget_s, batch_size=self.batch_size, lr=self.lr, beam=self.beam,
            eval_every=self.eval_every, val_users=self.val_users, patience=self.patience, max_history=self.max_history,
            model=self.retriever,
        )


@task(name="evaluate-load", cache_policy=NO_CACHE)
def load_task(params: EvaluateParams) -> tuple[stage.RunIds, Sequences]:
    """Read the interactions and the run's IDs first: bad input fails before Ray starts."""
    return stage.load_run_ids(params.run), read_interactions(params.interactions)


@task(name="evaluate-baselines", cache_policy=NO_CACHE)
def baselines_task(run: stage.RunIds, params: EvaluateParams, work: str) -> tuple[list[IdSet], dict[str, Any]]:
    seed = int(run.manifest.get("params", {}).get("seed", 0))
    return stage.build_baselines(run, params.run, list(params.baselines), seed=seed, work_uri=work)


def _dropped(id_sets: list[IdSet], sequences: Sequences) -> dict[str, dict[str, Any]]:
    """What each ID set's evaluation drops (unknown items, users too short), logged and recorded."""
    log = stage_logger("evaluate")
    out = {}
    for ids in id_sets:
        _, dropped = restrict_to_known(sequences, frozenset(ids.item_ids.tolist()))
        out[ids.name] = dropped.to_dict()
        if dropped.unknown_interactions or dropped.short_users:
            log.warning("%s: dropped %d interactions with %d items unknown to the run (e.g. %s) and %d users left with < 3 items",
                        ids.name, dropped.unknown_interactions, dropped.unknown_items, dropped.unknown_examples, dropped.short_users)
    return out


@task(name="evaluate-train", cache_policy=NO_CACHE)
def train_task(id_sets: list[IdSet], sequences: Sequences, params: EvaluateParams, plan: stage.WorkerPlan | None) -> list[EvalResult]:
    """Ray Train on ``plan``'s workers; ``plan=None`` (``--in-process``) trains in this process."""
    log = stage_logger("evaluate")
    config = params.engine_config()
    if plan is None:
        return stage.train_and_score_in_process(id_sets, sequences, config=config, seeds=params.seeds, log=log.info)
    return stage.train_and_score(id_sets, sequences, config=config, seeds=params.seeds, plan=plan)


@task(name="evaluate-reference", cache_policy=NO_CACHE)
def reference_task(run: stage.RunIds, sequences: Sequences, params: EvaluateParams) -> dict[str, Any]:
    """The ID-free next-item counts on the same split (seconds): how far the retriever is from what counts alone know."""
    return stage.reference_entry(run.ids, sequences, max_history=params.max_history)


@task(name="evaluate-report", cache_policy=NO_CACHE)
def report_task(eval_uri: str, payload: dict[str, Any], results: list[EvalResult]) -> str:
    stage.write_evaluation(eval_uri, payload, stage.ranks_table(results))
    create_markdown_artifact(key="semid-evaluation", markdown=markdown_table(payload), description=f"semid evaluate {eval_uri}")
    return eval_uri


@flow(name="evaluate", log_prints=True)
def evaluate(params: EvaluateParams) -> dict[str, Any]:
    """Score the run's IDs and the baselines with a generative retriever; returns evaluation.json's content."""
    t0 = time.perf_counter()
    eval_id = check_safe("eval id", params.eval_id or dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ"))
    eval_uri = storage.join(params.run, "eval", eval_id)
    if storage.exists(storage.join(eval_uri, stage.SUCCESS)):
        raise stage.RunNotEvaluable(f"{eval_uri} already holds a finished evaluation; choose another eval id")
    work = storage.join(eval_uri, "_work")
    run, sequences = load_task(params)
    stage.check_no_leak(run.manifest, params.interactions)
    reference = reference_task(run, sequences, params)
    with ray_session():
        baselines, vectors_info = baselines_task(run, params, work)
        id_sets = [run.ids, *baselines]
        dropped = _dropped(id_sets, sequences)
        plan = None if params.in_process else stage.plan_workers(len(id_sets) * len(params.seeds), num_workers=params.num_workers,
                                                                   use_gpu=params.use_gpu, parallel=params.parallel)
        results = train_task(id_sets, sequences, params, plan)
    storage.remove(work)
    kinds = {run.ids.name: "run", **{b.name: b.name for b in baselines}}
    config = params.engine_config()
    payload: dict[str, Any] = {
        "eval_id": eval_id,
        "run": params.run,
        "created_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "interactions": {"uri": storage.absolute(params.interactions), "sha256": stage.file_sha256(params.interactions),
                         "users": len(sequences.users), "interactions": sequences.n_interactions},
        "config": {**config.to_dict(), "seeds": list(params.seeds), "baselines": list(params.baselines),
                   "num_workers": plan.num_workers if plan else None, "use_gpu": plan.use_gpu if plan else None,
                   "parallel": params.parallel, "in_process": params.in_process},
        "baseline_vectors": vectors_info,
        "id_sets": {},
    }
    by_set = {ids.name: [r for r in results if r.name == ids.name] for ids in id_sets}
    for ids in id_sets:
        payload["id_sets"][ids.name] = summarize_id_set(kind=kinds[ids.name], sha256=stage.ids_hash(ids), n_items=len(ids.item_ids),
                                                        dropped=dropped[ids.name], results=by_set[ids.name])
    payload["paired"] = paired_section(by_set, kinds)
    payload["reference"] = reference
    for line in below_reference_lines(payload):
        stage_logger("evaluate").warning(line)
    payload["n_users"] = next(iter(payload["id_sets"].values()))["n_users"]
    payload["wall_seconds"] = round(time.perf_counter() - t0, 3)
    report_task(eval_uri, payload, results)
    return payload

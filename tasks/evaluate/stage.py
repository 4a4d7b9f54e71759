"""The evaluation stage: IO around the engine (read a published run, build baselines, train via Ray Train, write).

* :func:`load_run_ids` reads ``<run>/semantic_ids`` and the run's L and K.
* :func:`build_baselines` gets the run's vectors by calling the embed stage on
  the run's ``items/`` with the run's embed config and the output root's
  embedding cache (``<out>/_cache/embeddings``: unchanged items are never
  re-embedded), for ``rkmeans_fused`` also the collab stage with the run's
  interactions (checked against their recorded sha256) and settings, then
  builds residual k-means / random IDs (:mod:`.baselines`).
* :func:`plan_workers` resolves, once, how many Ray Train workers on which
  devices (GPU when the cluster has one; by default one worker per job up to
  the devices); evaluation.json records the result.
* :func:`train_and_score` runs :func:`tasks.evaluate.engine.evaluate_ids` for
  every (ID set, seed) inside one Ray Train ``TorchTrainer`` on that plan. With
  more than one worker the independent (ID set, seed) jobs are spread over the
  workers (``parallel="jobs"``: two cores, two jobs at once) or each job trains
  data-parallel on all of them (``parallel="ddp"``); rank 0 gathers the results
  and returns them as JSON in its checkpoint.
* :func:`write_evaluation` writes ``evaluation.json``, ``evaluation.html``,
  ``test_ranks.parquet`` (each test user's rank per ID set and seed, so that
  evaluations can be compared user by user later) and ``_SUCCESS`` last under
  ``<run>/eval/<eval_id>/`` (local or s3://).
"""

from __future__ import annotations

import hashlib
import json
import logging
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import numpy as np
import pyarrow as pa

from tasks import storage
from tasks.errors import BadInput
from tasks.evaluate import reference
from tasks.evaluate.baselines import baseline_ids
from tasks.evaluate.engine import EvalConfig, EvalResult, IdSet, evaluate_ids, prepare
from tasks.evaluate.interactions import Sequences
from tasks.evaluate.report import render_html
from tasks.progress import worker_line

if TYPE_CHECKING:
    from tasks.manifest import CollabResult, EmbedResult

SUCCESS = "_SUCCESS"
RESULTS = "results.json"
RANKS = "test_ranks.parquet"


class RunNotEvaluable(BadInput):
    """The run prefix is not a finished run with semantic IDs (or its parameters are unreadable)."""


@dataclass(frozen=True)
class RunIds:
    ids: IdSet
    n_levels: int  # L (the IDs have L + 1 codes)
    manifest: dict[str, Any]


def load_run_ids(run_prefix: str) -> RunIds:
    if not storage.exists(storage.join(run_prefix, SUCCESS)):
        raise RunNotEvaluable(f"{run_prefix} is not a finished run (no _SUCCESS)")
    manifest = storage.read_json(storage.join(run_prefix, "manifest.json"))
    table = storage.read_parquet(storage.join(run_prefix, "semantic_ids"))
    codes = np.array(table["codes"].to_pylist(), dtype=np.int64)
    params = manifest.get("params", {})
    k = int(params.get("model", {}).get("codebook_size", int(codes.max()) + 1))
    name = f"run:{manifest.get('catalog', '?')}/{manifest.get('run_id', '?')}"
    ids = IdSet.from_codes(name=name, item_ids=table["item_id"].to_pylist(), codes=codes, codebook_size=k)
    return RunIds(ids=ids, n_levels=codes.shape[1] - 1, manifest=manifest)


def output_root(run_prefix: str) -> str:
    """``<out>`` of a run published at ``<out>/<catalog>/<run_id>``."""
    if storage.is_s3(run_prefix):
        return run_prefix.rstrip("/").rsplit("/", 2)[0]
    return str(Path(run_prefix).resolve().parent.parent)


def run_embeddings(run_prefix: str, manifest: dict[str, Any], *, work_uri: str) -> "EmbedResult":
    """The run's text embeddings, via the embed stage and the run's embedding cache."""
    from tasks.config import EmbedConfig
    from tasks.embed import embed

    params = manifest.get("params", {})
    if params.get("ingest", {}).get("embedding_column"):
        raise RunNotEvaluable(f"{run_prefix} was built from the catalog's own vectors, which a run does not keep; "
                              "baselines need them: use --baselines none")
    saved = params.get("embed", {})
    config = EmbedConfig(**{k: v for k, v in saved.items() if k in EmbedConfig.model_fields})
    cache = storage.join(output_root(run_prefix), "_cache", "embeddings")
    return embed(items_uri=storage.join(run_prefix, "items"), work_uri=work_uri, cache_uri=cache, config=config)


def run_fused_embeddings(run_prefix: str, manifest: dict[str, Any], text: "EmbedResult", *, work_uri: str) -> "CollabResult":
    """The fused text + collaborative vectors the run's model was fitted on, rebuilt by the collab stage.

    Only from the same interactions: the file's sha256 must match the one the run recorded.
    """
    from tasks.collab import collab, interactions_sha256
    from tasks.config import CollabConfig

    done = manifest.get("stages", {}).get("collab")
    if not done:
        raise RunNotEvaluable(f"{run_prefix} was not built with --interactions: the rkmeans_fused baseline needs its fused vectors")
    sha = interactions_sha256(done["interactions"])
    if sha != done["interactions_sha256"]:
        raise RunNotEvaluable(f"{done['interactions']} changed since the run (sha256 {sha[:12]}…, the run used "
                              f"{done['interactions_sha256'][:12]}…): the run's fused vectors cannot be rebuilt")
    params = manifest["params"]
    return collab(embeddings_uri=text.embeddings, embeddings_hash=text.input_hash, interactions=done["interactions"],
                  interactions_sha256=sha, work_uri=work_uri, config=CollabConfig(**params["collab"]), seed=params["seed"])


def run_items_matrix(uri: str, run: RunIds) -> tuple[np.ndarray, np.ndarray]:
    """(item_ids, vectors) of the embedding parts under ``uri``, for the items that carry a run ID."""
    from tasks.embed import vectors_matrix

    table = storage.read_parquet(uri)
    item_ids, vectors = np.asarray(table["item_id"].to_pylist()), vectors_matrix(table)
    keep = np.isin(item_ids, run.ids.item_ids)  # quarantined items have no vector here anyway
    return item_ids[keep], vectors[keep]


def build_baselines(run: RunIds, run_prefix: str, names: list[str], *, seed: int, work_uri: str) -> tuple[list[IdSet], dict[str, Any]]:
    if not names:
        return [], {}
    text = run_embeddings(run_prefix, run.manifest, work_uri=work_uri)
    item_ids, vectors = run_items_matrix(text.embeddings, run)
    info: dict[str, Any] = {"embed_counts": {"items": text.items, "embedded": text.embedded, "cache_hits": text.cache_hits},
                            "n_items": int(item_ids.shape[0]), "dim": int(vectors.shape[1])}
    inputs = {name: (item_ids, vectors) for name in names if name != "rkmeans_fused"}
    if "rkmeans_fused" in names:
        fused = run_fused_embeddings(run_prefix, run.manifest, text, work_uri=work_uri)
        inputs["rkmeans_fused"] = run_items_matrix(fused.embeddings, run)
        info["fused_dim"] = fused.dim
    sets = [baseline_ids(n, *inputs[n], n_levels=run.n_levels, codebook_size=run.ids.codebook_size, seed=seed) for n in names]
    return sets, info


def ids_hash(ids: IdSet) -> str:
    order = np.argsort(ids.item_ids, kind="stable")
    h = hashlib.sha256()
    h.update("\n".join(ids.item_ids[order].tolist()).encode())
    h.update(np.ascontiguousarray(ids.codes[order], dtype="<i8").tobytes())
    return h.hexdigest()


# --------------------------------------------------------------------------- Ray Train


def _train_loop(loop_config: dict[str, Any]) -> None:
    """Runs in every Ray Train worker: the in-process engine, one (ID set, seed) job after another."""
    import ray.train
    import torch
    from ray.train import Checkpoint

    torch.set_num_threads(1)
    logging.getLogger("ray.train").setLevel(logging.WARNING)
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    config = EvalConfig.from_dict(loop_config["config"])
    ddp = loop_config["parallel"] == "ddp"
    id_sets, seeds = loop_config["id_sets"], loop_config["seeds"]
    jobs = [(i, s) for i in range(len(id_sets)) for s in seeds]
    mine = jobs if ddp else jobs[rank::world]
    results: list[tuple[int, dict]] = []
    prepared: dict[int, Any] = {}
    for j, (i, seed) in enumerate(jobs):
        if (i, seed) not in mine:
            continue
        if i not in prepared:
            prepared = {i: prepare(id_sets[i], loop_config["sequences"], max_history=config.max_history)}
        log = (lambda m: worker_line(f"[worker {rank}] {m}")) if (rank == 0 or not ddp) else None
        results.append((j, evaluate_ids(id_sets[i], prepared[i], config=config, seed=seed, log=log, ddp=ddp).to_dict()))
    if not ddp and world > 1:
        gathered: list[Any] = [None] * world
        torch.distributed.all_gather_object(gathered, results)
        results = [r for part in gathered for r in part]
    if rank == 0:
        ordered = [r for _, r in sorted(results, key=lambda jr: jr[0])]
        with tempfile.TemporaryDirectory() as d:
            Path(d, RESULTS).write_text(json.dumps(ordered))
            ray.train.report({"done": len(ordered)}, checkpoint=Checkpoint.from_directory(d))
    else:
        ray.train.report({"done": len(results)})


@dataclass(frozen=True)
class WorkerPlan:
    """The Ray Train workers of one evaluation, resolved once against the cluster and recorded in evaluation.json."""

    num_workers: int
    use_gpu: bool
    parallel: str
    resources_per_worker: dict[str, float]


def plan_workers(n_jobs: int, *, num_workers: int | None = None, use_gpu: bool | None = None, parallel: str = "jobs") -> WorkerPlan:
    """Workers for ``n_jobs`` (ID set, seed) jobs on the current Ray cluster.

    ``use_gpu=None``: when the cluster has a GPU. ``num_workers=None``: one per job up to the devices
    (GPUs when training uses them, else CPUs), since jobs are independent and a 2-CPU box then trains
    two at a time instead of one after another; "ddp" trains each job data-parallel on every device.
    More workers than devices share them (jobs), but DDP needs one GPU each or it would wait forever.
    """
    if parallel not in ("jobs", "ddp"):
        raise ValueError(f"parallel must be 'jobs' or 'ddp', got {parallel!r}")
    import ray

    cluster = ray.cluster_resources()
    gpus, cpus = float(cluster.get("GPU", 0)), float(cluster.get("CPU", 1))
    if use_gpu is None:
        use_gpu = gpus > 0
    if num_workers is None:
        devices = max(1, int(gpus if use_gpu else cpus))
        num_workers = devices if parallel == "ddp" else max(1, min(n_jobs, devices))
    if use_gpu and parallel == "ddp" and num_workers > gpus:
        raise ValueError(f"parallel='ddp' with {num_workers} workers needs {num_workers} GPUs; the cluster has {gpus:g}")
    resources = {"CPU": min(1.0, cpus / num_workers)}
    if use_gpu:
        resources["GPU"] = min(1.0, gpus / num_workers)
    return WorkerPlan(num_workers=num_workers, use_gpu=use_gpu, parallel=parallel, resources_per_worker=resources)


def train_and_score(id_sets: list[IdSet], sequences: Sequences, *, config: EvalConfig, seeds: list[int], plan: WorkerPlan) -> list[EvalResult]:
    """Every (ID set, seed) through Ray Train on the planned workers, results in (ID set, seed) order."""
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    with tempfile.TemporaryDirectory(prefix="semid-eval-") as storage_path:
        trainer = TorchTrainer(
            _train_loop,
            train_loop_config={"id_sets": id_sets, "sequences": sequences, "seeds": list(seeds), "config": config.to_dict(), "parallel": plan.parallel},
            scaling_config=ScalingConfig(num_workers=plan.num_workers, use_gpu=plan.use_gpu, resources_per_worker=plan.resources_per_worker),
            run_config=RunConfig(name="evaluate", storage_path=storage_path),
        )
        result = trainer.fit()
        if result.checkpoint is None:
            raise RuntimeError("evaluation training finished without results")
        with result.checkpoint.as_directory() as d:
            return [EvalResult.from_dict(r) for r in json.loads(Path(d, RESULTS).read_text())]


def train_and_score_in_process(id_sets: list[IdSet], sequences: Sequences, *, config: EvalConfig, seeds: list[int], log: Callable[[str], None] | None = None) -> list[EvalResult]:
    """The same jobs without Ray (scripts, benchmarks)."""
    out = []
    for ids in id_sets:
        data = prepare(ids, sequences, max_history=config.max_history)
        out.extend(evaluate_ids(ids, data, config=config, seed=s, log=log) for s in seeds)
    return out


def reference_entry(ids: IdSet, sequences: Sequences, *, max_history: int) -> dict[str, Any]:
    """evaluation.json's ``reference``: the ID-free next-item counts (:mod:`tasks.evaluate.reference`) on the users and
    split the ID sets are scored on (the run's items)."""
    t0 = time.perf_counter()
    data = prepare(ids, sequences, max_history=max_history)
    test = reference.score(data.split, n_items=len(ids.item_ids))
    return {"name": reference.NAME, "n_users": data.n_users, "test": {m: v.to_dict() for m, v in test.items()},
            "seconds": round(time.perf_counter() - t0, 3)}


# --------------------------------------------------------------------------- output


def ranks_table(results: list[EvalResult]) -> pa.Table:
    """(id_set, seed, user, rank) for every scored test user: rank is 0-based in the beam, -1 when not returned."""
    n = [len(r.test_ranks) for r in results]
    return pa.table({
        "id_set": pa.array([r.name for r, k in zip(results, n) for _ in range(k)], pa.string()),
        "seed": pa.array(np.repeat([r.seed for r in results], n), pa.int64()),
        "user": pa.array([u for r in results for u in r.test_users], pa.string()),
        "rank": pa.array([x for r in results for x in r.test_ranks], pa.int32()),
    })


def write_evaluation(eval_uri: str, payload: dict[str, Any], ranks: pa.Table) -> str:
    """evaluation.json, evaluation.html, test_ranks.parquet, then _SUCCESS (readers trust only a folder that has it)."""
    storage.remove(eval_uri)  # a half-written earlier attempt of this eval id
    storage.write_parquet(ranks, storage.join(eval_uri, RANKS))
    storage.write_json(storage.join(eval_uri, "evaluation.json"), payload)
    storage.write_bytes(storage.join(eval_uri, "evaluation.html"), render_html(payload).encode())
    storage.write_bytes(storage.join(eval_uri, SUCCESS), b"")
    return eval_uri


def check_no_leak(manifest: dict[str, Any], interactions: str) -> None:
    """Refuse to score IDs that were fitted (``semid run --interactions``) on this file's validation or test items.

    Leave-one-out holds out each user's last two items; a run whose collab stage kept fewer
    than two of them out saw the answers.
    """
    collab = manifest.get("stages", {}).get("collab")
    if collab and collab["holdout_last"] < 2 and collab["interactions_sha256"] == file_sha256(interactions):
        raise RunNotEvaluable(
            f"the run's IDs were fitted on these interactions with collab.holdout_last={collab['holdout_last']}: they saw the "
            "validation/test items of this evaluation (leave-one-out needs holdout_last >= 2)"
        )


def file_sha256(uri: str) -> str:
    return hashlib.sha256(storage.read_bytes(uri)).hexdigest()



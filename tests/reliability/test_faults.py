"""Faults injected into real runs: Ray workers and whole runs SIGKILLed, S3 failing, two runs racing, training diverging.

Every run is ``semid run`` in its own process group (see helpers.py), with a
real local Ray cluster, a real Prefect API and, for S3, a moto server on
127.0.0.1 that the test controls. The guarantee under test is always the same:
a run either completes with exactly the output of an uninterrupted run, or
fails with a readable reason and publishes nothing (no ``_SUCCESS``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import pickle
import shutil
import signal
import time
from pathlib import Path

import pytest

from tests.reliability import helpers as h

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def reference() -> h.Reference:
    return h.reference_run()


def seed_embedding_cache(reference: h.Reference, out: Path) -> None:
    """Give a run the reference's embedding cache, so it skips the embedder (this file's runs test other stages)."""
    shutil.copytree(reference.prefix.parents[1] / "_cache", out / "_cache")


def assert_same_ids(prefix: Path, reference: h.Reference) -> None:
    assert h.manifest(prefix)["ids_hash"] == reference.ids_hash
    assert h.read_ids(prefix).equals(h.read_ids(reference.prefix))
    assert h.ids_bytes(prefix) == h.ids_bytes(reference.prefix), "semantic_ids files are byte-identical to the uninterrupted run"


def assert_failed_clearly(code: int, log: str, *needles: str) -> str:
    """Exit 1/2 with one ``semid:`` line that names the cause; returns that line."""
    assert code in (1, 2), f"expected a failed run, got exit {code}:\n{log[-3000:]}"
    lines = [line for line in log.splitlines() if line.startswith("semid: ")]
    assert lines, f"no 'semid:' error line in the output:\n{log[-3000:]}"
    for needle in needles:
        assert needle in lines[-1], f"{needle!r} not in {lines[-1]!r}"
    return lines[-1]


# --------------------------------------------------------------------------- 1. Ray workers killed


def test_ray_workers_killed_in_embed_and_assign_are_restarted_and_output_is_identical(tmp_path, reference):
    """SIGKILL the embedding actor mid-batch and the assignment actor; Ray restarts them and retries the work."""
    out = tmp_path / "out"  # no embedding cache: the embedder must really run
    # -vv: Ray's retry lines stay on the terminal (the quiet CLI otherwise writes them to the run's log file)
    # the actor pools, not a small catalog's one-task path (the reference run took that one: same IDs either way)
    config = h.write_config(tmp_path / "actors.json", embed={**h.TINY["embed"], "single_task_max_items": 0}, assign={"single_task_max_items": 0})
    run = h.start_run(tmp_path, catalog=reference.catalog, out=out, run_id="killed-workers", config=config, extra_args=["-vv"])
    seen: dict[str, set[int]] = {"TextEmbedder": set(), "ItemEncoder": set()}
    killed: dict[str, int] = {}
    try:
        while run.proc.poll() is None and time.monotonic() - run.started < 300:
            for pid, args in h.descendants(run.pid):
                for actor in seen:
                    if f"MapBatches({actor})" not in args or "defunct" in args:
                        continue
                    seen[actor].add(pid)
                    # the embedder mid-batch (its title shows the running method); the encoder as soon as it exists
                    due = ".submit" in args if actor == "TextEmbedder" else True
                    if actor not in killed and due:
                        os.kill(pid, signal.SIGKILL)
                        killed[actor] = pid
            time.sleep(0.02)
        code = run.wait(timeout=60)
    finally:
        h.kill_tree(run.pid)
    log = run.output()
    assert set(killed) == {"TextEmbedder", "ItemEncoder"}, f"did not get to kill both actors ({killed}):\n{run.tail()}"
    for actor, pid in killed.items():
        assert seen[actor] - {pid}, f"{actor} was never restarted after SIGKILL of pid {pid}"
    prefix = out / "shop" / "killed-workers"
    if code != 0:  # the other acceptable outcome: a clear failure, nothing published
        assert_failed_clearly(code, log)
        assert not h.success_markers(out)
        pytest.fail(f"run failed instead of recovering from lost workers (nothing published):\n{run.tail()}")
    assert "will be retried" in log, "Ray retried the embedding batch that was running on the killed actor"
    assert_same_ids(prefix, reference)
    assert h.manifest(prefix)["resumed_stages"] == []


@pytest.mark.timeout(180)
def test_actors_that_die_on_every_batch_fail_the_stage_instead_of_hanging(tmp_path, reference, monkeypatch):
    """Ray Data restarts a lost actor forever by default: a worker that crashes on every attempt would
    hang the run (holding the catalog lock). Embed and assign bound the restarts, so the stage fails
    (and the Prefect task retry takes over); so does a small catalog's one-task path (bounded task
    retries). The real stage code runs, with the actor class swapped."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq
    import ray

    from tasks import assign as assign_mod
    from tasks import embed as embed_mod
    from tasks.config import EmbedConfig, PipelineConfig
    from tasks.ray_runtime import ray_session

    class DiesOnEveryBatch:  # defined here, so Ray ships it by value
        def __init__(self, **kwargs):
            pass

        def __call__(self, batch):
            os._exit(1)

    monkeypatch.setattr(embed_mod, "TextEmbedder", DiesOnEveryBatch)
    monkeypatch.setattr(assign_mod, "ItemEncoder", DiesOnEveryBatch)
    n = 40
    ids = [f"I{i:03d}" for i in range(n)]
    vectors = np.random.default_rng(0).standard_normal((n, 384)).astype(np.float32)
    (tmp_path / "embed").mkdir()
    pq.write_table(pa.table({"item_id": ids, "text_hash": ids, "vector": embed_mod.vectors_array(vectors)}), tmp_path / "embed" / "part-00000.parquet")
    pq.write_table(pa.table({"text_hash": ids, "text": [f"item {i}" for i in ids]}), tmp_path / "misses.parquet")
    texts = [f"item {i}" for i in ids]
    pq.write_table(pa.table({"item_id": ids, "text_hash": [hashlib.sha256(t.encode()).hexdigest() for t in texts], "text": texts}), tmp_path / "items.parquet")
    reference_config = json.loads(reference.config.read_text())

    def config(single_task_max_items: int) -> PipelineConfig:
        return PipelineConfig.model_validate({**reference_config, "assign": {**reference_config.get("assign", {}), "single_task_max_items": single_task_max_items}})

    def run_assign(single_task_max_items: int) -> None:
        assign_mod.assign(embeddings_uri=str(tmp_path / "embed"), embeddings_hash="x", model_uri=str(reference.prefix / "model"), model_hash="y",
                          work_uri=str(tmp_path / "work"), config=config(single_task_max_items))

    with ray_session(num_cpus=2):
        for name, call, error in (
            ("embed actors", lambda: embed_mod._embed_with_ray([str(tmp_path / "misses.parquet")], n_misses=n, config=EmbedConfig(batch_size=8), embedder={
                "model_path": "unused", "device": "cpu", "fp16": False, "batch_size": 8, "out_dir": str(tmp_path / "new"), "n_buckets": 1}),
             ray.exceptions.RayActorError),
            # the one-task path of a small catalog: Ray retries the task (max_retries), then the stage fails
            ("embed task", lambda: embed_mod.embed(items_uri=str(tmp_path / "items.parquet"), work_uri=str(tmp_path / "embed-work"), cache_uri=None,
                                                   config=EmbedConfig(device="cpu", cache=False)),
             ray.exceptions.WorkerCrashedError),
            ("assign actors", lambda: run_assign(0), ray.exceptions.RayActorError),
            ("assign task", lambda: run_assign(10**6), ray.exceptions.WorkerCrashedError),
        ):
            t0 = time.monotonic()
            with pytest.raises(error):
                call()
            assert time.monotonic() - t0 < 60, f"{name}: gave up only after {time.monotonic() - t0:.0f}s"
    assert not (tmp_path / "work" / "assign" / "_stage.json").exists()


# --------------------------------------------------------------------------- 2. the whole run killed during export


def test_run_killed_during_export_resumes_from_stage_outputs_with_identical_output(tmp_path, reference):
    out = tmp_path / "out"
    seed_embedding_cache(reference, out)
    prefix = out / "shop" / "exp"
    first_file = prefix / "semantic_ids" / "part-00000.parquet"
    run = h.start_run(tmp_path, catalog=reference.catalog, out=out, run_id="exp", config=reference.config, tag="exp-killed")
    try:
        h.wait_for(first_file.exists, timeout=240, interval=0.002, what="export to start", run=run)
        os.killpg(run.pid, signal.SIGKILL)  # the flow process and its group, mid-export
    finally:
        h.kill_tree(run.pid)
    run.proc.wait(timeout=30)
    assert run.proc.returncode == -signal.SIGKILL
    assert prefix.exists(), "the kill landed during export"
    assert not (prefix / "_SUCCESS").exists() and not h.success_markers(out), "a killed export never looks finished"
    work = out / "shop" / "_work" / "exp"
    assert all((work / stage / "_stage.json").exists() for stage in ("ingest", "embed", "fit", "assign"))

    code, log = h.run_flow(tmp_path, catalog=reference.catalog, out=out, run_id="exp", config=reference.config, tag="exp-resumed")
    assert code == 0, log[-3000:]
    m = h.manifest(prefix)
    assert m["resumed_stages"] == ["assign", "embed", "fit", "ingest"]
    assert_same_ids(prefix, reference)
    assert h.success_markers(out) == [prefix / "_SUCCESS"]
    assert not (out / "shop" / "_work").exists(), "the work area is removed once published"
    ref_files = sorted(p.relative_to(reference.prefix) for p in reference.prefix.rglob("*") if p.is_file())
    assert sorted(p.relative_to(prefix) for p in prefix.rglob("*") if p.is_file()) == ref_files, "no stale files from the killed attempt"


# --------------------------------------------------------------------------- 3. S3 errors


@pytest.fixture(scope="module")
def moto():
    """An in-process ThreadedMotoServer we can stop and start again; its state outlives a stop."""
    pytest.importorskip("moto.server")
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)

    class Moto:
        def __init__(self) -> None:
            self.server = None
            self.start()

        def start(self) -> str:
            self.server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
            self.server.start()
            host, port = self.server.get_host_and_port()
            self.endpoint = f"http://{host}:{port}"
            return self.endpoint

        def stop(self) -> None:
            """Stop serving and close the socket: clients get 'connection refused' from now on."""
            self.server.stop()
            self.server._server.server_close()

    m = Moto()
    yield m
    m.stop()


def test_s3_bucket_that_does_not_exist_fails_at_once(tmp_path, reference, moto):
    out = "s3://no-such-bucket-semid/runs"
    code, log = h.run_flow(tmp_path, catalog=reference.catalog, out=out, run_id="r1", config=reference.config, env=h.s3_env(moto.endpoint))
    # The cause must be in the one error line. (It is currently reported as "cannot parse <catalog>": ingest
    # wraps the failed write to the work area as a catalog read error; see the report.)
    line = assert_failed_clearly(code, log, "bucket does not exist")
    assert "Retry 1/" not in log, "a missing bucket is not transient: no retries"
    assert "no-such-bucket-semid" not in {b["Name"] for b in h.s3_client(moto.endpoint).list_buckets()["Buckets"]}
    assert h.SECRET not in log, line


def test_s3_server_lost_mid_run_fails_after_retries_and_publishes_nothing(tmp_path, reference, moto):
    bucket = "lost-server"
    h.s3_client(moto.endpoint).create_bucket(Bucket=bucket)
    endpoint = moto.endpoint
    # One HTTP attempt per S3 call (botocore would otherwise back off ~8 s per call): what is under test is
    # the pipeline's own behaviour (Prefect task retries, then a clear failure), and this keeps it quick.
    env = {**h.s3_env(endpoint), "AWS_MAX_ATTEMPTS": "1"}
    # -vv: Prefect's retry lines stay on the terminal (the quiet CLI otherwise writes them to the run's log file)
    run = h.start_run(tmp_path, catalog=reference.catalog, out=f"s3://{bucket}/runs", run_id="r1", config=reference.config, env=env, extra_args=["-vv"])
    try:
        h.wait_for(lambda: any(k.startswith("runs/shop/_work/") for k in h.s3_keys(endpoint, bucket)), timeout=120, interval=0.05, what="the work area on S3", run=run)
        moto.stop()
        stopped = time.monotonic()
        code = run.wait(timeout=240)
    finally:
        h.kill_tree(run.pid)
        moto.start()  # same in-process state, new port
    log = run.output()
    assert_failed_clearly(code, log)
    assert "Retry 1/" in log and "Retries are exhausted" in log, "the transient storage failure was retried by Prefect before giving up"
    assert time.monotonic() - stopped < 200
    keys = h.s3_keys(moto.endpoint, bucket)
    assert not [k for k in keys if k.endswith("_SUCCESS")], keys
    assert not [k for k in keys if k.startswith("runs/shop/r1/")], "nothing reached the run's prefix"
    assert h.SECRET not in log


# --------------------------------------------------------------------------- 4. two runs of one catalog at once (on S3) + security


@pytest.fixture(scope="module")
def s3_race(tmp_path_factory, reference, moto):
    """Two runs of the same catalog to the same S3 prefix started together (run ids a and b)."""
    tmp = tmp_path_factory.mktemp("race")
    bucket = "race"
    client = h.s3_client(moto.endpoint)
    client.create_bucket(Bucket=bucket)
    cache = reference.prefix.parents[1] / "_cache"
    for f in cache.rglob("*.parquet"):
        client.put_object(Bucket=bucket, Key=f"runs/_cache/{f.relative_to(cache).as_posix()}", Body=f.read_bytes())
    env = h.s3_env(moto.endpoint)
    runs = {rid: h.start_run(tmp, catalog=reference.catalog, out=f"s3://{bucket}/runs", run_id=rid, config=reference.config, env=env) for rid in ("a", "b")}
    try:
        codes = {rid: r.wait(timeout=300) for rid, r in runs.items()}
    finally:
        for r in runs.values():
            h.kill_tree(r.pid)
    keys = h.s3_keys(moto.endpoint, bucket)
    objects = {k: client.get_object(Bucket=bucket, Key=k)["Body"].read() for k in keys if not k.endswith(".parquet") or "/semantic_ids/" in k}
    return {"codes": codes, "logs": {rid: r.output() for rid, r in runs.items()}, "keys": keys, "objects": objects, "tmp": tmp}


def test_concurrent_runs_of_one_catalog_one_is_refused_outputs_never_interleave(s3_race, reference):
    codes, logs, keys = s3_race["codes"], s3_race["logs"], s3_race["keys"]
    assert sorted(codes.values()) == [0, 1], {rid: logs[rid][-2000:] for rid in codes}
    winner = next(rid for rid, c in codes.items() if c == 0)
    loser = next(rid for rid, c in codes.items() if c == 1)
    assert_failed_clearly(codes[loser], logs[loser], "RunLocked", "another run of s3://race/runs/shop is in progress")
    assert not [k for k in keys if k.startswith((f"runs/shop/{loser}/", f"runs/shop/_work/{loser}/"))], "the refused run wrote nothing"
    assert [k for k in keys if k.endswith("_SUCCESS")] == [f"runs/shop/{winner}/_SUCCESS"]
    assert not [k for k in keys if k.startswith("runs/shop/_work/")], "the winner cleaned its work area"
    m = json.loads(s3_race["objects"][f"runs/shop/{winner}/manifest.json"])
    assert m["run_id"] == winner and m["ids_hash"] == reference.ids_hash
    published = sorted(k.split(f"runs/shop/{winner}/", 1)[1] for k in keys if k.startswith(f"runs/shop/{winner}/"))
    assert published == sorted(["_SUCCESS", "manifest.json", *(f for fs in m["files"].values() for f in fs), "quality.json", "quality.html", "quarantine/part-00000.parquet", "items/part-00000.parquet"])
    ids = s3_race["objects"][f"runs/shop/{winner}/semantic_ids/part-00000.parquet"]
    assert ids == h.ids_bytes(reference.prefix)["part-00000.parquet"]


def test_credentials_never_reach_outputs_or_logs_and_checkpoints_load_without_pickle(s3_race, reference, monkeypatch):
    winner = next(rid for rid, c in s3_race["codes"].items() if c == 0)
    secret = h.SECRET.encode()
    for name in ("manifest.json", "quality.json", "quality.html", "model/config.json"):
        assert secret not in s3_race["objects"][f"runs/shop/{winner}/{name}"], name
    for rid, log in s3_race["logs"].items():
        assert h.SECRET not in log, f"run {rid} printed the AWS secret"
    model_keys = sorted(k for k in s3_race["keys"] if k.startswith(f"runs/shop/{winner}/model/"))
    assert model_keys == [f"runs/shop/{winner}/model/config.json", f"runs/shop/{winner}/model/model.safetensors"]
    assert sorted(p.name for p in (reference.prefix / "model").iterdir()) == ["config.json", "model.safetensors"]

    import torch

    from tasks.fit import load_model  # imported first: modules that bind pickle.loads at import keep the real one

    def no_unpickling(*args, **kwargs):
        raise AssertionError("a checkpoint must load without pickle")

    with monkeypatch.context() as mp:
        for module, name in ((torch, "load"), (pickle, "load"), (pickle, "loads"), (pickle, "Unpickler")):
            mp.setattr(module, name, no_unpickling)
        model = load_model(str(reference.prefix / "model"))
    assert model.config.codebook_size == h.TINY["model"]["codebook_size"]


# --------------------------------------------------------------------------- 5. training diverges or collapses


def test_nan_loss_and_codebook_collapse_fail_before_publishing_with_the_metrics(tmp_path, reference):
    """Two runs side by side: a learning rate that blows the loss up, and a catalog whose texts are all alike."""
    out_nan, out_collapse = tmp_path / "out-nan", tmp_path / "out-collapse"
    seed_embedding_cache(reference, out_nan)
    alike = [{**row, "title": "Plain white cotton T-shirt", "brand": "Basic", "categories": "Clothing > Tops", "description": ""} for row in h.catalog_rows()]
    for i in range(0, len(alike), 3):
        alike[i]["title"] = "Plain white cotton T-shirt, large"
    collapse_catalog = h.make_catalog(tmp_path / "alike.csv", rows=alike, bad=False)
    nan = h.start_run(tmp_path, catalog=reference.catalog, out=out_nan, run_id="nan", config=reference.config, sets=["fit.lr=1e6", "fit.warmup_steps=0"])
    collapse = h.start_run(tmp_path, catalog=collapse_catalog, out=out_collapse, run_id="flat", config=reference.config, sets=["fit.min_code_usage=0.9"])
    try:
        codes = {"nan": nan.wait(timeout=300), "collapse": collapse.wait(timeout=300)}
    finally:
        h.kill_tree(nan.pid)
        h.kill_tree(collapse.pid)

    line = assert_failed_clearly(codes["nan"], nan.output(), "TrainingFailed")
    assert "non-finite loss" in line and "loss=" in line and "recon=" in line, line
    line = assert_failed_clearly(codes["collapse"], collapse.output(), "TrainingFailed", "codebook collapse", "code usage per level", "recon=")
    usage = json.loads(line.split("code usage per level ", 1)[1].split("]", 1)[0] + "]")
    assert len(usage) == h.TINY["model"]["n_levels"] and min(usage) < 0.9 * 1.0, line
    for out, run_id in ((out_nan, "nan"), (out_collapse, "flat")):
        assert not h.success_markers(out)
        assert not (out / "shop" / run_id).exists(), "nothing of a failed fit reaches the run prefix"
        assert not (out / "shop" / "_work" / run_id / "assign").exists(), "assignment never ran on a failed model"
    assert "Retry 1/" not in nan.output() + collapse.output(), "a failed fit is not retried (fit has retries=0)"

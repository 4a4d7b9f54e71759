"""The assign stage: encoder actors write shards, partitions resolve in Ray tasks, and the IDs equal the
single-process reference (``rqvae_core.ids``) byte for byte, fresh, stable and after a retrain."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from rqvae_core import RQVAE, RQVAEConfig, save_checkpoint
from rqvae_core.ids import reassign_stable, resolve_collisions
from tasks import assign as assign_mod
from tasks import storage
from tasks.config import PipelineConfig
from tasks.embed import vectors_array
from tasks.ray_runtime import ray_session

L, K, DIM = 2, 16, 16


@pytest.fixture(scope="module")
def ray_cluster():
    with ray_session(num_cpus=2):
        yield


def _vectors(n, seed):
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(12, DIM))  # few clusters: big collision groups that overflow and move
    x = centers[rng.integers(12, size=n)] + 0.5 * rng.normal(size=(n, DIM))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def _write_embeddings(path, ids, hashes, vectors):
    if path.exists():
        shutil.rmtree(path)
    path.mkdir(parents=True)
    order = np.argsort(ids)
    half = len(ids) // 2  # two parts, as the embed stage writes them
    for i, rows in enumerate((order[:half], order[half:])):
        pq.write_table(pa.table({"item_id": pa.array(ids[rows].tolist(), pa.string()), "text_hash": pa.array(hashes[rows].tolist(), pa.string()),
                                 "vector": vectors_array(vectors[rows])}), path / f"part-{i:05d}.parquet")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    torch.manual_seed(0)
    # k-means level 1: these tests are about partitioned assignment, and the toy ID space (K^L = 256 IDs under a
    # level-1 code) needs balanced level-1 cells for 3,000 items; graph clusters are allowed to be unequal
    model = RQVAE(config=RQVAEConfig(input_dim=DIM, hidden_dims=(32,), n_levels=L, codebook_size=K, spectral_init=False))
    model.init_codebooks(torch.from_numpy(_vectors(800, seed=1)))
    d = tmp_path_factory.mktemp("model")
    save_checkpoint(model, d)
    return d


def _config(partition_rows, single_task_max_items):
    return PipelineConfig.model_validate({"assign": {"partition_rows": partition_rows, "rows_per_file": 300, "batch_size": 128,
                                                     "single_task_max_items": single_task_max_items}})


def _run(tmp_path, name, ids, hashes, vectors, model_dir, *, partition_rows, prior=None, retrain=False, single_task_max_items=10**6):
    emb = tmp_path / name / "embed"
    _write_embeddings(emb, ids, hashes, vectors)
    result = assign_mod.assign(embeddings_uri=str(emb), embeddings_hash=name, model_uri=str(model_dir), model_hash="m",
                               work_uri=str(tmp_path / name / "work"), config=_config(partition_rows, single_task_max_items), prior_run=prior, retrain=retrain)
    # a published run's layout, for the next run to chain from
    run = tmp_path / name / "run"
    for sub in ("semantic_ids", "changes", "retired"):
        if (tmp_path / name / "work" / "assign" / sub).exists():
            shutil.copytree(tmp_path / name / "work" / "assign" / sub, run / sub)
    shutil.copy(tmp_path / name / "work" / "assign" / "quality.json", run / "quality.json")
    return result, run


def h_bytes(run):
    return [p.read_bytes() for p in sorted((run / "semantic_ids").glob("*.parquet"))] + [(run / "quality.json").read_bytes()]


def _ids(run):
    t = storage.read_parquet(str(run / "semantic_ids")).sort_by("item_id")
    return np.asarray(t["item_id"].to_pylist()), np.asarray(t["codes"].to_pylist(), dtype=np.int64), t


def _reference_codes(model_dir, vectors):
    from tasks.fit import load_model

    model = load_model(str(model_dir))
    enc = model.encode_items(torch.from_numpy(vectors))
    return enc.codes.numpy(), enc.distance.double().numpy(), (lambda idx: model.last_level_distances(enc.last_residual[idx]).numpy())


def test_partitioned_assign_equals_the_single_process_reference(tmp_path, model_dir, ray_cluster):
    n = 1500
    ids = np.array([f"item-{i:05d}" for i in np.random.default_rng(2).permutation(n)])
    vectors = _vectors(n, seed=3)
    codes, dist, lld = _reference_codes(model_dir, vectors)
    ref = resolve_collisions(item_ids=ids, codes=codes, distances=dist, codebook_size=K, last_level_distances=lld)
    assert ref.n_moved > 0, "the case is meant to exercise overflow"

    one, run_one = _run(tmp_path, "one", ids, ids, vectors, model_dir, partition_rows=10**6)
    actors, run_actors = _run(tmp_path, "actors", ids, ids, vectors, model_dir, partition_rows=10**6, single_task_max_items=0)
    many, run_many = _run(tmp_path, "many", ids, ids, vectors, model_dir, partition_rows=200)
    assert (one.partitions, actors.partitions, many.partitions) == (1, 1, 8)
    assert (one.runner, actors.runner, many.runner) == ("task", "ray_data", "ray_data")
    assert len(list((run_many / "semantic_ids").glob("part-*.parquet"))) == 8
    assert h_bytes(run_one) == h_bytes(run_actors), "one task or encoder actors: the same files"
    for result, run in ((one, run_one), (many, run_many)):
        got_ids, got_codes, _ = _ids(run)
        order = np.argsort(ids)
        assert got_ids.tolist() == ids[order].tolist()
        assert got_codes.astype(np.int32).tobytes() == ref.codes[order].tobytes()
        assert result.n_moved == ref.n_moved and result.ided == n
    assert one.ids_hash == many.ids_hash
    q_one, q_many = (json.loads((r / "quality.json").read_text()) for r in (run_one, run_many))
    for key in ("recon_mse", "unique_tuple_rate", "largest_collision_group", "collision_group_sizes", "levels", "baseline", "recon_error_histogram"):
        assert q_one[key] == pytest.approx(q_many[key]) if isinstance(q_one[key], float) else q_one[key] == q_many[key], key
    assert q_one["largest_collision_group"] == ref.largest_group
    assert not list((tmp_path / "many" / "work" / "assign").glob("encoded")), "scratch shards are removed"


def _next_night(ids, hashes, vectors, *, seed, n_removed, n_changed, n_new):
    """The catalog a night later: some items gone, some with new text (new vectors), some new."""
    rng = np.random.default_rng(seed)
    keep = np.sort(rng.permutation(len(ids))[n_removed:])
    ids, hashes, vectors = ids[keep], hashes[keep].copy(), vectors[keep].copy()
    changed = rng.choice(len(ids), size=n_changed, replace=False)
    hashes[changed] = [f"{h}-v{seed}" for h in hashes[changed]]
    vectors[changed] = _vectors(n_changed, seed=100 + seed)
    new_ids = np.array([f"new-{seed}-{i:04d}" for i in range(n_new)])
    return np.concatenate([ids, new_ids]), np.concatenate([hashes, new_ids]), np.concatenate([vectors, _vectors(n_new, seed=200 + seed)])


def _retired_set(run):
    return sorted(tuple(r) for r in storage.read_parquet(str(run / "retired"))["codes"].to_pylist())


@pytest.mark.parametrize("partition_rows", [100, 10**6], ids=["partitions", "one_task"])
def test_stable_and_retrain_runs_equal_the_reference_across_partitions(tmp_path, model_dir, ray_cluster, partition_rows):
    n = 700
    ids0 = np.array([f"item-{i:05d}" for i in range(n)])
    vectors0 = _vectors(n, seed=4)
    _, night0 = _run(tmp_path, "night0", ids0, ids0, vectors0, model_dir, partition_rows=10**6)
    prior_ids, prior_codes, prior_table = _ids(night0)
    prior_hashes = np.asarray(prior_table["text_hash"].to_pylist())
    prior_retired = np.zeros((0, L + 1), dtype=np.int64)
    ids, hashes, vectors = ids0, ids0, vectors0
    night = night0
    for i in (1, 2):  # night 2 chains from night 1, which has retired IDs
        ids, hashes, vectors = _next_night(ids, hashes, vectors, seed=i, n_removed=30, n_changed=30, n_new=40)
        codes, dist, lld = _reference_codes(model_dir, vectors)
        ref = reassign_stable(item_ids=ids, text_hashes=hashes, codes=codes, distances=dist, codebook_size=K, prior_item_ids=prior_ids,
                              prior_text_hashes=prior_hashes, prior_codes=prior_codes, prior_retired=prior_retired, last_level_distances=lld)
        result, night = _run(tmp_path, f"night{i}", ids, hashes, vectors, model_dir, partition_rows=partition_rows, prior=str(night))
        assert (result.partitions, result.runner) == ((8, "ray_data") if partition_rows == 100 else (1, "task"))
        order = np.argsort(ids)
        got_ids, got_codes, table = _ids(night)
        assert got_ids.tolist() == ids[order].tolist()
        assert got_codes.astype(np.int32).tobytes() == ref.codes[order].tobytes()
        assert _retired_set(night) == sorted(tuple(r) for r in ref.retired.tolist())
        changes = storage.read_parquet(str(night / "changes"))
        status = dict(zip(changes["item_id"].to_pylist(), changes["status"].to_pylist()))
        assert [status[x] for x in ids[order]] == ref.status[order].tolist()
        assert sorted(k for k, v in status.items() if v == "removed") == sorted(ref.removed_item_ids.tolist())
        assert result.removed == 30 and result.drift["items"] == int((ref.status != "kept").sum())
        prior_ids, prior_codes, prior_hashes = got_ids, got_codes, np.asarray(table["text_hash"].to_pylist())
        prior_retired = np.asarray(_retired_set(night), dtype=np.int64)

    # a retrain from night 2: every ID moves, none of the lineage's IDs is issued again
    ids, hashes, vectors = _next_night(ids, hashes, vectors, seed=3, n_removed=100, n_changed=0, n_new=20)
    codes, dist, lld = _reference_codes(model_dir, vectors)
    occupied = np.unique(np.concatenate([prior_codes, prior_retired]), axis=0)
    ref = resolve_collisions(item_ids=ids, codes=codes, distances=dist, codebook_size=K, last_level_distances=lld, occupied=occupied)
    result, retrained = _run(tmp_path, "retrain", ids, hashes, vectors, model_dir, partition_rows=partition_rows, prior=str(night), retrain=True)
    assert result.partitions == (7 if partition_rows == 100 else 1)
    order = np.argsort(ids)
    got_ids, got_codes, _ = _ids(retrained)
    assert got_codes.astype(np.int32).tobytes() == ref.codes[order].tobytes()
    assert _retired_set(retrained) == sorted(tuple(r) for r in occupied.tolist())
    changes = storage.read_parquet(str(retrained / "changes"))
    counts = dict(zip(*np.unique(changes["status"].to_pylist(), return_counts=True)))
    assert counts == {"remapped": len(ids) - 20, "new": 20, "removed": 100}


def test_a_partition_without_items_writes_an_empty_part(tmp_path, model_dir):
    """More partitions than first-level codes in use (a small or collapsed codebook): the idle ones still finish."""
    summary = assign_mod._resolve(3, out_dir=str(tmp_path), model_uri=str(model_dir), n_levels=L, codebook_size=K,
                                  with_prior=False, retrain=False, sample_below=None)
    assert (summary["n_ids"], summary["n_encoded"], summary["digests"]) == (0, 0, {})
    assert pq.read_table(tmp_path / "semantic_ids" / "part-00003.parquet").num_rows == 0


def test_encoder_copies_read_only_vectors_without_a_torch_warning(model_dir, tmp_path):
    import warnings

    vectors = _vectors(50, seed=3)
    vectors.setflags(write=False)  # as the embed stage's Arrow-backed vectors arrive
    encoder = assign_mod.ItemEncoder(model_uri=str(model_dir), device="cpu", out_dir=str(tmp_path), n_partitions=1, chunk_rows=20, with_prior=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        encoded = encoder._encode(vectors)
    assert encoded["codes"].shape == (50, L) and np.isfinite(encoded["sq_err"]).all()

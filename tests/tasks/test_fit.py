"""The fit stage on a local Ray cluster (two DDP workers on a two-node cluster with S3 storage: tests/flows/test_cluster.py)."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
import ray

from rqvae_core import load_checkpoint
from tasks import storage
from tasks.config import PipelineConfig
from tasks.fit import TrainingFailed, check_health, fit_model

pytestmark = pytest.mark.slow
DIM = 32
CONFIG = {
    "model": {"hidden_dims": [64], "codebook_size": 16, "n_levels": 2},
    "fit": {"epochs": 3, "batch_size": 64, "early_stop_patience": 0, "warmup_steps": 5},
}


def write_embeddings(directory: str, n: int = 600, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(40, DIM))
    x = (centers[rng.integers(40, size=n)] + 0.05 * rng.normal(size=(n, DIM))).astype(np.float32)
    ids = [f"I{i:05d}" for i in range(n)]
    vectors = pa.FixedSizeListArray.from_arrays(pa.array(x.ravel()), DIM)
    table = pa.table({"item_id": ids, "text_hash": ids, "vector": vectors})
    storage.write_parquet(table.slice(0, n // 2), f"{directory}/part-00000.parquet")
    storage.write_parquet(table.slice(n // 2), f"{directory}/part-00001.parquet")


def _fit(tmp_path, **overrides):
    emb = str(tmp_path / "emb")
    write_embeddings(emb)
    config = PipelineConfig.model_validate({**CONFIG, "fit": {**CONFIG["fit"], **overrides}})
    return fit_model(embeddings_uri=emb, embeddings_hash="h", n_items=600, dim=DIM, work_uri=str(tmp_path / "work"), config=config)


def test_fit_on_a_local_ray_cluster_checkpoints_and_resumes(tmp_path):
    ray.init(num_cpus=2, include_dashboard=False)
    try:
        manifest = _fit(tmp_path)
        assert manifest.epochs_run == 3 and not manifest.resumed and manifest.runner == "task"
        model = load_checkpoint(manifest.model)
        assert model.config.input_dim == DIM and model.config.codebook_size == 16
        history = storage.read_json(manifest.history)
        assert [h["epoch"] for h in history] == [0, 1, 2]
        # every epoch is scored in eval mode on the fit set; the saved one is the best and is marked
        scores = [h["eval_recon"] for h in history]
        assert [h["epoch"] for h in history if h.get("kept")] == [scores.index(min(scores))] == [manifest.final["epoch"]]
        assert min(history[-1]["code_usage"]) > 0.5
        again = _fit(tmp_path)
        assert again.resumed and again.model_hash == manifest.model_hash
    finally:
        ray.shutdown()


def test_health_check_names_the_failure():
    ok = {"epoch": 4, "loss": 1.0, "recon": 0.5, "codebook": 0.1, "commitment": 0.1, "code_usage": [0.9, 0.8], "nonfinite": False}
    check_health([ok], codebook_size=256, n_items=10_000, min_code_usage=0.05)
    with pytest.raises(TrainingFailed, match="non-finite loss at epoch 4"):
        check_health([{**ok, "loss": float("nan"), "nonfinite": True}], codebook_size=256, n_items=10_000, min_code_usage=0.05)
    with pytest.raises(TrainingFailed, match=r"codebook collapse: code usage per level \[0.9, 0.01\]"):
        check_health([{**ok, "code_usage": [0.9, 0.01]}], codebook_size=256, n_items=10_000, min_code_usage=0.05)
    # the saved epoch's usage is what counts, not the last epoch's
    with pytest.raises(TrainingFailed, match=r"\[0.9, 0.01\] at epoch 1"):
        check_health([{**ok, "epoch": 1, "code_usage": [0.9, 0.01], "kept": True}, ok], codebook_size=256, n_items=10_000, min_code_usage=0.05)
    check_health([{**ok, "epoch": 1, "kept": True}, {**ok, "code_usage": [0.9, 0.01]}], codebook_size=256, n_items=10_000, min_code_usage=0.05)
    # a catalog smaller than the codebook cannot use every code: the floor scales down
    check_health([{**ok, "code_usage": [0.03, 0.03]}], codebook_size=256, n_items=100, min_code_usage=0.05)

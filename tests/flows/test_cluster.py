"""The whole flow on a two-node Ray cluster (``ray.cluster_utils``) with input and output on the moto S3 server.

The flow joins the cluster through ``RAY_ADDRESS``, Ray Train's checkpoint lands under the S3 work
prefix, and from the embed stage on the driver never reads a row of per-item data: the Parquet
readers are patched in the driver process to fail (Ray workers are other processes, untouched).
The published run reads back through polars (object_store) and pyarrow (s3fs), without credentials in it.
"""

from __future__ import annotations

import os

import pyarrow.dataset
import pyarrow.parquet
import polars as pl
import pytest
import ray

import flows.retokenize as retokenize_mod
from tasks import storage
from tasks.config import PipelineConfig
from tasks.sample_catalog import generate_rows
from tests.flows.conftest import TINY
from tests.flows.test_retokenize import check_published, write_catalog
from tests.s3_fixture import BUCKET, moto_s3  # noqa: F401

pytestmark = pytest.mark.slow

READERS = [
    (pyarrow.parquet, "read_table"), (pyarrow.parquet.ParquetFile, "read"), (pyarrow.parquet.ParquetFile, "iter_batches"),
    (pyarrow.parquet.ParquetFile, "read_row_group"), (pyarrow.dataset, "dataset"), (storage, "read_parquet"),
    (pl, "read_parquet"), (pl, "scan_parquet"),
]


def test_whole_flow_on_two_nodes_with_s3_reads_no_item_rows_on_the_driver(tmp_path, moto_s3, monkeypatch):  # noqa: F811
    from ray.cluster_utils import Cluster

    local = tmp_path / "shop.csv"
    n_input = write_catalog(local, generate_rows(n=300, seed=3))  # + 4 bad rows
    catalog = f"s3://{BUCKET}/in/shop.csv"
    storage.write_bytes(catalog, local.read_bytes())
    out = f"s3://{BUCKET}/out"
    armed = {"on": False, "reads": []}

    def guard(owner, name):
        original = getattr(owner, name)

        def refuse(*args, **kwargs):
            if armed["on"]:
                armed["reads"].append(f"{getattr(owner, '__name__', owner)}.{name}")
                raise AssertionError(f"per-item data read on the driver through {name}")
            return original(*args, **kwargs)

        monkeypatch.setattr(owner, name, refuse)

    for owner, name in READERS:
        guard(owner, name)

    def arming(stage):
        original = getattr(retokenize_mod, stage)

        def run(*args, **kwargs):
            armed["on"] = True  # ingest (polars, before Ray starts) is done: nothing per item on the driver from here
            return original(*args, **kwargs)

        monkeypatch.setattr(retokenize_mod, stage, run)

    arming("embed")
    original_assign = retokenize_mod.assign
    checkpoints: list[str] = []
    nodes: list[int] = []

    def assign_after_checking_the_checkpoint(*args, **kwargs):
        fs, _ = storage.filesystem(out)
        checkpoints.extend(fs.glob(f"{BUCKET}/out/shop/_work/r1/fit/_train/*/checkpoint_*/model.safetensors"))
        nodes.append(len([n for n in ray.nodes() if n["Alive"]]))  # the flow's Ray connection is the cluster's
        return original_assign(*args, **kwargs)

    monkeypatch.setattr(retokenize_mod, "assign", assign_after_checking_the_checkpoint)

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 2})  # after moto_s3: the nodes inherit its environment
    cluster.add_node(num_cpus=1)
    monkeypatch.setenv("RAY_ADDRESS", cluster.address)
    config = PipelineConfig.model_validate({**TINY, "fit": {**TINY["fit"], "num_workers": 2, "epochs": 2},
                                           "embed": {**TINY["embed"], "partition_rows": 100}, "assign": {"partition_rows": 100}})
    try:
        result = retokenize_mod.retokenize(catalog=catalog, out=out, name="shop", run_id="r1", config=config)
    finally:
        if ray.is_initialized():
            ray.shutdown()
        cluster.shutdown()
    armed["on"] = False
    assert not armed["reads"], armed["reads"]
    assert nodes == [2]
    assert checkpoints, "Ray Train's checkpoint is under the S3 work prefix"
    prefix = f"{out}/shop/r1"
    assert result["prefix"] == prefix
    manifest = check_published(prefix, n_input=n_input, n_quarantined=4)
    stages = manifest["stages"]
    assert stages["fit"]["runner"] == "ray_train" and stages["fit"]["num_workers"] == 2
    # both ranks scored each epoch on their shards (all-reduced) and agreed on the epoch to save
    assert stages["fit"]["final"]["kept"] and stages["fit"]["final"]["eval_recon"] > 0
    assert stages["embed"]["parts"] == 3 and stages["assign"]["partitions"] == 3
    # read back with polars (object_store) and pyarrow (s3fs) through the HTTP endpoint
    df = pl.read_parquet(f"{prefix}/semantic_ids/*.parquet", storage_options=storage.polars_storage_options(prefix))
    assert df.height == n_input - 4 and df["sid"].n_unique() == df.height
    fs, path = storage.filesystem(prefix)
    assert pyarrow.dataset.dataset(f"{path}/semantic_ids", filesystem=fs, format="parquet").to_table().num_rows == df.height
    secret = os.environ["AWS_SECRET_ACCESS_KEY"]
    for name in ("manifest.json", "quality.json"):
        assert secret not in storage.read_bytes(f"{prefix}/{name}").decode(), "credentials never reach outputs"

"""Same catalog + config + seed ⇒ byte-identical semantic IDs, whatever the run and the row order.

Two full runs side by side (helpers.reference_run), each with its own output
root (so no embedding cache is shared and every stage really runs): the shared
reference run and a run of the same rows shuffled (bad rows included). A shuffled run that matches byte for byte
is also a second run that matches; test_faults.py adds more same-order re-runs
(workers killed, export killed and resumed) that must match the reference too.
"""

from __future__ import annotations

import pytest

from tests.reliability import helpers as h

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def runs():
    reference = h.reference_run()  # runs the shuffled twin too
    shuffled, original = reference.shuffled_catalog.read_text(), reference.catalog.read_text()
    assert shuffled != original and sorted(shuffled.splitlines()) == sorted(original.splitlines())
    return {"reference": reference.prefix, "shuffled": reference.shuffled_prefix}


@pytest.mark.parametrize("other", ["shuffled"])
def test_semantic_ids_are_identical(runs, other):
    ref, got = runs["reference"], runs[other]
    a, b = h.read_ids(ref), h.read_ids(got)
    assert a.schema == b.schema
    assert a.num_rows == b.num_rows == h.N_ITEMS
    for column in ("item_id", "codes", "sid", "text_hash"):
        assert a[column].to_pylist() == b[column].to_pylist(), f"{column} differs between the reference and the {other} run"
    assert h.manifest(ref)["ids_hash"] == h.manifest(got)["ids_hash"]
    assert h.ids_bytes(ref) == h.ids_bytes(got), "the Parquet files themselves are byte-identical"


@pytest.mark.parametrize("other", ["shuffled"])
def test_model_and_quality_are_identical(runs, other):
    """Not just the IDs: the fitted weights and the corpus metrics do not depend on the run or the row order."""
    from safetensors.numpy import load_file

    ref, got = runs["reference"], runs[other]
    # Tensors, not file bytes: safetensors writes its __metadata__ map in a per-process hash order,
    # so two saves of the same weights can differ in the header (see the report).
    a, b = (load_file(str(p / "model" / "model.safetensors")) for p in (ref, got))
    assert sorted(a) == sorted(b)
    for name in a:
        assert a[name].dtype == b[name].dtype and a[name].tobytes() == b[name].tobytes(), name
    assert (ref / "model" / "config.json").read_bytes() == (got / "model" / "config.json").read_bytes()
    assert h.read_json(ref / "quality.json", drop=("run",)) == h.read_json(got / "quality.json", drop=("run",))
    qa, qb = (h.manifest(p)["stages"] for p in (ref, got))
    assert qa["fit"]["final"] == qb["fit"]["final"]
    # not fit.model_hash: it is sha256 of the safetensors file, header metadata order included
    assert qa["embed"]["input_hash"] == qb["embed"]["input_hash"]


def test_training_rows_keep_the_embedding_order_whatever_ray_finishes_first(tmp_path):
    """With several embedding part files (catalogs over 50k items), parallel read tasks finish in any order.

    The fit stage must still see its rows in one fixed order, or the seeded shuffle, the
    model and the IDs change from run to run (the TINY catalogs above have one part only).
    """
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    from tasks.embed import _vectors_array
    from tasks.fit import ingest_options, training_dataset
    from tasks.ray_runtime import ray_session

    sizes = [3000, 3500, 4000, 3000, 3500, 4000]  # unequal parts, so the read tasks finish at different times
    start = 0
    for i, n in enumerate(sizes):
        ids = [f"I{start + j:07d}" for j in range(n)]
        matrix = np.zeros((n, 8), dtype=np.float32)
        matrix[:, 0] = np.arange(start, start + n)
        pq.write_table(pa.table({"item_id": ids, "text_hash": ids, "vector": _vectors_array(matrix)}), tmp_path / f"part-{i:05d}.parquet")
        start += n
    with ray_session(num_cpus=2):
        for _ in range(2):
            ds = training_dataset(str(tmp_path))
            seen = np.concatenate([b["vector"][:, 0] for b in ds.iter_batches(batch_size=None, batch_format="numpy")])
            assert np.array_equal(seen, np.arange(start)), "training rows are not in embedding order"
    assert ingest_options().preserve_order, "Ray Train's split of the dataset keeps the order too"

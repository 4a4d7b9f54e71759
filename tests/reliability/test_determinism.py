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


def test_training_shards_keep_the_embedding_order_and_the_sample_is_a_hash_of_the_text(tmp_path):
    """Fit workers read their parts themselves: rows in part (item_id) order, parts dealt round-robin,
    and above fit.max_items a sample decided by the text hash, so the fitted model cannot depend on
    which worker or read finished first (catalogs over 50k items have several parts)."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    from tasks.embed import vectors_array
    from tasks.fit import load_shard, sample_threshold

    sizes = [300, 350, 400, 300]
    start, files = 0, []
    for i, n in enumerate(sizes):
        ids = [f"I{start + j:07d}" for j in range(n)]
        hashes = [f"{(j * 2654435761) % (1 << 32):08x}" + "0" * 24 for j in range(start, start + n)]
        matrix = np.zeros((n, 8), dtype=np.float32)
        matrix[:, 0] = np.arange(start, start + n)
        files.append(str(tmp_path / f"part-{i:05d}.parquet"))
        pq.write_table(pa.table({"item_id": ids, "text_hash": hashes, "vector": vectors_array(matrix)}), files[-1])
        start += n
    full = load_shard(files, rank=0, world_size=1, threshold=1 << 32)
    assert np.array_equal(full[:, 0], np.arange(start))
    rank1 = load_shard(files, rank=1, world_size=2, threshold=1 << 32)[:, 0]
    assert np.array_equal(rank1, np.concatenate([np.arange(300, 650), np.arange(1050, 1350)]))
    one_part = load_shard(files[:1], rank=1, world_size=2, threshold=1 << 32)[:, 0]
    assert np.array_equal(one_part, np.arange(1, 300, 2)), "fewer parts than workers: every other row"
    threshold = sample_threshold(n_items=start, max_items=400)
    sample = load_shard(files, rank=0, world_size=1, threshold=threshold)[:, 0]
    assert 250 < len(sample) < 550 and np.array_equal(sample, np.sort(sample))
    reversed_parts = load_shard(files[::-1], rank=0, world_size=1, threshold=threshold)[:, 0]
    assert np.array_equal(np.sort(reversed_parts), sample), "the sample does not depend on the part order"
    assert sample_threshold(n_items=400, max_items=400) == 1 << 32

"""Collaborative vectors (tasks/collab.py): co-occurrence PPMI, SVD, fusion, and the hold-out that keeps evaluation fair."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from tasks import storage
from tasks.collab import _collab_job, collaborative_vectors, cooccurrence_ppmi, fuse
from tasks.config import CollabConfig
from tasks.embed import vectors_array


def test_ppmi_counts_pairs_within_the_window_in_both_directions_and_never_an_item_with_itself():
    seqs = [np.array([0, 1, 2, 0]), np.array([3, 4])]
    ppmi = cooccurrence_ppmi(seqs, n_items=6, window=1).toarray()
    assert (np.diag(ppmi) == 0).all()
    assert np.allclose(ppmi, ppmi.T)
    together = {(0, 1), (1, 2), (2, 0), (3, 4)}
    for a in range(6):
        for b in range(6):
            if (a, b) not in together and (b, a) not in together:
                assert ppmi[a, b] == 0, (a, b)
    assert ppmi[3, 4] > 0 and ppmi[5].sum() == 0  # item 5: no interactions
    wider = cooccurrence_ppmi(seqs, n_items=6, window=2).toarray()
    assert (wider > 0).sum() >= (ppmi > 0).sum()


def test_items_consumed_together_get_close_vectors_and_cold_items_none():
    rng = np.random.default_rng(0)
    groups = [np.arange(0, 20), np.arange(20, 40)]  # users consume within one group
    seqs = [rng.choice(groups[u % 2], size=8) for u in range(400)]
    cf = collaborative_vectors(cooccurrence_ppmi(seqs, n_items=41, window=3), dim=4, seed=0)
    assert cf.shape == (41, 4) and np.allclose(cf[40], 0)  # item 40 never appears
    assert np.allclose(np.linalg.norm(cf[:40], axis=1), 1, atol=1e-5)
    sim = cf[:40] @ cf[:40].T
    within = np.mean([sim[i, j] for g in groups for i in g for j in g if i != j])
    across = np.mean([sim[i, j] for i in groups[0] for j in groups[1]])
    assert within > across + 0.5, (within, across)


def test_fuse_makes_both_parts_unit_length_and_weight_sets_their_balance():
    text = np.array([[3.0, 4.0], [0.0, 2.0]], dtype=np.float32)
    cf = np.array([[1.0, 0.0], [0.0, 0.0]], dtype=np.float32)
    fused = fuse(text, cf, weight=0.5)
    assert fused.shape == (2, 4)
    assert np.allclose(fused[0], [0.6, 0.8, 0.5, 0.0]) and np.allclose(fused[1], [0.0, 1.0, 0.0, 0.0])


def _write_embeddings(tmp_path, ids: list[str], dim: int = 8) -> list[str]:
    rng = np.random.default_rng(1)
    files = []
    for part, chunk in enumerate((ids[: len(ids) // 2], ids[len(ids) // 2 :])):
        f = str(tmp_path / "embed" / f"part-{part:05d}.parquet")
        storage.write_parquet(pa.table({"item_id": chunk, "text_hash": chunk, "vector": vectors_array(rng.normal(size=(len(chunk), dim)))}), f)
        files.append(f)
    return files


@pytest.mark.parametrize("holdout_last", [2, 0])
def test_each_users_last_items_stay_out_of_the_fit(tmp_path, holdout_last):
    """Items that only ever come last in a sequence (where leave-one-out puts validation and test) get no collaborative vector."""
    ids = [f"i{k}" for k in range(12)]
    files = _write_embeddings(tmp_path, ids)
    lines = [f"u{u} i{u % 4} i{4 + u % 4} i{8 + u % 2} i{10 + u % 2}" for u in range(40)] + ["u99 i0 unknown-item i1"]
    (tmp_path / "seq.txt").write_text("\n".join(lines) + "\n")
    cfg = CollabConfig(dim=3, window=2, holdout_last=holdout_last)
    summary = _collab_job(files=files, interactions=str(tmp_path / "seq.txt"), out_dir=str(tmp_path / "collab"), config=cfg.model_dump(), seed=0)
    fused = storage.read_parquet(str(tmp_path / "collab"))
    assert fused["item_id"].to_pylist() == ids and fused.schema.field("vector").type.list_size == 8 + 3
    cf = np.asarray(fused["vector"].combine_chunks().flatten().to_numpy()).reshape(12, -1)[:, 8:]
    tail = [ids.index(f"i{k}") for k in (8, 9, 10, 11)]
    if holdout_last == 2:
        assert np.allclose(cf[tail], 0) and summary["cold_items"] == 4
    else:
        assert not np.allclose(cf[tail], 0) and summary["cold_items"] == 0
    assert summary["unknown_items"] == 1 and summary["unknown_interactions"] == 1 and summary["users"] == 41
    assert summary["items"] == 12 and summary["dim"] == 11 and summary["text_dim"] == 8


def test_evaluate_refuses_ids_fitted_on_its_own_test_items(tmp_path):
    from tasks.evaluate.stage import RunNotEvaluable, check_no_leak, file_sha256

    seq = tmp_path / "seq.txt"
    seq.write_text("u1 a b c\n")
    manifest = {"stages": {"collab": {"holdout_last": 0, "interactions_sha256": file_sha256(str(seq))}}}
    with pytest.raises(RunNotEvaluable, match="holdout_last=0"):
        check_no_leak(manifest, str(seq))
    check_no_leak({"stages": {"collab": {**manifest["stages"]["collab"], "holdout_last": 2}}}, str(seq))
    other = tmp_path / "other.txt"
    other.write_text("u1 a b\n")
    check_no_leak(manifest, str(other))  # another file: nothing of it was seen
    check_no_leak({"stages": {}}, str(seq))  # a text-only run

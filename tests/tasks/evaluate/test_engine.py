import numpy as np
import pytest

from tasks.evaluate import EvalConfig, EvalResult, IdSet, RetrieverConfig, combine, evaluate_ids, prepare

from .conftest import cluster_world

SMALL = RetrieverConfig(d_model=32, d_ff=64, num_heads=2, d_kv=16, num_layers=1, num_decoder_layers=1, dropout=0.0)


def test_ids_that_follow_the_clusters_beat_random_ids():
    items, seqs, cluster_codes, random_codes = cluster_world(n_users=300)
    cfg = EvalConfig(steps=120, batch_size=64, lr=3e-3, warmup_steps=10, eval_every=60, val_users=100, beam=10, model=SMALL)
    res = {}
    for name, codes in (("cluster", cluster_codes), ("random", random_codes)):
        ids = IdSet.from_codes(name=name, item_ids=items, codes=codes, codebook_size=8)
        res[name] = evaluate_ids(ids, seqs, config=cfg, seed=0)
    c, r = res["cluster"].metrics["test"]["recall@10"], res["random"].metrics["test"]["recall@10"]
    assert c.mean - r.mean > 3 * np.hypot(c.se, r.se), (c, r)
    out = res["cluster"]
    assert out.n_users == 300 and out.steps == 120 and out.stopped == "budget"
    assert [p.step for p in out.curve] == [60, 120] and out.best_step in (60, 120)
    assert EvalResult.from_dict(out.to_dict()) == out
    assert combine([out])["recall@10"] == c


def test_time_budget_and_config_checks():
    items, seqs, cluster_codes, _ = cluster_world(n_users=60)
    ids = IdSet.from_codes(name="c", item_ids=items, codes=cluster_codes)
    cfg = EvalConfig(steps=None, time_budget_s=0.01, batch_size=16, eval_every=1000, val_users=10, beam=5, model=SMALL)
    out = evaluate_ids(ids, prepare(ids, seqs), config=cfg, seed=3)
    assert out.stopped == "time_budget" and out.steps >= 1 and len(out.curve) == 1
    assert set(out.metrics["test"]) == {"recall@5", "recall@10", "ndcg@5", "ndcg@10"}
    with pytest.raises(ValueError, match="exactly one"):
        EvalConfig(steps=10, time_budget_s=5)
    with pytest.raises(ValueError, match="exactly one"):
        EvalConfig(steps=None)


def test_unknown_items_are_dropped_and_reported():
    items, seqs, cluster_codes, _ = cluster_world(n_users=20)
    gone = items.index(seqs.items[0][0])  # an item someone consumed gets no ID
    keep = [i for i in range(len(items)) if i != gone]
    ids = IdSet.from_codes(name="c", item_ids=[items[i] for i in keep], codes=cluster_codes[keep])
    data = prepare(ids, seqs)
    assert data.dropped.unknown_items == 1 and data.dropped.unknown_examples == [items[gone]]
    assert data.dropped.unknown_interactions == sum(s.count(items[gone]) for s in seqs.items) > 0

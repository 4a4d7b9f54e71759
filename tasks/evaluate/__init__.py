"""``semid evaluate``: how well a generative recommender learns from a set of semantic IDs.

The engine is plain Python (no Ray, no Prefect) so experiment scripts and
benchmarks can call it directly; the Ray Train stage runs the same function in
its worker. From a script::

    import numpy as np, pyarrow.parquet as pq, torch
    from tasks.evaluate import EvalConfig, IdSet, evaluate_ids, prepare, read_interactions, combine

    torch.set_num_threads(1)
    t = pq.read_table("../shared/data/amazon_beauty/reference_ids/residual_kmeans_minilm_ids.parquet")
    ids = IdSet.from_codes(name="rkmeans", item_ids=t["item_id"].to_pylist(),
                           codes=np.array(t["codes"].to_pylist()), codebook_size=256)
    seqs = read_interactions("../shared/data/amazon_beauty/user_sequence.txt")
    data = prepare(ids, seqs)              # unknown items dropped and reported in data.dropped
    cfg = EvalConfig(steps=1500)           # or EvalConfig(steps=None, time_budget_s=600)
    runs = [evaluate_ids(ids, data, config=cfg, seed=s, log=print) for s in (0, 1)]
    print(runs[0].metrics["test"]["recall@10"])   # Metric(mean=..., se=...) over users
    print(combine(runs)["recall@10"])             # mean over seeds, s.e. over users and seeds
    # another ID set's runs on the same users and seeds: paired_difference(runs, other)["recall@10"]

Modules: :mod:`.interactions` (reading, unknown items), :mod:`.split`
(leave-one-out), :mod:`.retriever` (T5 over ID tokens), :mod:`.beam`
(constrained beam search), :mod:`.metrics`, :mod:`.engine` (training loop).
"""

from tasks.evaluate.engine import EvalConfig, EvalResult, IdSet, PreparedData, combine, evaluate_ids, paired_difference, prepare
from tasks.evaluate.interactions import DroppedReport, InteractionsError, Sequences, read_interactions
from tasks.evaluate.metrics import Metric
from tasks.evaluate.retriever import RetrieverConfig

__all__ = [
    "DroppedReport",
    "EvalConfig",
    "EvalResult",
    "IdSet",
    "InteractionsError",
    "Metric",
    "PreparedData",
    "RetrieverConfig",
    "Sequences",
    "combine",
    "paired_difference",
    "evaluate_ids",
    "prepare",
    "read_interactions",
]

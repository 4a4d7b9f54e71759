"""ID quality on Amazon Beauty: the default pipeline's IDs vs residual k-means vs random, downstream and intrinsic.

    .venv/bin/python bench/quality.py                        # default run + evaluate, seeds 0,1, default steps
    .venv/bin/python bench/quality.py --steps 1500 --seeds 0,1,2
    .venv/bin/python bench/quality.py --run out/bench_quality/Amazon_Beauty/bench   # evaluate an existing run
    .venv/bin/python bench/quality.py --collab --baselines rkmeans   # the run fuses the interactions (semid run --interactions)
    .venv/bin/python bench/quality.py --set fit.epochs=10                           # pipeline overrides

1. ``semid run`` on ``Amazon_Beauty.item`` (title + brand + categories, the
   ingest default; the RecBole ``:type`` suffixes are stripped by ingest);
   with ``--collab`` also ``--interactions`` (the same file the evaluation uses:
   the collab stage leaves each user's last 2 items out, so the ID fit never
   sees a validation or test target).
2. ``semid evaluate`` of that run with baselines rkmeans,random at one budget
   and the same seeds (Ray Train; TIGER protocol on ``user_sequence.txt``).
3. Prints R@5/10 and N@5/10 ± s.e., train steps and wall time per ID set, the
   run/rkmeans ratio of Recall@10 (both measured in this evaluation), and a
   coherence table: share of each item's 10 nearest neighbours (cosine, run's
   embeddings) sharing its first 1/2/3 codes, and distinct prefixes per depth.
   The table ends with the ID-free next-item counts (tasks/evaluate/reference.py):
   a retriever below them is undertrained at this budget.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import TextIO

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
for _k, _v in {"HF_HUB_OFFLINE": "1", "RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "disabled", "DO_NOT_TRACK": "1",
               "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "TOKENIZERS_PARALLELISM": "false",
               "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "180"}.items():  # a busy 2-CPU host is slow to start it
    os.environ.setdefault(_k, _v)

DATA = ROOT.parent / "shared" / "data" / "amazon_beauty"


def coherence_rows(payload: dict, run_prefix: str) -> list[list[str]]:
    """Prefix coherence and distinct prefixes at depth 1/2/3 for every evaluated ID set (rebuilt, hash-checked)."""
    import numpy as np

    from rqvae_core.metrics import distinct_prefixes, prefix_coherence
    from tasks.evaluate import stage

    run = stage.load_run_ids(run_prefix)
    seed = int(run.manifest.get("params", {}).get("seed", 0))
    with tempfile.TemporaryDirectory(prefix="semid-bench-") as work:
        from tasks.ray_runtime import ray_session

        with ray_session():
            item_ids, vectors = stage.run_items_matrix(stage.run_embeddings(run_prefix, run.manifest, work_uri=work).embeddings, run)
            kinds = [v["kind"] for v in payload["id_sets"].values() if v["kind"] != "run"]
            baselines, _ = stage.build_baselines(run, run_prefix, kinds, seed=seed, work_uri=work)
    row = {it: i for i, it in enumerate(item_ids.tolist())}
    sets = {run.ids.name: run.ids, **{ids.name: ids for ids in baselines}}
    rows = [["ID set", "coherence@1", "coherence@2", "coherence@3", "prefixes@1", "prefixes@2", "prefixes@3"]]
    for name, ids in sets.items():
        if stage.ids_hash(ids) != payload["id_sets"][name]["sha256"]:
            raise RuntimeError(f"{name}: rebuilt IDs differ from the evaluated ones")
        vec = vectors[[row[i] for i in ids.item_ids.tolist()]]
        coh = prefix_coherence(vectors=vec, codes=ids.codes[:, :3], levels=3)
        distinct = distinct_prefixes(ids.codes[:, :3])
        rows.append([name, *[f"{c:.3f}" for c in coh], *[f"{d:,}" for d in distinct]])
    return rows


def _print_table(rows: list[list[str]], out: TextIO) -> None:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)), file=out)


def main() -> int:
    from flows.evaluate import DEFAULT_STEPS

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=str(ROOT / "out" / "bench_quality"), help="output root for the pipeline run (default out/bench_quality)")
    ap.add_argument("--run", help="evaluate this published run instead of running the pipeline")
    ap.add_argument("--catalog", default=str(DATA / "Amazon_Beauty.item"), help="catalog for the pipeline run (default Beauty)")
    ap.add_argument("--interactions", default=str(DATA / "user_sequence.txt"), help="user sequences (default Beauty's user_sequence.txt)")
    ap.add_argument("--collab", action="store_true", help="run the pipeline with --interactions INTERACTIONS (collaborative IDs, see the README); not with --run")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help="pipeline config override (repeatable)")
    ap.add_argument("--steps", type=int, default=DEFAULT_STEPS, help=f"training steps per ID set and seed (default {DEFAULT_STEPS})")
    ap.add_argument("--seeds", default="0,1", help="training seeds (default 0,1)")
    ap.add_argument("--baselines", default="rkmeans,random", help="baseline ID sets, comma-separated: rkmeans, rkmeans_fused (with --collab or a collab --run), random; the ratios are to the rkmeans ones (default rkmeans,random)")
    ap.add_argument("--num-workers", type=int, help="Ray Train workers; the (ID set, seed) jobs are spread over them (default: one per job, up to the CPUs)")
    ap.add_argument("--in-process", action="store_true", help="train without Ray Train (same engine)")
    args = ap.parse_args()
    if args.run and args.collab:
        ap.error("--collab builds a run; an existing --run already has (or lacks) its interactions")
    from _terminal import figures_only

    with figures_only("quality") as out:
        return measure(args, out)


def measure(args: argparse.Namespace, out: TextIO) -> int:
    import torch

    torch.set_num_threads(1)
    from flows.evaluate import EvaluateParams, evaluate
    from flows.retokenize import retokenize
    from tasks.config import load_config
    from tasks.evaluate.report import below_reference_lines, kmeans_ratios, metric_cells, paired_lines, reference_cells

    t0 = time.perf_counter()
    prefix = args.run
    if prefix is None:
        run_id = time.strftime("bench%Y%m%dT%H%M%S", time.gmtime())
        name = Path(args.catalog).name.split(".")[0]
        retokenize(catalog=args.catalog, out=args.out, name=name, run_id=run_id, config=load_config(None, args.overrides),
                   interactions=args.interactions if args.collab else None)
        prefix = str(Path(args.out) / name / run_id)
    pipeline_s = time.perf_counter() - t0
    seeds = [int(s) for s in args.seeds.split(",")]
    payload = evaluate(EvaluateParams(run=prefix, interactions=args.interactions, baselines=args.baselines.split(","),
                                      steps=args.steps, seeds=seeds, num_workers=args.num_workers, in_process=args.in_process))
    print(f"\nrun {prefix} (pipeline {pipeline_s:.0f} s); evaluation {payload['eval_id']} ({payload['wall_seconds']:.0f} s), "
          f"{payload['n_users']} users, seeds {seeds}, {args.steps} steps x batch {payload['config']['batch_size']}, torch {torch.get_num_threads()} thread(s)\n", file=out)
    rows = [["ID set", "R@5", "R@10", "N@5", "N@10", "steps", "train s", "eval s", "cpu s"]]
    for name, v in payload["id_sets"].items():
        rows.append([name, *metric_cells(v["test"]),
                     "/".join(map(str, v["steps"])), f"{v['train_seconds']:.0f}", f"{v['eval_seconds']:.0f}", f"{v['cpu_seconds']:.0f}"])
    # the ID-free next-item counts: how far the retriever is from what counts alone know
    rows.append([*reference_cells(payload), "-", "-", f"{payload['reference']['seconds']:.0f}", "-"])
    _print_table(rows, out)
    sets = payload["id_sets"]
    for name, base_name, ratio in kmeans_ratios(payload):
        a, b = sets[name]["test"]["recall@10"], sets[base_name]["test"]["recall@10"]
        se = ratio * math.hypot(a["se"] / a["mean"], b["se"] / b["mean"]) if a["mean"] and b["mean"] else float("nan")
        print(f"Recall@10 {name} / {base_name} (same evaluation): {ratio:.3f} ± {se:.3f}", file=out)
    for line in paired_lines(payload) + below_reference_lines(payload):
        print(line, file=out)
    print(file=out)
    _print_table(coherence_rows(payload, prefix), out)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""A nightly stable run on Beauty with 1 % of the items changed, against the full run measured in the same run.

    .venv/bin/python bench/nightly.py                       # Beauty, default config
    .venv/bin/python bench/nightly.py --set fit.epochs=10 --changed 0.01

Full run: the whole flow on a fresh output root (cold embedding cache). Nightly:
the same catalog with ``--changed`` of the items' titles edited, run with
``prior_run="latest"`` (frozen model, stable IDs, embedding cache). Both are
separate flow runs that each start their own local Ray; the Prefect ephemeral
API is started once before timing. Printed: wall time of each and the ratio,
the share of items embedded by the nightly run, per-stage timings, and a check
that every unchanged item kept its ID. Target (issue 10): ratio <= 0.25 and only
the changed items embedded.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import random
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
for _k, _v in {"HF_HUB_OFFLINE": "1", "RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "disabled", "DO_NOT_TRACK": "1",
               "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "TOKENIZERS_PARALLELISM": "false",
               "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "180"}.items():
    os.environ.setdefault(_k, _v)

BEAUTY = ROOT.parent / "shared" / "data" / "amazon_beauty" / "Amazon_Beauty.item"


def changed_catalog(src: Path, dst: Path, share: float, seed: int) -> int:
    """Copy the tab-separated .item catalog with ``share`` of the rows' titles edited; returns how many."""
    lines = src.read_text(encoding="utf-8").splitlines(keepends=True)
    header, rows = lines[0], lines[1:]
    columns = header.rstrip("\n").split("\t")
    if "title:token" not in columns:
        sys.exit(f"{src}: the nightly bench edits titles of a tab-separated .item catalog (a 'title:token' column, "
                 f"as in Amazon_Beauty.item); found columns {columns[:6]}")
    title = columns.index("title:token")
    picked = set(random.Random(seed).sample(range(len(rows)), round(share * len(rows))))
    out = [header]
    for i, line in enumerate(rows):
        if i in picked:
            fields = line.rstrip("\n").split("\t")
            fields[title] = f"{fields[title]} (new formula, {i})"
            line = "\t".join(fields) + "\n"
        out.append(line)
    dst.write_text("".join(out), encoding="utf-8")
    return len(picked)


def timed_run(**kwargs) -> tuple[dict, float]:
    from flows.retokenize import retokenize

    t0 = time.perf_counter()
    result = retokenize(**kwargs)
    return result, time.perf_counter() - t0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--catalog", default=str(BEAUTY), help="tab-separated .item catalog with a title:token column (default: Beauty)")
    p.add_argument("--changed", type=float, default=0.01, help="share of items whose title changes (default 0.01)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help="config override for both runs (repeatable)")
    p.add_argument("--seed", type=int, default=0, help="seed that picks the changed items (default 0)")
    args = p.parse_args()

    import pyarrow.parquet as pq
    from prefect import flow

    from tasks.config import load_config

    config = load_config(None, args.overrides)

    @flow
    def warm_up() -> None:  # start Prefect's ephemeral API outside the timed runs
        return None

    from _terminal import figures_only

    with figures_only("nightly") as terminal:
        say = functools.partial(print, file=terminal)
        warm_up()
        with tempfile.TemporaryDirectory(prefix="semid-bench-nightly-") as d:
            out = os.path.join(d, "out")
            nightly_catalog = Path(d) / "beauty-nightly.item"
            n_changed = changed_catalog(Path(args.catalog), nightly_catalog, args.changed, args.seed)

            full, full_s = timed_run(catalog=args.catalog, out=out, name="beauty", run_id="full", config=config)
            nightly, nightly_s = timed_run(catalog=str(nightly_catalog), out=out, name="beauty", run_id="nightly", config=config, prior_run="latest")

            m_full = json.loads(Path(full["prefix"], "manifest.json").read_text())
            m_night = json.loads(Path(nightly["prefix"], "manifest.json").read_text())
            embed = m_night["stages"]["embed"]
            n_items = embed["items"]
            changes = pq.read_table(Path(nightly["prefix"], "changes")).to_pydict()
            status = {s: changes["status"].count(s) for s in sorted(set(changes["status"]))}
            old = dict(zip(*pq.read_table(Path(full["prefix"], "semantic_ids")).select(["item_id", "sid"]).to_pydict().values()))
            new = dict(zip(*pq.read_table(Path(nightly["prefix"], "semantic_ids")).select(["item_id", "sid"]).to_pydict().values()))
            kept = [i for i, s in zip(changes["item_id"], changes["status"]) if s == "kept"]
            kept_ok = sum(new[i] == old[i] for i in kept)

        say(f"catalog {args.catalog}: {n_items} items, {n_changed} titles changed ({args.changed:.1%}); overrides {args.overrides or 'none'}")
        say(f"full run     {full_s:7.1f} s   stages {m_full['timings']}")
        say(f"nightly run  {nightly_s:7.1f} s   stages {m_night['timings']}")
        say(f"ratio nightly / full wall time: {nightly_s / full_s:.3f}  (target <= 0.25)")
        say(f"embedded by the nightly run: {embed['embedded']} of {n_items} items = {embed['embedded'] / n_items:.2%} "
            f"(cache hits {embed['cache_hits']}; changed items {n_changed})")
        say(f"changes {status}; unchanged items keeping their ID: {kept_ok}/{len(kept)}; drift flagged: {m_night['drift']['flagged']} "
            f"(recon ratio {m_night['drift']['recon_ratio']:.3f})")


if __name__ == "__main__":
    main()

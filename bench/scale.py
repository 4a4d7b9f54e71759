"""The whole flow on synthetic catalogs that bring their own vectors (``--embedding-column``), at growing sizes.

    .venv/bin/python bench/scale.py                          # 100k and 1M items, 384-d
    .venv/bin/python bench/scale.py --sizes 10000000 --dim 64  # the 10M run (64-d to fit the disk)

Each size runs in its own subprocess (so "driver peak RSS" is that process's own
peak, from /proc/self/status VmHWM) through ``retokenize`` (Prefect ephemeral API, local Ray).
Catalog: Parquet with item_id, title and a fixed-size-list vector column drawn
around 1,000 cluster centres (clustered, as real embeddings are). Reported per
size: wall time per stage (the manifest's timings), flow wall time, driver peak
RSS, process-tree peak RSS (Ray workers included, sampled from /proc), the ingest child
process's peak RSS (sampled; 0 when the catalog is small enough to be parsed in the driver); then the
ratios the scale-out targets are stated in (driver RSS and wall time, largest
size over the one before it). Driver peak RSS is the flow process's VmHWM.

The fit settings are reduced (see --set defaults) so the benchmark measures the
data path, not model quality; every item is still embedded, assigned and exported.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
for _k, _v in {"HF_HUB_OFFLINE": "1", "RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "disabled", "DO_NOT_TRACK": "1",
               "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1"}.items():
    os.environ.setdefault(_k, _v)

DEFAULT_SETS = ["fit.epochs=3", "fit.max_items=50000", "fit.early_stop_patience=0"]


def write_catalog(path: Path, *, n: int, dim: int, seed: int = 0, chunk: int = 500_000) -> None:
    """Written in chunks, so making a 10M catalog needs little memory."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(1000, dim)).astype(np.float32)
    schema = pa.schema([("item_id", pa.string()), ("title", pa.string()), ("vec", pa.list_(pa.float32(), dim))])
    with pq.ParquetWriter(path, schema, compression="zstd") as writer:
        for start in range(0, n, chunk):
            m = min(chunk, n - start)
            which = rng.integers(1000, size=m)
            x = centers[which] + 0.3 * rng.normal(size=(m, dim)).astype(np.float32)
            x /= np.linalg.norm(x, axis=1, keepdims=True)
            ids = [f"S{start + i:09d}" for i in range(m)]
            titles = [f"synthetic item {start + i} of cluster {c}" for i, c in zip(range(m), which.tolist())]
            vec = pa.FixedSizeListArray.from_arrays(pa.array(x.ravel(), pa.float32()), dim)
            writer.write_table(pa.table({"item_id": ids, "title": titles, "vec": vec}, schema=schema))


def _own_peak_rss() -> int:
    """This process's peak RSS (VmHWM). Not getrusage's ru_maxrss: Linux carries that across exec, so it would
    report the parent's size at fork time (the catalog writer's, up to ~2 GB) instead of the flow's."""
    line = next(x for x in Path("/proc/self/status").read_text().splitlines() if x.startswith("VmHWM:"))
    return int(line.split()[1]) * 1024


def run_one(catalog: str, out: str, sets: list[str]) -> dict:
    """Runs in the child process: one flow, its timings and memory."""
    from pipeline import TreeRSS
    from prefect.testing.utilities import prefect_test_harness

    from flows.retokenize import retokenize
    from tasks.config import load_config

    config = load_config(None, [*sets, "ingest.embedding_column=\"vec\"", "ingest.text_columns=[\"title\"]"])
    with prefect_test_harness(server_startup_timeout=120):
        t0 = time.perf_counter()
        with TreeRSS() as mem:
            result = retokenize(catalog=catalog, out=out, name="scale", run_id="bench", config=config)
        wall = time.perf_counter() - t0
    manifest = json.loads(Path(result["prefix"], "manifest.json").read_text())
    return {
        "wall_s": wall,
        "timings": manifest["timings"],
        "counts": manifest["counts"],
        "driver_peak_rss": _own_peak_rss(),
        "tree_peak_rss": mem.peak,
        "ingest_child_peak_rss": mem.peak_of("spawn_main"),  # ingest's child process (large catalogs)
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", default="100000,1000000", help="comma-separated catalog sizes (default 100000,1000000)")
    p.add_argument("--dim", type=int, default=384, help="vector dimension (default 384; use 64 for the 10M run)")
    p.add_argument("--set", dest="overrides", action="append", default=None, metavar="KEY=VALUE",
                   help=f"config override, as `semid run --set` (default: {' '.join(DEFAULT_SETS)})")
    p.add_argument("--child", nargs=3, metavar=("CATALOG", "OUT", "RESULT"), help=argparse.SUPPRESS)
    args = p.parse_args()
    sets = DEFAULT_SETS if args.overrides is None else args.overrides
    if args.child:
        from _terminal import figures_only

        catalog, out, result = args.child
        with figures_only("scale"):
            Path(result).write_text(json.dumps(run_one(catalog, out, sets)))
        return
    rows = []
    for n in [int(s) for s in args.sizes.split(",")]:
        with tempfile.TemporaryDirectory(prefix="semid-scale-", dir=os.environ.get("SCALE_TMP")) as tmp:
            catalog = Path(tmp, "catalog.parquet")
            t0 = time.perf_counter()
            write_catalog(catalog, n=n, dim=args.dim)
            print(f"{n:>10,} items: catalog written in {time.perf_counter() - t0:.0f} s ({catalog.stat().st_size / 2**20:.0f} MiB)", flush=True)
            result = Path(tmp, "result.json")
            cmd = [sys.executable, __file__, "--child", str(catalog), str(Path(tmp, "out")), str(result), *[f"--set={s}" for s in sets]]
            subprocess.run(cmd, check=True)
            r = json.loads(result.read_text())
        rows.append((n, r))
        t = r["timings"]
        print(f"{n:>10,} items, {args.dim}-d: flow {r['wall_s']:.0f} s | " + " ".join(f"{k} {v:.0f}" for k, v in t.items())
              + f" | driver peak RSS {r['driver_peak_rss'] / 2**20:.0f} MiB | tree peak RSS {r['tree_peak_rss'] / 2**20:.0f} MiB | ingest child peak RSS {r['ingest_child_peak_rss'] / 2**20:.0f} MiB | counts {r['counts']}", flush=True)
    for (n0, a), (n1, b) in zip(rows, rows[1:]):
        print(f"ratio {n1:,}/{n0:,}: driver peak RSS {b['driver_peak_rss'] / a['driver_peak_rss']:.2f}x, wall {b['wall_s'] / a['wall_s']:.2f}x")


if __name__ == "__main__":
    main()

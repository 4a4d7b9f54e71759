"""The whole flow on the Amazon Beauty catalog, against a plain one-process script in the same run.

    .venv/bin/python bench/pipeline.py                  # Beauty, default config
    .venv/bin/python bench/pipeline.py --set fit.epochs=10

Flow: ``semid run`` semantics (Prefect ephemeral API, local Ray, every stage
real). Baseline: the same work without orchestration, in one process:
SentenceTransformer.encode → ``rqvae_core.fit`` (same config and epochs) →
``resolve_collisions``, with torch on every CPU (as the flow's embed and fit tasks
of a small catalog; assign encodes with one thread per Ray task). Reported: wall time per stage, peak RSS of the whole
process tree (Ray workers included, sampled from /proc), quality.json headline.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
for _k, _v in {"HF_HUB_OFFLINE": "1", "RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "disabled", "DO_NOT_TRACK": "1",
               "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "TOKENIZERS_PARALLELISM": "false"}.items():
    os.environ.setdefault(_k, _v)

BEAUTY = ROOT.parent / "shared" / "data" / "amazon_beauty" / "Amazon_Beauty.item"


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


class TreeRSS:
    """Peak resident memory of this process and all its descendants (Ray's raylet/workers included)."""

    def __init__(self, interval: float = 0.5) -> None:
        self.peak = 0
        self.process_peaks: dict[int, tuple[int, str]] = {}  # pid -> (largest RSS seen, command line)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, args=(interval,), daemon=True)

    def _tree_rss(self) -> int:
        parents: dict[int, int] = {}
        rss: dict[int, int] = {}
        for d in os.listdir("/proc"):
            if not d.isdigit():
                continue
            try:
                text = Path(f"/proc/{d}/status").read_text()
            except OSError:
                continue
            fields = dict(line.split(":", 1) for line in text.splitlines() if ":" in line)
            parents[int(d)] = int(fields.get("PPid", "0").strip())
            rss[int(d)] = int(fields.get("VmRSS", "0 kB").split()[0]) * 1024
        root, total = os.getpid(), 0
        for pid in rss:
            p = pid
            while p and p != root:
                p = parents.get(p, 0)
            if p == root:
                total += rss[pid]
                peak, cmd = self.process_peaks.get(pid) or (0, _cmdline(pid))  # the command line is read once per process
                if rss[pid] > peak:
                    self.process_peaks[pid] = (rss[pid], cmd)
        return total

    def peak_of(self, marker: str) -> int:
        """The largest RSS seen of a process whose command line contains ``marker`` (0 if none)."""
        return max((peak for peak, cmd in self.process_peaks.values() if marker in cmd), default=0)

    def _loop(self, interval: float) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._tree_rss())
            time.sleep(interval)

    def __enter__(self) -> "TreeRSS":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def run_flow(catalog: str, out: str, overrides: list[str]) -> tuple[dict, float, int]:
    from flows.retokenize import retokenize
    from tasks.config import load_config

    config = load_config(None, overrides)
    t0 = time.perf_counter()
    with TreeRSS() as mem:
        result = retokenize(catalog=catalog, out=out, name="beauty", run_id="bench", config=config)
    return result, time.perf_counter() - t0, mem.peak


def run_baseline(items_uri: str, overrides: list[str]) -> tuple[dict, float, int]:
    import numpy as np
    import pyarrow.parquet as pq
    import torch
    from sentence_transformers import SentenceTransformer

    from rqvae_core import RQVAE, encode_array, fit
    from rqvae_core.ids import resolve_collisions
    from tasks.config import load_config
    from tasks.embed import batch_size_for, resolve_model_path

    config = load_config(None, overrides)
    torch.set_num_threads(os.cpu_count() or 1)
    t0 = time.perf_counter()
    timings = {}
    with TreeRSS() as mem:
        items = pq.read_table(items_uri)
        model = SentenceTransformer(resolve_model_path(config.embed.model), device="cpu")
        x = torch.from_numpy(model.encode(items["text"].to_pylist(), batch_size=batch_size_for(config.embed, "cpu"), normalize_embeddings=True, convert_to_numpy=True))
        timings["embed"] = time.perf_counter() - t0
        core = config.model.to_core(input_dim=x.shape[1], seed=config.seed)
        rq = RQVAE(config=core)
        bs = config.fit.batch_size

        def batches(epoch: int):
            perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(epoch))
            for i in range(0, len(x), bs):
                yield x[perm[i : i + bs]]

        t1 = time.perf_counter()
        fit(model=rq, train=config.fit.to_core(), epoch_batches=batches, steps_per_epoch=(len(x) + bs - 1) // bs, init_data=x)
        timings["fit"] = time.perf_counter() - t1
        t2 = time.perf_counter()
        enc = encode_array(rq, x)
        ids = resolve_collisions(item_ids=np.asarray(items["item_id"].to_pylist(), dtype=object), codes=enc.codes.numpy(), distances=enc.distance.numpy(), codebook_size=core.codebook_size)
        timings["assign"] = time.perf_counter() - t2
    return {"timings": timings, "unique_tuple_rate": ids.unique_tuple_rate}, time.perf_counter() - t0, mem.peak


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--catalog", default=str(BEAUTY), help="catalog to tokenize (default: Amazon Beauty from ../shared)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help="config override, as `semid run --set`")
    p.add_argument("--no-baseline", action="store_true", help="skip the one-process baseline")
    args = p.parse_args()
    if not Path(args.catalog).exists() and "://" not in args.catalog:
        sys.exit(f"catalog {args.catalog} not found (../shared beside the checkout?)")
    from _terminal import figures_only
    from prefect.testing.utilities import prefect_test_harness

    with figures_only("pipeline") as terminal, tempfile.TemporaryDirectory(prefix="semid-bench-") as tmp, prefect_test_harness(server_startup_timeout=120):
        say = functools.partial(print, file=terminal)
        result, flow_s, flow_peak = run_flow(args.catalog, tmp, args.overrides)
        prefix = result["prefix"]
        manifest = json.loads(Path(prefix, "manifest.json").read_text())
        quality = json.loads(Path(prefix, "quality.json").read_text())
        say(f"pipeline bench: {args.catalog}  overrides={args.overrides}")
        say(f"counts: {manifest['counts']}  quarantine: {manifest['quarantine_reasons']}")
        say(f"flow wall time {flow_s:.1f} s, peak RSS (process tree) {flow_peak / 2**20:.0f} MiB")
        say("stage timings (s): " + ", ".join(f"{k} {v:.1f}" for k, v in manifest["timings"].items()))
        fit_info = manifest["stages"]["fit"]
        say(f"fit: {fit_info['epochs_run']} epochs run, stopped early: {fit_info['stopped_early']}, saved epoch {(fit_info.get('final') or {}).get('epoch', -1) + 1}")
        say(f"quality: unique-tuple rate {quality['unique_tuple_rate']:.4f}, largest collision group {quality['largest_collision_group']}, "
            f"active codes per level {[lv['active_codes'] for lv in quality['levels']]}, recon cosine {quality['recon_cosine']:.4f}, "
            f"recon mse {quality['recon_mse']:.6f}, prefix coherence {[round(v, 3) for v in quality['prefix_coherence']]}")
        if not args.no_baseline:
            # the work area is removed after publishing; the published copy of the items is the same file
            items_uri = str(Path(prefix, "items", "part-00000.parquet"))
            base, base_s, base_peak = run_baseline(items_uri, args.overrides)
            say(f"baseline (one process, no Ray/Prefect): {base_s:.1f} s, peak RSS {base_peak / 2**20:.0f} MiB, "
                + ", ".join(f"{k} {v:.1f}" for k, v in base["timings"].items()) + f", unique-tuple rate {base['unique_tuple_rate']:.4f}")
            say(f"ratio flow/baseline wall time: {flow_s / base_s:.2f}x")


if __name__ == "__main__":
    main()

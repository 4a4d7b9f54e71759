"""Embed-stage throughput against plain ``SentenceTransformer.encode`` on the same texts, same run.

    .venv/bin/python bench/embed.py                 # 3000 Amazon Beauty titles
    .venv/bin/python bench/embed.py --n 10000 --synthetic --num-actors 2

The stage figure is end to end for ``tasks.embed.embed`` with Ray already
started (worker start-up, imports, model load, Parquet reads and writes;
cache off). Two baselines, ``torch.set_num_threads(--baseline-threads)``:
``encode`` in this process with the model already loaded and warm, and a plain
script in a fresh process (import, model load, ``encode``: start-up included,
as the stage's). Device: the GPU when Ray sees one (fp16 in the stage, fp32
baseline), else CPU.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import os
import random
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
for _k, _v in {"HF_HUB_OFFLINE": "1", "RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "disabled",
               "TOKENIZERS_PARALLELISM": "false"}.items():
    os.environ.setdefault(_k, _v)

import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402

DATA = ROOT.parent / "shared" / "data" / "amazon_beauty" / "Amazon_Beauty.item"

# The start-up-included baseline: what a plain one-file script costs, from process start to vectors.
PLAIN_SCRIPT = """
import json, sys, torch
torch.set_num_threads(int(sys.argv[2]))
from sentence_transformers import SentenceTransformer
texts = json.load(open(sys.argv[1]))
model = SentenceTransformer(sys.argv[4], device=sys.argv[5])
model.encode(texts, batch_size=int(sys.argv[3]), normalize_embeddings=True, show_progress_bar=False)
"""


def plain_script_seconds(texts: list[str], *, threads: int, batch_size: int, model_path: str, device: str, tmp: str) -> float:
    import subprocess

    path = Path(tmp) / "texts.json"
    path.write_text(json.dumps(texts))
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-c", PLAIN_SCRIPT, str(path), str(threads), str(batch_size), model_path, device], check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - t0


def amazon_titles(n: int) -> list[str]:
    csv.field_size_limit(1 << 24)
    seen: dict[str, None] = {}
    with open(DATA, newline="", encoding="utf-8") as f:
        reader = csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
        header = next(reader)
        col = header.index("title:token")
        for row in reader:
            title = row[col].strip() if len(row) > col else ""
            if title:
                seen.setdefault(title, None)
            if len(seen) >= n:
                break
    return list(seen)


def synthetic_texts(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    adj = ["matte", "glossy", "hydrating", "long lasting", "organic", "waterproof", "vegan", "travel size", "tinted"]
    noun = ["lipstick", "serum", "shampoo", "mascara", "sunscreen", "face mask", "nail polish", "foundation", "body lotion"]
    extra = ["for dry skin", "with vitamin C", "50ml", "pack of 3", "SPF 30", "for curly hair", "rose scent", "", ""]
    return [f"{rng.choice(adj)} {rng.choice(noun)} {rng.choice(extra)} #{i}".strip() for i in range(n)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=3000, help="number of distinct texts")
    ap.add_argument("--synthetic", action="store_true", help="synthetic texts instead of Amazon Beauty titles")
    ap.add_argument("--num-actors", type=int, default=None, help="embed.num_actors (default: the config's default, 1)")
    ap.add_argument("--batch-size", type=int, default=None, help="embed.batch_size for both sides (default: the stage's default for the device)")
    ap.add_argument("--rows-per-file", type=int, default=None, help="embed.rows_per_file (default: the config's default)")
    ap.add_argument("--num-cpus", type=int, default=None, help="CPUs for the local Ray (default: all)")
    ap.add_argument("--baseline-threads", type=int, default=os.cpu_count() or 1, help="torch threads of the plain baseline (default: all CPUs)")
    ap.add_argument("--json", default=str(ROOT / "bench" / "results" / "embed.json"))
    args = ap.parse_args()

    texts = synthetic_texts(args.n) if args.synthetic or not DATA.exists() else amazon_titles(args.n)
    source = "synthetic" if args.synthetic or not DATA.exists() else "amazon_beauty titles"
    hashes = [hashlib.sha256(t.encode()).hexdigest() for t in texts]

    import torch
    from sentence_transformers import SentenceTransformer

    from tasks.config import EmbedConfig
    from tasks.embed import batch_size_for, embed, resolve_model_path
    from tasks.ray_runtime import ray_session, resolve_device

    with tempfile.TemporaryDirectory(prefix="bench-embed-") as tmp, ray_session(num_cpus=args.num_cpus):
        device = resolve_device("auto")
        items = Path(tmp) / "items.parquet"
        pq.write_table(
            pa.table({"item_id": [f"i{i:08d}" for i in range(len(texts))], "text": texts, "text_hash": hashes}), items
        )
        config = EmbedConfig(batch_size=args.batch_size, device="auto", cache=False,
                             **({"num_actors": args.num_actors} if args.num_actors else {}),
                             **({"rows_per_file": args.rows_per_file} if args.rows_per_file else {}))
        batch_size = batch_size_for(config, device)
        t0 = time.perf_counter()
        manifest = embed(items_uri=str(items), work_uri=str(Path(tmp) / "work"), cache_uri=None, config=config)
        stage_s = time.perf_counter() - t0
        out = pq.read_table(Path(tmp) / "work" / "embed")
        stage_vec = dict(zip(out["text_hash"].to_pylist(), np.stack(out["vector"].to_numpy(zero_copy_only=False))))

        torch.set_num_threads(args.baseline_threads)
        model = SentenceTransformer(resolve_model_path("all-MiniLM-L6-v2"), device=device)
        model.encode(texts[:8], show_progress_bar=False)  # warm-up
        t0 = time.perf_counter()
        plain = model.encode(texts, batch_size=batch_size, normalize_embeddings=True, show_progress_bar=False)
        plain_s = time.perf_counter() - t0
        script_s = plain_script_seconds(texts, threads=args.baseline_threads, batch_size=batch_size,
                                        model_path=resolve_model_path("all-MiniLM-L6-v2"), device=device, tmp=tmp)

    got = np.stack([stage_vec[h] for h in hashes])
    max_abs = float(np.abs(got - plain).max())
    min_cos = float((got * plain).sum(axis=1).min())
    n = len(texts)
    result = {
        "texts": n,
        "source": source,
        "device": device,
        "fp16": manifest.fp16,
        "num_actors": manifest.num_actors,
        "batch_size": batch_size,
        "stage_seconds": round(stage_s, 2),
        "stage_items_per_s": round(n / stage_s, 1),
        "stage_embed_seconds": manifest.embed_seconds,
        "runner": manifest.runner,
        "plain_seconds": round(plain_s, 2),
        "plain_items_per_s": round(n / plain_s, 1),
        "plain_threads": args.baseline_threads,
        "ratio_stage_over_plain": round((n / stage_s) / (n / plain_s), 3),
        "script_seconds": round(script_s, 2),
        "ratio_stage_over_script": round(script_s / stage_s, 3),
        "max_abs_diff": max_abs,
        "min_cosine": min_cos,
    }
    print(f"embed bench: {n} texts ({source}), device={device}, fp16={result['fp16']}, "
          f"runner={manifest.runner}, actors={result['num_actors']}, batch={batch_size}")
    print(f"  stage (tasks.embed.embed, end to end, Ray up): {result['stage_items_per_s']:>8.1f} items/s "
          f"({stage_s:.2f} s; model load + encode + write {manifest.embed_seconds:.2f} s)")
    print(f"  plain SentenceTransformer.encode ({args.baseline_threads} thread(s)): "
          f"{result['plain_items_per_s']:>8.1f} items/s ({plain_s:.2f} s)")
    print(f"  plain script, fresh process (import + load + encode): {n / script_s:>8.1f} items/s ({script_s:.2f} s)")
    print(f"  ratio stage/plain (model preloaded and warm): {result['ratio_stage_over_plain']:.3f}")
    print(f"  ratio stage/plain script (start-up included on both sides): {result['ratio_stage_over_script']:.3f}")
    tol = 1e-5 if device == "cpu" else 5e-3
    print(f"  vectors agree: max |diff| {max_abs:.2e}, min cosine {min_cos:.6f} -> "
          f"{'OK' if max_abs <= tol else 'MISMATCH'} (tol {tol:g})")
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    if max_abs > tol:
        sys.exit(1)


if __name__ == "__main__":
    main()

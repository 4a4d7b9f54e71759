"""Fit-loop benchmark: our toolbox defaults vs a research-repo style baseline, same data, same run.

    .venv/bin/python bench/fit.py                       # 100k x 384 clustered vectors, CPU here
    .venv/bin/python bench/fit.py --n 20000 --epochs 2  # quicker

Both runs use ``rqvae_core.fit`` on identical batches. The baseline is what
public RQ-VAE repos do by default: straight-through estimator, random codebook
init, no dead-code restart. Reported per run: steps/s, final recon MSE on the
full corpus, recon cosine, active codes per level, unique-tuple rate. The device
is CUDA when torch sees one, else CPU (1 thread, as the pipeline's workers).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from rqvae_core import RQVAE, RQVAEConfig, TrainConfig, encode_array, fit  # noqa: E402
from rqvae_core.metrics import corpus_metrics  # noqa: E402


def clustered(n: int, dim: int, clusters: int, seed: int) -> torch.Tensor:
    """Unit vectors around ``clusters`` centres with a Zipf-like cluster size skew (like item embeddings)."""
    g = torch.Generator().manual_seed(seed)
    centers = torch.nn.functional.normalize(torch.randn(clusters, dim, generator=g), dim=-1)
    weights = 1.0 / torch.arange(1, clusters + 1).float() ** 0.8
    idx = torch.multinomial(weights, n, replacement=True, generator=g)
    x = centers[idx] + 0.04 * torch.randn(n, dim, generator=g)
    return torch.nn.functional.normalize(x, dim=-1)


def run(name: str, config: RQVAEConfig, x: torch.Tensor, *, epochs: int, batch_size: int, device: str) -> dict:
    model = RQVAE(config=config).to(device)
    steps_per_epoch = (len(x) + batch_size - 1) // batch_size

    def batches(epoch: int):
        perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(epoch))
        for i in range(0, len(x), batch_size):
            yield x[perm[i : i + batch_size]]

    t0 = time.perf_counter()
    result = fit(model=model, train=TrainConfig(epochs=epochs, batch_size=batch_size, early_stop_patience=0), epoch_batches=batches, steps_per_epoch=steps_per_epoch, device=device, init_data=x.to(device))
    if device == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    enc = encode_array(model, x, device=device)
    m = corpus_metrics(inputs=x.numpy(), recon=enc.recon.numpy(), codes=enc.codes.numpy(), codebook_size=config.codebook_size, n_queries=1000)
    return {
        "name": name,
        "steps": result.steps,
        "seconds": seconds,
        "steps_per_s": result.steps / seconds,
        "recon_mse": m.recon_mse,
        "recon_cosine": m.recon_cosine,
        "active": [lv.active_codes for lv in m.levels],
        "unique_tuple_rate": m.unique_tuple_rate,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=100_000, help="number of vectors (default 100000)")
    p.add_argument("--dim", type=int, default=384, help="vector size (default 384, MiniLM)")
    p.add_argument("--clusters", type=int, default=5000, help="number of clusters in the synthetic data")
    p.add_argument("--epochs", type=int, default=3, help="epochs per run (default 3)")
    p.add_argument("--batch-size", type=int, default=256, help="batch size (default 256)")
    args = p.parse_args()
    torch.set_num_threads(1)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    x = clustered(args.n, args.dim, args.clusters, seed=0)
    ours = RQVAEConfig(input_dim=args.dim)
    baseline = RQVAEConfig(input_dim=args.dim, quantizer="ste", kmeans_init=False, dead_code_window=0)
    print(f"fit bench: {args.n} x {args.dim} clustered vectors ({args.clusters} clusters), {args.epochs} epochs, batch {args.batch_size}, device {device}, torch threads 1")
    rows = [run("baseline (STE, random init, no restart)", baseline, x, epochs=args.epochs, batch_size=args.batch_size, device=device),
            run("ours (skip encoder, residual k-means init)", ours, x, epochs=args.epochs, batch_size=args.batch_size, device=device)]
    print(f"{'run':<52} {'steps/s':>8} {'recon mse':>10} {'cosine':>7} {'active codes/level':>20} {'uniq tuples':>11}")
    for r in rows:
        print(f"{r['name']:<52} {r['steps_per_s']:8.1f} {r['recon_mse']:10.6f} {r['recon_cosine']:7.4f} {str(r['active']):>20} {r['unique_tuple_rate']:11.4f}")
    b, o = rows
    print(f"ratios ours/baseline: speed {o['steps_per_s'] / b['steps_per_s']:.2f}x, "
          f"min active codes {min(o['active']) / max(1, min(b['active'])):.1f}x, unique-tuple rate {o['unique_tuple_rate'] / max(1e-9, b['unique_tuple_rate']):.2f}x, "
          f"recon mse {o['recon_mse'] / b['recon_mse']:.2f}x")


if __name__ == "__main__":
    main()

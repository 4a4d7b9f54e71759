"""tasks.report: a self-contained quality.html from a quality dict."""

from __future__ import annotations

import base64
import copy
import json
import re

import numpy as np
import pytest

from rqvae_core.metrics import compare_with_residual_kmeans, corpus_metrics
from tasks.report import render_quality_html

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
IMG_RE = re.compile(r'<img [^>]*src="data:image/png;base64,([A-Za-z0-9+/=]+)"')


@pytest.fixture(scope="module")
def quality() -> dict:
    rng = np.random.default_rng(0)
    n, d, levels, k = 2000, 16, 3, 32
    x = rng.normal(size=(n, d)).astype(np.float32)
    recon = x + 0.1 * rng.normal(size=(n, d)).astype(np.float32)
    # skewed code usage so there are collisions and unused codes
    codes = np.minimum(rng.geometric(0.15, size=(n, levels)) - 1, k - 1).astype(np.int64)
    q = corpus_metrics(inputs=x, recon=recon, codes=codes, codebook_size=k, n_queries=200).to_dict()
    per_item = ((x - recon) ** 2).mean(axis=1)
    counts, edges = np.histogram(per_item, bins=30)
    q["recon_error_histogram"] = {"edges": edges.tolist(), "counts": counts.tolist()}
    q["final_ids"] = {"unique": True, "n_moved": 17, "id_length": levels + 1}
    q["fit"] = {
        "epochs_run": 3,
        "history": [
            {"epoch": e, "recon": 1.0 / (e + 1), "eval_recon": 0.9 / (e + 1), "loss": 1.5 / (e + 1),
             "code_usage": [0.5 + 0.1 * e] * levels, **({"kept": True} if e == 2 else {})}
            for e in range(3)
        ],
        "kept_epoch": 2,
    }
    q["run"] = {"catalog": "books", "run_id": "2024-05-01T00"}
    q["baseline"] = compare_with_residual_kmeans(
        vectors=x, codes=codes, recon_sq_err=((x - recon) ** 2).sum(axis=1), codebook_size=k, n_queries=200
    )
    return json.loads(json.dumps(q))  # exactly what quality.json round-trips to


def _images(page: str) -> list[bytes]:
    return [base64.b64decode(m) for m in IMG_RE.findall(page)]


def test_full_report_is_self_contained_html(quality: dict) -> None:
    page = render_quality_html(quality)
    assert page.startswith("<!DOCTYPE html>")
    assert page.rstrip().endswith("</html>")
    assert "<title>" in page and "books" in page and "2024-05-01T00" in page
    # headline numbers
    assert f"{quality['n_items']:,}" in page
    assert f"{quality['recon_mse']:.6g}" in page
    assert f"{quality['recon_cosine']:.6g}" in page
    assert f"{quality['unique_tuple_rate']:.6g}" in page
    assert str(quality["largest_collision_group"]) in page
    for pc in quality["prefix_coherence"]:
        assert f"{pc:.6g}" in page
    for lv in quality["levels"]:
        assert f"{lv['perplexity']:.6g}" in page
    assert "final ids unique" in page
    assert "<td>epoch saved (best eval recon)</td><td>3</td>" in page  # 1-based, as the progress lines
    # one inline PNG per plot: usage, collisions, recon error, training
    images = _images(page)
    assert len(images) == 4
    assert all(img.startswith(PNG_SIGNATURE) for img in images)
    # nothing external
    assert "http://" not in page and "https://" not in page and "<script" not in page


@pytest.mark.parametrize(
    "missing, n_plots",
    [(("recon_error_histogram",), 3), (("fit",), 3), (("final_ids", "run"), 4)],
)
def test_missing_extras_do_not_crash(quality: dict, missing: tuple[str, ...], n_plots: int) -> None:
    q = copy.deepcopy(quality)
    for key in missing:
        del q[key]
    page = render_quality_html(q)
    assert page.rstrip().endswith("</html>")
    assert len(_images(page)) == n_plots


def test_bare_metrics_only(quality: dict) -> None:
    keys = ["n_items", "recon_mse", "recon_mae", "recon_cosine", "levels", "unique_tuple_rate",
            "largest_collision_group", "collision_group_sizes", "prefix_coherence"]
    q = {k: quality[k] for k in keys}
    q["fit"] = {"epochs_run": 0, "history": []}  # fit that stopped before one epoch
    q["recon_error_histogram"] = {"edges": [], "counts": []}
    page = render_quality_html(q)
    assert f"{quality['recon_mae']:.6g}" in page
    assert len(_images(page)) == 2
    assert render_quality_html({}).rstrip().endswith("</html>")


def test_text_is_escaped() -> None:
    # no metrics needed (no plots: fast); the run names are the only free text
    q = {"n_items": 5, "run": {"catalog": "<script>alert(1)</script>", "run_id": 'r"&1'}}
    page = render_quality_html(q)
    assert "<script>" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "r&quot;&amp;1" in page


def test_report_sets_the_run_beside_residual_kmeans_and_warns(quality: dict) -> None:
    page = render_quality_html(quality)
    assert "Against residual k-means" in page
    for depth in (1, 2, 3):
        assert f"prefix coherence, depth {depth}" in page and f"distinct prefixes, depth {depth}" in page
    # geometric codes drawn independently of x cannot follow its neighbourhoods
    assert quality["baseline"]["warning"] and "Warning:" in page

"""Render one run's ``quality.json`` dict as a self-contained ``quality.html``.

No external assets: plots are inline base64 PNGs drawn with matplotlib's Agg
backend, and every piece of text from the dict is HTML-escaped. The input is
``CorpusMetrics.to_dict()`` plus optional extras (``run``,
``recon_error_histogram``, ``final_ids``, ``fit``); a missing extra just drops
its rows or plot.
"""

from __future__ import annotations

import base64
import html
import io
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

__all__ = ["render_quality_html"]

_CSS = (
    "body{font-family:sans-serif;margin:2em;max-width:1100px}"
    "table{border-collapse:collapse;margin:1em 0}"
    "td,th{border:1px solid #ccc;padding:4px 10px;text-align:right}"
    "th{background:#f4f4f4}td:first-child,th:first-child{text-align:left}"
    "img{max-width:100%;display:block;margin:1em 0}"
)


def _e(x: Any) -> str:
    return html.escape(str(x), quote=True)


def _fmt(x: Any) -> str:
    if isinstance(x, bool) or x is None:
        return str(x)
    if isinstance(x, float):
        return f"{x:.6g}"
    if isinstance(x, int):
        return f"{x:,}"
    return str(x)


def _table(header: list[str], rows: list[list[Any]]) -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{_e(_fmt(c))}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _png(fig: Any, alt: str) -> str:
    """Encode a figure as an inline <img>, closing it whatever happens."""
    try:
        buf = io.BytesIO()
        fig.tight_layout()
        fig.savefig(buf, format="png", dpi=80)
    finally:
        plt.close(fig)
    data = base64.b64encode(buf.getvalue()).decode("ascii")
    return f'<img alt="{_e(alt)}" src="data:image/png;base64,{data}">'


def _plot_code_usage(levels: list[dict[str, Any]]) -> str:
    fig, axes = plt.subplots(1, len(levels), figsize=(4 * len(levels), 3), squeeze=False)
    for ax, lv in zip(axes[0], levels):
        counts = sorted((max(int(c), 0) for c in lv.get("counts", [])), reverse=True)
        if counts:  # one filled step artist, not K bar patches: K may be thousands
            ax.stairs(counts, fill=True)
        if any(counts):
            ax.set_yscale("log", nonpositive="clip")
            ax.set_ylim(bottom=0.8)
        ax.set_title(f"level {lv.get('level')}: {lv.get('active_codes')}/{len(counts)} active")
        ax.set_xlabel("code rank")
        ax.set_ylabel("items")
    return _png(fig, "code usage per level")


def _plot_collisions(sizes: dict[str, int]) -> str:
    pairs = sorted((int(s), int(n)) for s, n in sizes.items())
    fig, ax = plt.subplots(figsize=(6, 3.5))
    # bar around size s: even widths on a log x axis, never touching the bar of s + 1
    lefts = [max(s / 1.2, s - 0.45) for s, _ in pairs]
    rights = [min(s * 1.2, s + 0.45) for s, _ in pairs]
    ax.bar(lefts, [n for _, n in pairs], width=[r - lo for lo, r in zip(lefts, rights)], align="edge")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("collision group size (items per L-tuple)")
    ax.set_ylabel("groups")
    ax.set_title("collision groups before disambiguation")
    return _png(fig, "collision group sizes")


def _plot_recon_hist(hist: dict[str, Any]) -> str:
    edges, counts = list(hist["edges"]), list(hist["counts"])
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.stairs(counts, edges, fill=True)
    ax.set_xlabel("per-item reconstruction MSE")
    ax.set_ylabel("items")
    ax.set_title("reconstruction error")
    return _png(fig, "per-item reconstruction error histogram")


def _plot_training(history: list[dict[str, Any]]) -> str:
    epochs = [h.get("epoch", i) for i, h in enumerate(history)]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.5))
    for key, label in (("loss", "loss"), ("recon", "recon (training mean)"), ("eval_recon", "recon (eval, epoch end)")):
        if all(h.get(key) is not None for h in history):
            ax1.plot(epochs, [h[key] for h in history], label=label)
    kept = [h.get("epoch", i) for i, h in enumerate(history) if h.get("kept")]
    if kept:
        ax1.axvline(kept[0], color="grey", linestyle=":", label="saved epoch")
    for ax in (ax1, ax2):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("epoch")
    ax1.set_title("training loss")
    if ax1.lines:
        ax1.legend()
    usage = [h.get("code_usage") or [] for h in history]
    for lvl in range(max((len(u) for u in usage), default=0)):
        ax2.plot(epochs, [u[lvl] if lvl < len(u) else float("nan") for u in usage], label=f"level {lvl}")
    ax2.set_title("code usage")
    if ax2.lines:
        ax2.legend()
    return _png(fig, "training curves")


def _baseline_section(baseline: dict[str, Any] | None) -> list[str]:
    """The run's IDs beside residual k-means on the same embeddings, with the warning when they trail it."""
    if not baseline:
        return []
    run, rk = baseline["run"], baseline["residual_kmeans"]
    rows: list[list[Any]] = []
    for depth, (a, b) in enumerate(zip(run["prefix_coherence"], rk["prefix_coherence"]), start=1):
        rows.append([f"prefix coherence, depth {depth}", a, b])
    for depth, (a, b) in enumerate(zip(run["distinct_prefixes"], rk["distinct_prefixes"]), start=1):
        rows.append([f"distinct prefixes, depth {depth}", a, b])
    rows.append(["recon MSE", run["recon_mse"], rk["recon_mse"]])
    out = [f"<h2>Against residual k-means (same {baseline['n_items']:,} items, same embeddings)</h2>"]
    if baseline.get("warning"):
        out.append(f'<p style="color:#a00"><b>Warning:</b> {_e(baseline["warning"])}</p>')
    out.append(_table(["metric", "this run", "residual k-means"], rows))
    return out


def render_quality_html(quality: dict[str, Any]) -> str:
    """A self-contained HTML page for one run's quality report."""
    run = quality.get("run") or {}
    title = "Quality report"
    names = [str(run[k]) for k in ("catalog", "run_id") if run.get(k)]
    if names:
        title += " — " + " / ".join(names)

    levels = quality.get("levels") or []
    rows: list[list[Any]] = [
        ["items", quality.get("n_items")],
        ["recon MSE", quality.get("recon_mse")],
        ["recon MAE", quality.get("recon_mae")],
        ["recon cosine", quality.get("recon_cosine")],
        ["unique-tuple rate", quality.get("unique_tuple_rate")],
        ["largest collision group", quality.get("largest_collision_group")],
    ]
    for i, pc in enumerate(quality.get("prefix_coherence") or [], start=1):
        rows.append([f"prefix coherence (first {i} code{'s' if i > 1 else ''})", pc])
    final = quality.get("final_ids")
    if final:
        rows += [["final ids unique", final.get("unique")], ["ids moved by disambiguation", final.get("n_moved")],
                 ["id length", final.get("id_length")]]
    fit = quality.get("fit")
    if fit and "epochs_run" in fit:
        rows.append(["epochs run", fit["epochs_run"]])
        if "kept_epoch" in fit:
            rows.append(["epoch saved (best eval recon)", fit["kept_epoch"] + 1])

    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{_e(title)}</title><style>{_CSS}</style></head><body>",
        f"<h1>{_e(title)}</h1>",
        "<h2>Headline</h2>",
        _table(["metric", "value"], [r for r in rows if r[1] is not None]),
    ]
    parts += _baseline_section(quality.get("baseline"))
    if levels:
        parts += [
            "<h2>Per level</h2>",
            _table(
                ["level", "active codes", "usage rate", "perplexity", "entropy (nats)"],
                [[lv.get("level"), lv.get("active_codes"), lv.get("usage_rate"), lv.get("perplexity"),
                  lv.get("entropy")] for lv in levels],
            ),
            "<h2>Code usage per level</h2>",
            _plot_code_usage(levels),
        ]
    if quality.get("collision_group_sizes"):
        parts += ["<h2>Collision groups</h2>", _plot_collisions(quality["collision_group_sizes"])]
    hist = quality.get("recon_error_histogram")
    if hist and hist.get("counts") and len(hist.get("edges", [])) == len(hist["counts"]) + 1:
        parts += ["<h2>Reconstruction error</h2>", _plot_recon_hist(hist)]
    if fit and fit.get("history"):
        parts += ["<h2>Training</h2>", _plot_training(fit["history"])]
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"

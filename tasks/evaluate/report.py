"""evaluation.json's shape, its comparison table (text / Markdown) and the self-contained HTML page."""

from __future__ import annotations

import html
from typing import Any

from tasks.evaluate.engine import EvalResult, combine, paired_difference
from tasks.evaluate.metrics import METRICS

_COLORS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf")


def summarize_id_set(*, kind: str, sha256: str, n_items: int, dropped: dict[str, Any], results: list[EvalResult]) -> dict[str, Any]:
    """One ID set's entry: metrics over seeds (test and validation), budgets and the per-seed runs."""
    return {
        "kind": kind,
        "sha256": sha256,
        "n_items": n_items,
        "dropped": dropped,
        "n_users": results[0].n_users,
        "test": {m: v.to_dict() for m, v in combine(results, "test").items()},
        "validation": {m: v.to_dict() for m, v in combine(results, "validation").items()},
        "seeds": [r.seed for r in results],
        "steps": [r.steps for r in results],
        "best_steps": [r.best_step for r in results],
        "train_seconds": round(sum(r.train_seconds for r in results), 3),
        "eval_seconds": round(sum(r.eval_seconds for r in results), 3),
        "cpu_seconds": round(sum(r.cpu_seconds for r in results), 3),
        "runs": [r.to_dict(ranks=False) for r in results],
    }


def paired_section(results: dict[str, list[EvalResult]], kinds: dict[str, str]) -> list[dict[str, Any]]:
    """The run's test metrics minus each baseline's, paired by user within each seed (evaluation.json's ``paired``)."""
    out = []
    for name in (n for n, k in kinds.items() if k == "run"):
        for base in (n for n, k in kinds.items() if k != "run"):
            seeds = sorted({r.seed for r in results[name]} & {r.seed for r in results[base]})
            diff = paired_difference(results[name], results[base])
            out.append({"id_set": name, "baseline": base, "seeds": seeds, "test": {m: v.to_dict() for m, v in diff.items()}})
    return out


def paired_lines(payload: dict[str, Any], *, metric: str = "recall@10") -> list[str]:
    """One line per (run, baseline): the paired difference and how many standard errors it is."""
    lines = []
    for p in payload.get("paired", []):
        d = p["test"][metric]
        z = f" ({d['mean'] / d['se']:+.1f} s.e.)" if d["se"] > 0 else ""
        lines.append(f"{metric} {p['id_set']} - {p['baseline']}, paired by user: {d['mean']:+.4f} ± {d['se']:.4f}{z}")
    return lines


def ratio_vs(payload: dict[str, Any], *, baseline: str = "rkmeans", metric: str = "recall@10") -> dict[str, float]:
    """Each non-baseline ID set's test ``metric`` divided by the baseline's (same evaluation)."""
    sets = payload["id_sets"]
    base = next((v for v in sets.values() if v["kind"] == baseline), None)
    if base is None or not base["test"][metric]["mean"]:
        return {}
    return {name: v["test"][metric]["mean"] / base["test"][metric]["mean"] for name, v in sets.items() if v["kind"] != baseline}


def kmeans_ratios(payload: dict[str, Any], *, metric: str = "recall@10") -> list[tuple[str, str, float]]:
    """(ID set, baseline, ratio): ``metric`` of each set over each residual k-means baseline present (text, fused)."""
    return [(name, b, r) for b in ("rkmeans", "rkmeans_fused") for name, r in ratio_vs(payload, baseline=b, metric=metric).items()]


def below_reference_lines(payload: dict[str, Any], *, metric: str = "recall@10") -> list[str]:
    """A warning when an ID set's retriever scores below the ID-free next-item counts (:mod:`tasks.evaluate.reference`)."""
    ref = payload.get("reference")  # evaluations written before it existed have none
    if not ref:
        return []
    bar = ref["test"][metric]["mean"]
    below = [f"{name} {v['test'][metric]['mean']:.4f}" for name, v in payload["id_sets"].items() if v["test"][metric]["mean"] < bar]
    if not below:
        return []
    return [f"{metric} below the ID-free {ref['name']} ({bar:.4f}): {', '.join(below)}. The retriever is undertrained at this "
            "budget, so the table ranks how fast each ID set starts to be learned rather than the IDs; raise --steps or "
            "--time-budget (a GPU helps) before drawing conclusions"]


def metric_cells(split: dict[str, Any]) -> list[str]:
    """One split's ``METRICS`` as table cells, mean ± s.e., in ``METRICS`` order."""
    return [f"{split[m]['mean']:.4f} ± {split[m]['se']:.4f}" for m in METRICS]


def reference_cells(payload: dict[str, Any]) -> list[str] | None:
    """The ID-free reference's label and test ``METRICS`` cells for a table row; None when the payload has none."""
    ref = payload.get("reference")  # evaluations written before it existed have none
    if not ref:
        return None
    return [f"({ref['name']}, no IDs)", *metric_cells(ref["test"])]


def table_rows(payload: dict[str, Any]) -> list[list[str]]:
    rows = [["ID set", *[f"{m} ± s.e." for m in METRICS], "steps", "train s", "eval s"]]
    for name, v in payload["id_sets"].items():
        rows.append([
            name,
            *metric_cells(v["test"]),
            "/".join(str(s) for s in v["steps"]),
            f"{v['train_seconds']:.0f}",
            f"{v['eval_seconds']:.0f}",
        ])
    if cells := reference_cells(payload):
        rows.append([*cells, "-", "-", f"{payload['reference']['seconds']:.0f}"])
    return rows


def text_table(payload: dict[str, Any]) -> str:
    rows = table_rows(payload)
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in rows]
    for name, base, ratio in kmeans_ratios(payload):
        lines.append(f"recall@10 {name} / {base} = {ratio:.3f}")
    return "\n".join(lines + paired_lines(payload) + below_reference_lines(payload))


def markdown_table(payload: dict[str, Any]) -> str:
    rows = table_rows(payload)
    out = [f"### Evaluation `{payload['eval_id']}` of `{payload['run']}`", "",
           f"Test metrics over {payload['n_users']} users, seeds {payload['config']['seeds']} (mean over seeds ± s.e.).", ""]
    out.append("| " + " | ".join(rows[0]) + " |")
    out.append("|" + "---|" * len(rows[0]))
    out += ["| " + " | ".join(r) + " |" for r in rows[1:]]
    for name, base, ratio in kmeans_ratios(payload):
        out.append(f"\nrecall@10 `{name}` / {base} = **{ratio:.3f}**")
    out += [f"\n{line}" for line in paired_lines(payload) + below_reference_lines(payload)]
    return "\n".join(out)


def _curve_svg(payload: dict[str, Any], key: str, label: str) -> str:
    series = []
    for i, (name, v) in enumerate(payload["id_sets"].items()):
        for run in v["runs"]:
            pts = [(p["step"], p[key]) for p in run["curve"]]
            if pts:
                series.append((f"{name} seed {run['seed']}", _COLORS[i % len(_COLORS)], pts))
    if not series:
        return "<p>no learning curve points</p>"
    w, h, pad = 560, 260, 44
    xmax = max(x for _, _, pts in series for x, _ in pts) or 1
    ymax = max(y for _, _, pts in series for _, y in pts) or 1.0
    sx = lambda x: pad + (w - 2 * pad) * x / xmax  # noqa: E731
    sy = lambda y: h - pad - (h - 2 * pad) * y / ymax  # noqa: E731
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h + 18 * len(series)}" font-family="sans-serif" font-size="11">',
             f'<line x1="{pad}" y1="{h - pad}" x2="{w - pad}" y2="{h - pad}" stroke="#333"/>',
             f'<line x1="{pad}" y1="{pad}" x2="{pad}" y2="{h - pad}" stroke="#333"/>',
             f'<text x="{w / 2}" y="{h - 10}" text-anchor="middle">training step</text>',
             f'<text x="4" y="{pad - 10}">{html.escape(label)} (max {ymax:.4f})</text>',
             f'<text x="{w - pad}" y="{h - pad + 14}" text-anchor="end">{xmax}</text>']
    for j, (name, color, pts) in enumerate(series):
        dash = "" if j % 2 == 0 else ' stroke-dasharray="4 3"'
        path = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in pts)
        parts.append(f'<polyline fill="none" stroke="{color}" stroke-width="1.6"{dash} points="{path}"/>')
        parts.append(f'<text x="{pad}" y="{h + 14 * (j + 1)}" fill="{color}">— {html.escape(name)}</text>')
    parts.append("</svg>")
    return "".join(parts)


def render_html(payload: dict[str, Any]) -> str:
    rows = table_rows(payload)
    head = "".join(f"<th>{html.escape(c)}</th>" for c in rows[0])
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in rows[1:])
    ratios = "".join(f"<p>recall@10 <b>{html.escape(n)}</b> / {b} = <b>{r:.3f}</b></p>" for n, b, r in kmeans_ratios(payload))
    ratios += "".join(f"<p>{html.escape(line)}</p>" for line in paired_lines(payload))
    ratios += "".join(f"<p><b>warning:</b> {html.escape(line)}</p>" for line in below_reference_lines(payload))
    inter = payload["interactions"]
    dropped = "".join(
        f"<li>{html.escape(n)}: {v['dropped']['unknown_interactions']} interactions with {v['dropped']['unknown_items']} unknown items dropped"
        f" (e.g. {html.escape(', '.join(v['dropped']['unknown_examples']) or '-')}); {v['dropped']['short_users']} users left with fewer than 3 items</li>"
        for n, v in payload["id_sets"].items()
    )
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>semid evaluation {html.escape(payload['eval_id'])}</title>
<style>body{{font-family:sans-serif;margin:2em;max-width:1100px}}table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;padding:4px 8px;text-align:right}}td:first-child{{text-align:left}}</style></head><body>
<h1>Evaluation of {html.escape(payload['run'])}</h1>
<p>TIGER protocol: leave-one-out over {payload['n_users']} users, T5 retriever trained from scratch, beam {payload['config']['beam']} constrained to valid IDs.
Seeds {payload['config']['seeds']}; budget {html.escape(str(payload['config'].get('steps') or str(payload['config'].get('time_budget_s')) + ' s'))}; test metrics, mean over seeds ± standard error (users and seeds).</p>
<h2>Comparison (test)</h2><table><tr>{head}</tr>{body}</table>
<p>The row without IDs ranks items by how often they followed the user's last item in training, then by popularity (no model):
a retriever below it has not yet learned what those counts know.</p>{ratios}
<h2>Learning curves (validation subsample)</h2>{_curve_svg(payload, 'val_ndcg_10', 'NDCG@10')}{_curve_svg(payload, 'val_recall_10', 'Recall@10')}
<h2>Data</h2><p>interactions {html.escape(inter['uri'])} (sha256 {inter['sha256'][:16]}…): {inter['users']} users, {inter['interactions']} interactions.</p><ul>{dropped}</ul>
<p>wall time {payload['wall_seconds']:.0f} s</p></body></html>
"""

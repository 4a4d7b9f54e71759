"""Read a published run back: the summary behind ``semid inspect`` and ``semid similar``."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch

from rqvae_core.similarity import top_k_similar
from tasks import storage
from tasks.errors import BadInput
from tasks.export import is_published
from tasks.fit import load_model


class RunNotFound(BadInput):
    """The prefix is not a finished run, or the item is not in it."""


def _published(prefix: str) -> None:
    if not is_published(prefix):
        raise RunNotFound(f"{prefix} is not a finished run (no _SUCCESS)")


def _ids_with_text(prefix: str) -> pa.Table:
    ids = storage.read_parquet(storage.join(prefix, "semantic_ids"))
    items = storage.read_parquet(storage.join(prefix, "items"))
    idx = pc.index_in(ids["item_id"], value_set=items["item_id"])
    return ids.append_column("text", items["text"].take(idx)).sort_by("item_id")


def _short(text: str | None, width: int = 90) -> str:
    text = text or ""
    return text if len(text) <= width else text[: width - 1] + "…"


CHANGE_STATUSES = ("kept", "new", "changed", "removed")


def run_summary(prefix: str) -> dict:
    """The numbers an operator checks after each run: the same in ``semid inspect`` and the run's Prefect artifact."""
    _published(prefix)
    manifest = storage.read_json(storage.join(prefix, "manifest.json"))
    quality = storage.read_json(storage.join(prefix, "quality.json"))
    changes = quality.get("changes")
    if changes is None:  # no prior run: every ID'd item is new
        changes = {"new": manifest["counts"]["ided"]}
    return {
        "catalog": manifest["catalog"],
        "run_id": manifest["run_id"],
        "prefix": prefix,
        "prior_run": manifest.get("prior_run"),
        "counts": manifest["counts"],
        "quarantine_reasons": manifest.get("quarantine_reasons") or {},
        "changes": {s: int(changes.get(s, 0)) for s in CHANGE_STATUSES},
        "quality": {
            "recon_mse": quality["recon_mse"],
            "recon_cosine": quality["recon_cosine"],
            "unique_tuple_rate": quality["unique_tuple_rate"],
            "largest_collision_group": quality["largest_collision_group"],
            "active_codes": [lv["active_codes"] for lv in quality["levels"]],
        },
        "report": storage.join(prefix, "quality.html"),
    }


def summary_markdown(s: dict) -> str:
    c, ch, q = s["counts"], s["changes"], s["quality"]
    reasons = "".join(f"| {reason} | {n} |\n" for reason, n in sorted(s["quarantine_reasons"].items())) or "| (none) | 0 |\n"
    return (
        f"# semid run `{s['catalog']}/{s['run_id']}`\n\n"
        f"Output: `{s['prefix']}`  \nPrior run: `{s['prior_run'] or 'none (new model)'}`\n\n"
        "## Counts\n\n| input | ided | quarantined |\n|---|---|---|\n"
        f"| {c['input']} | {c['ided']} | {c['quarantined']} |\n\n"
        "## Quarantine reasons\n\n| reason | rows |\n|---|---|\n" + reasons + "\n"
        "## Changes vs the prior run\n\n| kept | new | changed | removed |\n|---|---|---|---|\n"
        f"| {ch['kept']} | {ch['new']} | {ch['changed']} | {ch['removed']} |\n\n"
        "## Quality\n\n"
        f"recon MSE {q['recon_mse']:.5f}, cosine {q['recon_cosine']:.4f}; unique-tuple rate before disambiguation "
        f"{q['unique_tuple_rate']:.4f}, largest collision group {q['largest_collision_group']}; active codes per level {q['active_codes']}\n\n"
        f"Report: `{s['report']}`\n"
    )


def inspect_data(prefix: str, *, n_codes: int = 3, per_code: int = 4) -> dict:
    """What ``semid inspect`` shows, as data (``--json`` prints it as is): ``run_summary`` plus detail."""
    summary = run_summary(prefix)
    manifest = storage.read_json(storage.join(prefix, "manifest.json"))
    quality = storage.read_json(storage.join(prefix, "quality.json"))
    table = _ids_with_text(prefix)
    first = pc.list_element(table["codes"], 0)
    top = pc.value_counts(first).to_pylist()
    top.sort(key=lambda d: (-d["counts"], d["values"]))
    groups = []
    for entry in top[:n_codes]:
        rows = table.filter(pc.equal(first, entry["values"])).slice(0, per_code).select(["sid", "item_id", "text"]).to_pylist()
        groups.append({"code": entry["values"], "items": entry["counts"], "examples": rows})
    summary["quality"].update(
        perplexity=[lv["perplexity"] for lv in quality["levels"]],
        prefix_coherence=quality.get("prefix_coherence", []),
        baseline=quality.get("baseline"),
    )
    return {**summary, "timings": manifest["timings"], "top_codes": groups}


def format_inspect(s: dict) -> str:
    c, ch, q = s["counts"], s["changes"], s["quality"]
    lines = [
        f"run        {s['catalog']}/{s['run_id']}  ({s['prefix']})",
        f"counts     input {c['input']} = ided {c['ided']} + quarantined {c['quarantined']}",
        f"quarantine {s['quarantine_reasons']}",
        f"changes    kept {ch['kept']}  new {ch['new']}  changed {ch['changed']}  removed {ch['removed']}  (prior run: {s['prior_run'] or 'none'})",
        f"recon      mse {q['recon_mse']:.5f}  cosine {q['recon_cosine']:.4f}",
        f"codes      active per level {q['active_codes']}  perplexity {[round(p, 1) for p in q['perplexity']]}",
        f"ids        unique-tuple rate before disambiguation {q['unique_tuple_rate']:.4f}, largest collision group {q['largest_collision_group']}",
        f"coherence  share of 10 nearest neighbours sharing the first 1..L codes: {[round(v, 3) for v in q['prefix_coherence']]}",
        *_baseline_lines(q.get("baseline")),
        f"timings    { {k: round(v, 1) for k, v in s['timings'].items()} }",
        f"report     {s['report']}",
    ]
    for g in s["top_codes"]:
        lines.append(f"top-level code {g['code']} ({g['items']} items):")
        lines.extend(f"  {r['sid']:<14} {r['item_id']:<12} {_short(r['text'])}" for r in g["examples"])
    return "\n".join(lines)


def _baseline_lines(b: dict | None) -> list[str]:
    if not b:
        return []
    run, rk = b["run"], b["residual_kmeans"]
    lines = [
        f"baseline   residual k-means on the same {b['n_items']} items: coherence {[round(v, 3) for v in rk['prefix_coherence']]} "
        f"(this run {[round(v, 3) for v in run['prefix_coherence']]}), distinct prefixes {rk['distinct_prefixes']} "
        f"(this run {run['distinct_prefixes']}), recon mse {rk['recon_mse']:.5f} (this run {run['recon_mse']:.5f})",
    ]
    if b.get("warning"):
        lines.append(f"WARNING    {b['warning']}")
    return lines


def inspect_run(prefix: str, *, n_codes: int = 3, per_code: int = 4) -> str:
    return format_inspect(inspect_data(prefix, n_codes=n_codes, per_code=per_code))


def similar_data(prefix: str, item_id: str, *, k: int = 10) -> dict:
    """What ``semid similar`` shows, as data: the query and its k nearest items."""
    _published(prefix)
    table = _ids_with_text(prefix)
    ids = table["item_id"].to_pylist()
    try:
        query = ids.index(item_id)
    except ValueError:
        raise RunNotFound(f"item {item_id!r} is not in {prefix}") from None
    codes = np.asarray(table["codes"].to_pylist(), dtype=np.int64)
    model = load_model(storage.join(prefix, "model"))
    codebooks = model.codebooks()  # (L, K, e): an item's codeword embedding is the sum of its codewords
    L = codebooks.shape[0]
    vectors = sum(codebooks[level][torch.from_numpy(codes[:, level])] for level in range(L)).numpy()
    result = top_k_similar(query_index=query, codes=codes, vectors=vectors, k=k)
    texts, sids = table["text"].to_pylist(), table["sid"].to_pylist()
    return {
        "prefix": prefix,
        "query": {"item_id": item_id, "sid": sids[query], "text": texts[query]},
        "similar": [
            {"item_id": ids[i], "sid": sids[i], "shared_prefix": int(shared), "distance": float(dist), "text": texts[i]}
            for i, shared, dist in zip(result.indices, result.shared_prefix, result.distance)
        ],
    }


def format_similar(d: dict) -> str:
    q = d["query"]
    lines = [f"query      {q['sid']:<14} {q['item_id']:<12} {_short(q['text'])}", "shared  distance  sid            item_id      text"]
    lines.extend(f"{r['shared_prefix']:>6}  {r['distance']:8.4f}  {r['sid']:<14} {r['item_id']:<12} {_short(r['text'])}" for r in d["similar"])
    return "\n".join(lines)


def similar_items(prefix: str, item_id: str, *, k: int = 10) -> str:
    return format_similar(similar_data(prefix, item_id, k=k))

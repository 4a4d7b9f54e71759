"""``semid validate``: the checks a run makes before its expensive stages, without running it.

Config (already parsed by the caller), the catalog (the real ingest, into a temporary
directory: columns, parse errors, quarantine counts), the ID space's capacity for the
valid rows (with the prior model's levels and codebook size when a prior run is given),
and whether the prior run can seed this one. No Ray, no Prefect: seconds, not minutes.
"""

from __future__ import annotations

import tempfile
from typing import Any

from rqvae_core.ids import check_capacity
from tasks import storage
from tasks.config import PipelineConfig
from tasks.chain import latest_published
from tasks.export import is_published
from tasks.ingest import ingest


def _check(name: str, ok: bool, detail: str) -> dict[str, Any]:
    return {"check": name, "ok": ok, "detail": detail}


def validate(*, catalog: str, out: str | None, name: str | None, config: PipelineConfig, prior_run: str | None) -> dict[str, Any]:
    from flows.retokenize import check_safe, default_name

    checks = [_check("config", True, f"model {config.model.n_levels} levels x {config.model.codebook_size} codes, embed {config.embed.model}")]
    name = check_safe("catalog name", name or default_name(catalog))
    counts: dict[str, int] = {}
    with tempfile.TemporaryDirectory(prefix="semid-validate-") as work:
        try:
            m = ingest(catalog_uri=catalog, work_uri=work, config=config.ingest)
        except (ValueError, OSError) as e:  # IngestError and storage errors: the catalog cannot be read as given
            checks.append(_check("catalog", False, f"{type(e).__name__}: {e}"))
            return {"ok": False, "catalog": catalog, "name": name, "checks": checks, "counts": counts}
    counts = {"input": m.input, "valid": m.valid, "quarantined": m.quarantined}
    reasons = {k: v for k, v in m.quarantine_reasons.items() if v}
    checks.append(_check("catalog", counts.get("valid", 0) > 0,
                         f"{counts.get('input', 0)} rows: {counts.get('valid', 0)} valid, {counts.get('quarantined', 0)} quarantined {reasons or ''}".rstrip()))

    n_levels, codebook_size, source = config.model.n_levels, config.model.codebook_size, "config"
    if prior_run == "latest":
        if out is None:
            checks.append(_check("prior", False, "--prior-run latest needs --out to find the catalog's runs"))
            prior_run = None
        else:
            prior_run = latest_published(storage.join(out, name), exclude="")
            if prior_run is None:
                checks.append(_check("prior", True, f"no published run under {storage.join(out, name)} yet: the run fits a new model"))
    if prior_run:
        prior = _prior_checks(prior_run, config)
        checks.append(prior["check"])
        if prior.get("model"):
            n_levels, codebook_size, source = prior["model"]["n_levels"], prior["model"]["codebook_size"], "prior model"
    try:
        check_capacity(n_items=counts.get("valid", 0), n_levels=n_levels, codebook_size=codebook_size)
        checks.append(_check("capacity", True, f"{counts.get('valid', 0)} items fit {codebook_size}**{n_levels + 1} = {codebook_size ** (n_levels + 1)} IDs ({source})"))
    except ValueError as e:
        checks.append(_check("capacity", False, f"{e} ({source})"))
    if out is not None:
        checks.append(_check("out", True, f"{storage.join(out, name)} is writable"))
    return {"ok": all(c["ok"] for c in checks), "catalog": catalog, "name": name, "counts": counts, "prior_run": prior_run, "checks": checks}


def _prior_checks(prior_run: str, config: PipelineConfig) -> dict[str, Any]:
    """A prior run can seed this one if it is published, its model loads as config, and it embedded with the same model."""
    if not is_published(prior_run):
        return {"check": _check("prior", False, f"{prior_run} has no _SUCCESS; only finished runs can seed stable IDs")}
    try:
        model = storage.read_json(storage.join(prior_run, "model", "config.json"))
        manifest = storage.read_json(storage.join(prior_run, "manifest.json"))
    except (OSError, ValueError) as e:
        return {"check": _check("prior", False, f"{prior_run}: cannot read its model or manifest ({type(e).__name__}: {e})")}
    prior_embed = ((manifest.get("config") or {}).get("embed") or {}).get("model")
    if prior_embed is not None and prior_embed != config.embed.model:
        return {"check": _check("prior", False, f"{prior_run} was embedded with {prior_embed!r}, this run would use {config.embed.model!r}"), "model": model}
    return {"check": _check("prior", True, f"{prior_run}: model {model['n_levels']} levels x {model['codebook_size']} codes, {model['input_dim']}-d input"), "model": model}

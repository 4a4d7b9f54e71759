"""``semid``: the one console script. Subcommands: run, validate, backfill, gc, sample, inspect, similar, evaluate.

Terminal output is the CLI's own (progress per stage, a summary, one line per error);
everything Ray and Prefect print goes to a log file (see ``flows/console.py``).
Exit codes: 0 ok, 2 bad input or configuration, 1 a run that failed.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Sequence

from flows.console import Console, ProgressView, add_output_options, capture, run_log_path, show_run_logs
from tasks.errors import BadInput, is_bad_input

EXIT_BAD_INPUT = 2
EXIT_RUN_FAILED = 1

QUIET_ENV = {
    "DO_NOT_TRACK": "1",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_AUTH_MODE": "disabled",
    "HF_HUB_OFFLINE": "1",
    "TOKENIZERS_PARALLELISM": "false",
    "RAY_DATA_DISABLE_PROGRESS_BARS": "1",  # read when ray.data is imported; its bars would only draw into the log file
    # The ephemeral Prefect API can take well over Prefect's 20 s default to come up on a busy 2-CPU host.
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "180",
}


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("semid")
    except PackageNotFoundError:  # a source checkout that was never installed
        return "unknown"


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="semid", description="Semantic-ID tokenization of item catalogs (RQ-VAE, Ray, Prefect).",
                                epilog="Exit codes: 0 ok, 2 bad input or configuration, 1 a run that failed.")
    p.add_argument("--version", action="version", version=f"semid {_version()}", help="print the version and exit")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = sub.add_parser("run", help="run the full flow on a catalog and print the output prefix",
                         description="Ingest → embed → fit → assign → export, as one Prefect flow run.")
    run.add_argument("--catalog", required=True, help="catalog file: .csv .tsv .item .jsonl .json .parquet, local path or s3://")
    run.add_argument("--out", required=True, help="output root, local path or s3://bucket/prefix; the run goes to OUT/NAME/RUN_ID/")
    run.add_argument("--name", help="catalog name used in the output path (default: the catalog file's stem)")
    run.add_argument("--run-id", help="run id used in the output path (default: UTC timestamp, e.g. 20261125T030000Z); re-using an unfinished run id resumes it")
    _add_config_options(run)
    run.add_argument("--interactions", help="user interactions (user_sequence.txt, or a user_id,item_id,timestamp table): fuse collaborative item "
                                            "vectors with the text embeddings so IDs also follow what users consume together (collab.* options; "
                                            "each user's last collab.holdout_last=2 items are left out, so `semid evaluate` on the same file stays fair)")
    run.add_argument("--prior-run", help="a published run prefix, or 'latest' for this catalog's newest finished run: reuse its model frozen and keep unchanged items' IDs (stable re-tokenization)")

    run.add_argument("--retrain", action="store_true",
                     help="with --prior-run: fit a new model anyway (a new model version); every ID moves to the new model's space, "
                          "changes/ holds the old→new map, and no ID the lineage ever issued is issued again")
    run.add_argument("--reembed", action="store_true",
                     help="with --prior-run: the embedder changed on purpose (model, weights or fp16/fp32 differ from the prior run's, "
                          "which is refused otherwise): embed every item with the configured embedder and retrain as with --retrain")
    run.add_argument("--retrain-on-drift", action="store_true",
                     help="with --prior-run: retrain (as with --retrain) when the frozen prior model is flagged as drifted "
                          "(new/changed items' recon error > drift.max_recon_ratio x the prior run's)")
    run.add_argument("--force", action="store_true",
                     help="publish even when a publish gate trips (quarantined, removed or changed share above the gates.* limits); recorded in the manifest")

    run.add_argument("--log-file", help="where Ray's and Prefect's logs go (default: OUT/NAME/_logs/RUN_ID.log for a local --out, else under $SEMID_LOG_DIR)")
    add_output_options(run)

    validate = sub.add_parser("validate", help="check a catalog and config without running (no Ray, no Prefect)",
                              description="Config, catalog columns and rows (quarantine counts), ID-space capacity, --out and prior-run "
                                          "compatibility: the checks a run makes before its expensive stages, in seconds.")
    validate.add_argument("--catalog", required=True, help="catalog file, as for run")
    validate.add_argument("--out", help="output root, as for run (checked for writability; needed with --prior-run latest)")
    validate.add_argument("--name", help="catalog name, as for run (default: the catalog file's stem)")
    _add_config_options(validate)
    validate.add_argument("--prior-run", help="a published run prefix or 'latest' (with --out): check it can seed this run")
    add_output_options(validate)

    backfill = sub.add_parser(
        "backfill", help="run dated snapshots of catalogs in date order, each chained to the previous",
        description="Backfill dated catalog snapshots: per catalog in date order (date from the file name), each run chained to "
                    "the previous as its prior run, run ids from the snapshot dates; catalogs in parallel. Prints a summary table.",
    )
    backfill.add_argument("--snapshots", required=True, nargs="+", metavar="GLOB",
                          help="snapshot files or glob patterns (quote them), local or s3://, each dated in its file name, e.g. 'snapshots/beauty-2026-10-*.parquet'")
    backfill.add_argument("--out", required=True, help="output root, local path or s3://bucket/prefix; runs go to OUT/NAME/SNAPSHOT_DATE/")
    backfill.add_argument("--name", help="catalog name for every snapshot (default: the file name without its date, else its directory name)")
    backfill.add_argument("--prior-run", help="what each catalog's first snapshot chains from: a published run prefix (one catalog only) or 'latest' (default: fit a new model)")
    backfill.add_argument("--parallel", type=int, default=1, help="catalogs backfilled at the same time, sharing one Ray (default 1; raise it when Ray has CPUs for several pipelines at once)")
    backfill.add_argument("--config", help="JSON file with pipeline settings, as for run")
    backfill.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help="override one config field, as for run (repeatable)")
    backfill.add_argument("--log-file", help="where Ray's and Prefect's logs go (default: OUT/_logs/backfill-TIMESTAMP.log for a local --out, else under $SEMID_LOG_DIR)")
    add_output_options(backfill)

    gc = sub.add_parser("gc", help="remove old runs, stale work dirs and unused embedding-cache entries of one catalog",
                        description="Retention for OUT/NAME: keeps the latest run, the KEEP most recently published ones and the run each kept run "
                                    "chains from; removes older runs, unfinished run prefixes and _work/ dirs untouched for MIN_AGE_HOURS (or whose "
                                    "run is published), and embedding-cache entries (shared by all catalogs under OUT) no remaining run uses. "
                                    "Refuses to run while a run of the catalog holds its lock.")
    gc.add_argument("--out", required=True, help="output root, local path or s3://bucket/prefix")
    gc.add_argument("--name", required=True, help="catalog name (the folder under OUT)")
    gc.add_argument("--keep", type=int, required=True, help="number of most recently published runs to keep (at least 1)")
    gc.add_argument("--dry-run", action="store_true", help="only list what would be removed")
    gc.add_argument("--min-age-hours", type=float, default=24.0,
                    help="leave work dirs, unfinished runs and cache parts modified more recently than this alone (default 24): "
                         "they may belong to a run in progress on another host")
    add_output_options(gc)

    sample = sub.add_parser("sample", help="write a synthetic product catalog (CSV)", description="Write a realistic synthetic product catalog, deterministic by seed.")
    sample.add_argument("--out", required=True, help="CSV file to write")
    sample.add_argument("--n", type=int, default=3000, help="number of items (default 3000)")
    sample.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    add_output_options(sample)

    inspect = sub.add_parser("inspect", help="summarise a finished run", description="Counts, quality headline and a few items per top-level code.")
    inspect.add_argument("prefix", help="a run prefix OUT/NAME/RUN_ID (local or s3://)")
    inspect.add_argument("--codes", type=int, default=3, help="number of top-level codes to show (default 3)")
    inspect.add_argument("--per-code", type=int, default=4, help="items shown per top-level code (default 4)")
    add_output_options(inspect)

    similar = sub.add_parser("similar", help="items most similar to one item by semantic ID", description="Ranked by shared ID prefix, then distance between codeword embeddings.")
    similar.add_argument("prefix", help="a run prefix OUT/NAME/RUN_ID (local or s3://)")
    similar.add_argument("item_id", help="the query item's id")
    similar.add_argument("-k", type=int, default=10, help="number of similar items (default 10)")
    add_output_options(similar)
    _add_evaluate(sub)
    return p


EVAL_DEFAULT_STEPS = 600  # flows.evaluate.DEFAULT_STEPS (a test keeps them equal; importing the flow here would slow every --help)


def _add_evaluate(sub) -> None:
    ev = sub.add_parser("evaluate", help="score a run's IDs with a generative retriever, against baselines",
                        description="TIGER protocol: leave-one-out on user sequences, a small T5 trained from scratch to generate the next "
                                    "item's ID, beam search constrained to valid IDs, Recall/NDCG@5/10 over all users. Writes RUN/eval/EVAL_ID/.")
    ev.add_argument("run", metavar="RUN_PREFIX", help="a published run prefix OUT/NAME/RUN_ID (local or s3://)")
    ev.add_argument("--interactions", required=True, help="user sequences: a user_sequence.txt-style file (user then items in time order per line) or a .parquet/.csv/.tsv table with user_id, item_id, timestamp")
    ev.add_argument("--baselines", default="rkmeans,random", help="comma-separated baseline ID sets built from the run's embeddings: rkmeans (residual k-means of the text vectors), "
                    "rkmeans_fused (of the fused text + collaborative vectors the model was fitted on; runs built with --interactions, "
                    "rebuilt from the same interactions file), random; 'none' for none (default rkmeans,random)")
    budget = ev.add_mutually_exclusive_group()
    budget.add_argument("--steps", type=int, help=f"training steps per ID set and seed (default {EVAL_DEFAULT_STEPS})")
    budget.add_argument("--time-budget", type=float, metavar="SECONDS", help="training seconds per ID set and seed, instead of --steps")
    ev.add_argument("--seeds", default="0,1", help="comma-separated training seeds; metrics are averaged over them (default 0,1)")
    ev.add_argument("--eval-id", help="output folder name under RUN_PREFIX/eval/ (default: UTC timestamp)")
    ev.add_argument("--batch-size", type=int, default=128, help="training batch size (default 128)")
    ev.add_argument("--beam", type=int, default=20, help="beam width = length of the ranked list (default 20)")
    ev.add_argument("--eval-every", type=int, default=200, help="steps between validation passes for early stopping (default 200)")
    ev.add_argument("--val-users", type=int, default=1000, help="validation users scored during training (a fixed sample; default 1000)")
    ev.add_argument("--num-workers", type=int, help="Ray Train workers, one CPU (or GPU) each; the (ID set, seed) jobs are spread over them "
                                                   "(default: one per job, up to the cluster's CPUs, or GPUs when it has them; with --ddp all of them)")
    ev.add_argument("--ddp", action="store_true", help="with --num-workers > 1: train each job data-parallel on all workers instead of spreading the jobs")
    ev.add_argument("--in-process", action="store_true", help="train in this process instead of through Ray Train (same engine)")
    ev.add_argument("--log-file", help="where Ray's and Prefect's logs go (default: beside the run's log, "
                    "OUT/NAME/_logs/RUN_ID-evaluate-EVAL_ID.log for a local run, else under $SEMID_LOG_DIR)")
    add_output_options(ev)


def _add_config_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--id-column", help="column holding the item id (default: item_id)")
    p.add_argument("--text-columns", help="comma-separated columns joined into the item text (default: title,brand,categories,description when present)")
    p.add_argument("--embedding-column", help="column of precomputed vectors (Parquet list<float> or fixed-size list; JSON arrays in text formats): skips the embed stage; null, NaN/inf and wrong-length vectors are quarantined as bad_embedding")
    p.add_argument("--config", help="JSON file with pipeline settings (sections: ingest, embed, model, fit, assign; plus seed)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override one config field, e.g. --set fit.epochs=20 --set model.codebook_size=128 (repeatable)")


def _config(args: argparse.Namespace):
    from tasks.config import load_config

    overrides = list(args.overrides)
    if args.id_column:
        overrides.append(f"ingest.id_column={json.dumps(args.id_column)}")
    if args.embedding_column:
        overrides.append(f"ingest.embedding_column={json.dumps(args.embedding_column)}")
    if args.text_columns:
        overrides.append(f"ingest.text_columns={json.dumps([c.strip() for c in args.text_columns.split(',') if c.strip()])}")
    return load_config(args.config, overrides)


def _cmd_run(args: argparse.Namespace, console: Console) -> int:
    config = _config(args)
    from flows.ops import slot_run_id
    from flows.retokenize import check_safe, default_name, retokenize

    # Fail fast, before Prefect and Ray start: names that would leave the output prefix, an unusable --out.
    name = check_safe("catalog name", args.name if args.name is not None else default_name(args.catalog))
    run_id = check_safe("run id", args.run_id if args.run_id is not None else slot_run_id())
    _check_out(args.out)

    log_file = args.log_file or run_log_path(args.out, name, run_id)
    with capture(console, log_file), show_run_logs(console), ProgressView(console):
        result = retokenize(catalog=args.catalog, out=args.out, name=name, run_id=run_id, config=config, prior_run=args.prior_run,
                            retrain=args.retrain, reembed=args.reembed, retrain_on_drift=args.retrain_on_drift, force=args.force,
                            interactions=args.interactions)
    console.result({**result, "name": name, "run_id": run_id, "log_file": console.log_file}, _run_text)
    console.info(f"log: {console.log_file}")
    return 0


def _run_text(d: dict) -> str:
    c = d["counts"]
    head = "already published, nothing to do: " if d.get("skipped") else ""
    return f"{head}semantic IDs: {d['prefix']}  (input {c['input']} = ided {c['ided']} + quarantined {c['quarantined']})"


def _cmd_validate(args: argparse.Namespace, console: Console) -> int:
    from flows.validate import validate

    config = _config(args)
    if args.out is not None:
        _check_out(args.out)
    report = validate(catalog=args.catalog, out=args.out, name=args.name, config=config, prior_run=args.prior_run)
    console.result(report, lambda r: "\n".join(f"{'ok  ' if c['ok'] else 'FAIL'}  {c['check']:<9} {c['detail']}" for c in r["checks"]))
    failed = [c for c in report["checks"] if not c["ok"]]
    if failed:
        print(f"semid: validation failed: {failed[0]['check']}: {failed[0]['detail']}", file=console.err, flush=True)
        return EXIT_BAD_INPUT
    return 0


def _cmd_backfill(args: argparse.Namespace, console: Console) -> int:
    from tasks.config import load_config

    config = load_config(args.config, list(args.overrides))
    from flows.backfill import BackfillFailed, backfill, expand_snapshots, format_summary, plan

    if args.parallel < 1:
        raise BadInput(f"--parallel must be at least 1, got {args.parallel}")
    snapshots = expand_snapshots(args.snapshots)
    plan(snapshots, args.name)  # fail fast, before Prefect and Ray start: undated or duplicate snapshots
    _check_out(args.out)
    from flows.ops import slot_run_id

    log_file = args.log_file or run_log_path(args.out, "", f"backfill-{slot_run_id()}")
    with capture(console, log_file), show_run_logs(console):  # no per-stage lines: catalogs run in parallel
        try:
            rows = backfill(snapshots=snapshots, out=args.out, name=args.name, config=config, prior_run=args.prior_run, max_parallel=args.parallel)
        except BackfillFailed as e:
            console.result({"runs": e.rows, "failed": str(e), "log_file": console.log_file}, format_summary(e.rows))
            print(f"semid: backfill failed: {e} (details: {console.log_file})", file=console.err, flush=True)
            return EXIT_RUN_FAILED
    console.result({"runs": rows, "log_file": console.log_file}, format_summary(rows))
    console.info(f"log: {console.log_file}")
    return 0


class OutputLocationError(BadInput):
    """--out cannot hold the run's outputs."""


def _check_out(out: str) -> None:
    """A local --out must be a directory or creatable as one: no existing file on its path."""
    if "://" in out:
        return  # s3:// and other stores are checked by the first write
    path = os.path.abspath(out)
    probe = path
    while not os.path.exists(probe):
        parent = os.path.dirname(probe)
        if parent == probe:
            return
        probe = parent
    if not os.path.isdir(probe):
        where = "it" if probe == path else probe
        raise OutputLocationError(f"--out {out} cannot be used as an output directory: {where} is a file, not a directory")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise OutputLocationError(f"--out {out} cannot be created or written: no write permission on {probe}")


def _cmd_gc(args: argparse.Namespace, console: Console) -> int:
    from flows.retokenize import check_safe
    from tasks.gc import collect_garbage

    report = collect_garbage(out=args.out, name=check_safe("catalog name", args.name), keep=args.keep, dry_run=args.dry_run, min_age_hours=args.min_age_hours)
    console.result(report.model_dump(), "\n".join(report.lines()))
    return 0


def _cmd_sample(args: argparse.Namespace, console: Console) -> int:
    from tasks.sample_catalog import write_sample_catalog

    n = write_sample_catalog(out_path=args.out, n=args.n, seed=args.seed)
    console.result({"out": args.out, "items": n, "seed": args.seed}, f"wrote {n} items to {args.out}")
    return 0


def _cmd_inspect(args: argparse.Namespace, console: Console) -> int:
    from flows.runs import format_inspect, inspect_data

    console.result(inspect_data(args.prefix, n_codes=args.codes, per_code=args.per_code), format_inspect)
    return 0


def _cmd_similar(args: argparse.Namespace, console: Console) -> int:
    from flows.runs import format_similar, similar_data

    console.result(similar_data(args.prefix, args.item_id, k=args.k), format_similar)
    return 0


def _cmd_evaluate(args: argparse.Namespace, console: Console) -> int:
    import datetime as dt

    from flows.console import evaluation_log_path
    from flows.evaluate import EvaluateParams, evaluate
    from flows.retokenize import check_safe

    baselines = [] if args.baselines.strip().lower() in ("", "none") else [b.strip() for b in args.baselines.split(",") if b.strip()]
    try:
        seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    except ValueError as e:
        raise BadInput(f"--seeds expects comma-separated integers, got {args.seeds!r}") from e
    eval_id = check_safe("eval id", args.eval_id or dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ"))
    params = EvaluateParams(
        run=args.run, interactions=args.interactions, baselines=baselines, steps=args.steps, time_budget_s=args.time_budget,
        seeds=seeds, eval_id=eval_id, batch_size=args.batch_size, beam=args.beam, eval_every=args.eval_every,
        val_users=args.val_users, num_workers=args.num_workers, parallel="ddp" if args.ddp else "jobs", in_process=args.in_process,
    )
    with capture(console, args.log_file or evaluation_log_path(args.run, eval_id)), show_run_logs(console):
        payload = evaluate(params)
    console.result(payload, _evaluate_text)
    console.info(f"log: {console.log_file}")
    return 0


def _evaluate_text(payload: dict) -> str:
    from tasks import storage
    from tasks.evaluate.report import text_table

    lines = [text_table(payload)]
    for name, v in payload["id_sets"].items():
        d = v["dropped"]
        if d["unknown_interactions"] or d["short_users"]:
            lines.append(f"{name}: dropped {d['unknown_interactions']} interactions with {d['unknown_items']} unknown items "
                         f"(e.g. {', '.join(d['unknown_examples'])}); {d['short_users']} users with < 3 items")
    lines.append(f"evaluation: {storage.join(payload['run'], 'eval', payload['eval_id'])}")
    return "\n".join(lines)


def _short(value: object, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


HANDLERS = {"run": _cmd_run, "validate": _cmd_validate, "backfill": _cmd_backfill, "gc": _cmd_gc, "sample": _cmd_sample, "inspect": _cmd_inspect,
            "similar": _cmd_similar, "evaluate": _cmd_evaluate}


def main(argv: Sequence[str] | None = None) -> int:
    for key, value in QUIET_ENV.items():
        os.environ.setdefault(key, value)
    args = _parser().parse_args(argv)
    console = Console.from_args(args)
    try:
        return HANDLERS[args.command](args, console)
    except BaseException as e:  # noqa: BLE001 - every error ends as one line and an exit code
        return report_error(console, e)


def report_error(console: Console, e: BaseException) -> int:
    """One readable line (the traceback goes to the log file) and the exit code for ``e``."""
    from pydantic import ValidationError

    if isinstance(e, SystemExit):
        raise e
    console.write_traceback(e)
    ray_exceptions = sys.modules.get("ray.exceptions")
    if ray_exceptions and isinstance(e, ray_exceptions.RayTaskError) and isinstance(e.cause, BaseException):
        e = e.cause  # the error a Ray worker raised, not Ray's wrapper with its remote traceback
    if isinstance(e, ValidationError):
        fields = "; ".join(f"{'.'.join(str(p) for p in err['loc']) or 'config'}: {err['msg']} (got {_short(err.get('input'))})" for err in e.errors())
        console.error(f"invalid configuration: {fields}", kind="ValidationError", exit_code=EXIT_BAD_INPUT)
        return EXIT_BAD_INPUT
    # The input is wrong (tasks.errors.BadInput: no retry), or a path the user gave points at the wrong kind of file.
    if is_bad_input(e) or isinstance(e, (NotADirectoryError, IsADirectoryError, FileExistsError)):
        console.error(f"{type(e).__name__}: {e}", kind=type(e).__name__, exit_code=EXIT_BAD_INPUT)
        return EXIT_BAD_INPUT
    if isinstance(e, KeyboardInterrupt):
        console.error("interrupted; re-run with the same --run-id to resume", kind="KeyboardInterrupt", exit_code=130)
        return 130
    console.error(f"run failed: {type(e).__name__}: {e}", kind=type(e).__name__, exit_code=EXIT_RUN_FAILED)
    return EXIT_RUN_FAILED


if __name__ == "__main__":
    sys.exit(main())

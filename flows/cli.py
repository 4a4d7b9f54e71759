"""``semid``: the one console script. Subcommands: run, backfill, sample, inspect, similar."""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Sequence

EXIT_BAD_INPUT = 2
EXIT_RUN_FAILED = 1

QUIET_ENV = {
    "DO_NOT_TRACK": "1",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_AUTH_MODE": "disabled",
    "HF_HUB_OFFLINE": "1",
    "TOKENIZERS_PARALLELISM": "false",
}


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="semid", description="Semantic-ID tokenization of item catalogs (RQ-VAE, Ray, Prefect).")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = sub.add_parser("run", help="run the full flow on a catalog and print the output prefix",
                         description="Ingest → embed → fit → assign → export, as one Prefect flow run.")
    run.add_argument("--catalog", required=True, help="catalog file: .csv .tsv .item .jsonl .json .parquet, local path or s3://")
    run.add_argument("--out", required=True, help="output root, local path or s3://bucket/prefix; the run goes to OUT/NAME/RUN_ID/")
    run.add_argument("--name", help="catalog name used in the output path (default: the catalog file's stem)")
    run.add_argument("--run-id", help="run id used in the output path (default: UTC timestamp, e.g. 20261125T030000Z); re-using an unfinished run id resumes it")
    run.add_argument("--id-column", help="column holding the item id (default: item_id)")
    run.add_argument("--text-columns", help="comma-separated columns joined into the item text (default: title,brand,categories,description when present)")
    run.add_argument("--embedding-column", help="column of precomputed vectors (Parquet list<float> or fixed-size list; JSON arrays in text formats): skips the embed stage; null, NaN/inf and wrong-length vectors are quarantined as bad_embedding")
    run.add_argument("--config", help="JSON file with pipeline settings (sections: ingest, embed, model, fit, assign; plus seed)")
    run.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                     help="override one config field, e.g. --set fit.epochs=20 --set model.codebook_size=128 (repeatable)")
    run.add_argument("--prior-run", help="a published run prefix, or 'latest' for this catalog's newest finished run: reuse its model frozen and keep unchanged items' IDs (stable re-tokenization)")

    run.add_argument("--retrain", action="store_true",
                     help="with --prior-run: fit a new model anyway; every ID moves to the new model's space and changes/ holds the old→new map")

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
    backfill.add_argument("--parallel", type=int, default=2, help="catalogs backfilled at the same time (default 2)")
    backfill.add_argument("--config", help="JSON file with pipeline settings, as for run")
    backfill.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help="override one config field, as for run (repeatable)")

    sample = sub.add_parser("sample", help="write a synthetic product catalog (CSV)", description="Write a realistic synthetic product catalog, deterministic by seed.")
    sample.add_argument("--out", required=True, help="CSV file to write")
    sample.add_argument("--n", type=int, default=3000, help="number of items (default 3000)")
    sample.add_argument("--seed", type=int, default=0, help="random seed (default 0)")

    inspect = sub.add_parser("inspect", help="summarise a finished run", description="Counts, quality headline and a few items per top-level code.")
    inspect.add_argument("prefix", help="a run prefix OUT/NAME/RUN_ID (local or s3://)")
    inspect.add_argument("--codes", type=int, default=3, help="number of top-level codes to show (default 3)")
    inspect.add_argument("--per-code", type=int, default=4, help="items shown per top-level code (default 4)")

    similar = sub.add_parser("similar", help="items most similar to one item by semantic ID", description="Ranked by shared ID prefix, then distance between codeword embeddings.")
    similar.add_argument("prefix", help="a run prefix OUT/NAME/RUN_ID (local or s3://)")
    similar.add_argument("item_id", help="the query item's id")
    similar.add_argument("-k", type=int, default=10, help="number of similar items (default 10)")
    return p


def _cmd_run(args: argparse.Namespace) -> int:
    from tasks.config import load_config

    overrides = list(args.overrides)
    if args.id_column:
        overrides.append(f"ingest.id_column={json.dumps(args.id_column)}")
    if args.embedding_column:
        overrides.append(f"ingest.embedding_column={json.dumps(args.embedding_column)}")
    if args.text_columns:
        overrides.append(f"ingest.text_columns={json.dumps([c.strip() for c in args.text_columns.split(',') if c.strip()])}")
    config = load_config(args.config, overrides)
    from flows.retokenize import check_safe, retokenize

    # Fail fast, before Prefect and Ray start: names that would leave the output prefix, an unusable --out.
    if args.name is not None:
        check_safe("catalog name", args.name)
    if args.run_id is not None:
        check_safe("run id", args.run_id)
    _check_out(args.out)

    result = retokenize(catalog=args.catalog, out=args.out, name=args.name, run_id=args.run_id, config=config, prior_run=args.prior_run, retrain=args.retrain)
    c = result["counts"]
    print(f"semantic IDs: {result['prefix']}  (input {c['input']} = ided {c['ided']} + quarantined {c['quarantined']})")
    return 0


def _cmd_backfill(args: argparse.Namespace) -> int:
    from tasks.config import load_config

    config = load_config(args.config, list(args.overrides))
    from flows.backfill import BackfillFailed, backfill, expand_snapshots, format_summary, plan

    if args.parallel < 1:
        raise ValueError(f"--parallel must be at least 1, got {args.parallel}")
    snapshots = expand_snapshots(args.snapshots)
    plan(snapshots, args.name)  # fail fast, before Prefect and Ray start: undated or duplicate snapshots
    _check_out(args.out)
    try:
        rows = backfill(snapshots=snapshots, out=args.out, name=args.name, config=config, prior_run=args.prior_run, max_parallel=args.parallel)
    except BackfillFailed as e:
        print(format_summary(e.rows))
        print(f"semid: backfill failed: {e}", file=sys.stderr)
        return EXIT_RUN_FAILED
    print(format_summary(rows))
    return 0


class OutputLocationError(ValueError):
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


def _cmd_sample(args: argparse.Namespace) -> int:
    from tasks.sample_catalog import write_sample_catalog

    n = write_sample_catalog(out_path=args.out, n=args.n, seed=args.seed)
    print(f"wrote {n} items to {args.out}")
    return 0


def _cmd_inspect(args: argparse.Namespace) -> int:
    from flows.runs import inspect_run

    print(inspect_run(args.prefix, n_codes=args.codes, per_code=args.per_code))
    return 0


def _cmd_similar(args: argparse.Namespace) -> int:
    from flows.runs import similar_items

    print(similar_items(args.prefix, args.item_id, k=args.k))
    return 0


def _short(value: object, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def main(argv: Sequence[str] | None = None) -> int:
    for key, value in QUIET_ENV.items():
        os.environ.setdefault(key, value)
    args = _parser().parse_args(argv)
    handlers = {"run": _cmd_run, "backfill": _cmd_backfill, "sample": _cmd_sample, "inspect": _cmd_inspect, "similar": _cmd_similar}
    from pydantic import ValidationError

    from tasks.ingest import IngestError

    try:
        return handlers[args.command](args)
    except ValidationError as e:
        lines = [
            f"  {'.'.join(str(p) for p in err['loc']) or 'config'}: {err['msg']} (got {_short(err.get('input'))})"
            for err in e.errors()
        ]
        print("semid: invalid configuration:\n" + "\n".join(lines), file=sys.stderr)
        return EXIT_BAD_INPUT
    except (IngestError, ValueError, FileNotFoundError, PermissionError) as e:
        print(f"semid: {type(e).__name__}: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except (NotADirectoryError, IsADirectoryError, FileExistsError) as e:  # a path given by the user points at the wrong kind of file
        print(f"semid: {type(e).__name__}: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("semid: interrupted; re-run with the same --run-id to resume", file=sys.stderr)
        return 130
    except Exception as e:  # a failed run: one readable line, the traceback is in the Prefect log
        print(f"semid: run failed: {type(e).__name__}: {e}", file=sys.stderr)
        return EXIT_RUN_FAILED


if __name__ == "__main__":
    sys.exit(main())

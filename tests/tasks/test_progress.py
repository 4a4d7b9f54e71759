"""Stage progress: events from the driver and from Ray workers reach the CLI's view as one line per stage."""

import io
import logging

from flows.console import Console, ProgressView
from tasks import progress


def test_worker_marker_lines_round_trip(capsys):
    progress.worker_report("fit", 3, 4, unit="epochs")
    line = capsys.readouterr().out.strip()
    assert progress.parse_worker_line(f"(RayTrainWorker pid=1) {line}") == progress.ProgressEvent(stage="fit", done=3, total=4, unit="epochs")
    assert progress.parse_worker_line("fit epoch 3/4: recon 0.1") is None
    assert progress.parse_worker_line(progress.WORKER_MARKER + "{not json") is None


def test_view_prints_one_line_per_finished_stage_with_the_live_unit():
    err = io.StringIO()  # not a terminal: no live bars, one line when a stage finishes
    with ProgressView(Console(out=io.StringIO(), err=err)):
        progress.report("embed", 128, 300)
        progress.report("embed", 300, 300)
        progress.finished("embed", done=300, seconds=2.0, note="embedded 300")
        for epoch in (1, 2):
            progress.report("fit", epoch, 2, unit="epochs")
        progress.finished("fit", done=300, seconds=4.0, note="items 300")
        progress.report("fit", 2, 2, unit="epochs")  # forwarded late by Ray: ignored
    lines = err.getvalue().splitlines()
    assert len(lines) == 2
    assert lines[0].split()[:5] == ["embed", "300", "items", "2.0s", "150"] and lines[0].endswith("embedded 300")
    assert lines[1].split()[:5] == ["fit", "2", "epochs", "4.0s", "0.50"]
    assert not [h for h in logging.getLogger(progress.LOGGER_NAME).handlers if isinstance(h, ProgressView)], "the view detaches on exit"


def test_stage_done_counts_epochs_for_fit_and_items_otherwise():
    from tasks.manifest import FitResult, IngestResult

    err = io.StringIO()
    fit = FitResult(model="m", model_hash="h", items=300, epochs_run=30, seconds=8.0)
    ingest = IngestResult(items="i", quarantine="q", input=10, valid=9, quarantined=1, catalog_uri="c", catalog_sha256="s", columns=[],
                          id_column="item_id", text_columns=[], format="csv", quarantine_reasons={}, text_hash="sha256", resumed=True)
    with ProgressView(Console(out=io.StringIO(), err=err)):
        progress.report("fit", 29, 30, unit="epochs")  # the last epoch's line not forwarded yet
        progress.stage_done(fit)
        progress.stage_done(ingest)
    fit_line, ingest_line = err.getvalue().splitlines()
    assert fit_line.split()[:4] == ["fit", "30", "epochs", "8.0s"]
    assert ingest_line.split()[:4] == ["ingest", "10", "items", "0.0s"] and "resumed (input 10, valid 9, quarantined 1, partitions 1)" in ingest_line


def test_quiet_view_prints_nothing_and_reporting_without_a_view_is_silent(capsys):
    err = io.StringIO()
    with ProgressView(Console(out=io.StringIO(), err=err, quiet=True)):
        progress.finished("ingest", done=3, seconds=0.1)
    progress.report("embed", 1, 2)  # nobody listens: dropped
    assert err.getvalue() == "" and capsys.readouterr() == ("", "")

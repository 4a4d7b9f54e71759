"""Backfill planning, run-time ``${VAR}`` parameters and run ids from schedule slots (no Ray; the ephemeral Prefect API)."""

from __future__ import annotations

import datetime as dt

import pytest

from flows.backfill import SnapshotError, expand_snapshots, parse_snapshot, plan
from flows.ops import UnsetVariable, artifact_key, expand_env


@pytest.mark.parametrize(
    "uri, catalog, run_id",
    [
        ("s3://bucket/snapshots/beauty/2026-10-01.parquet", "beauty", "2026-10-01"),
        ("snapshots/beauty-20261002.csv", "beauty", "2026-10-02"),
        ("snapshots/beauty_2026-10-03T030000Z.jsonl", "beauty", "2026-10-03T030000Z"),
        ("books_2026_10_01.csv", "books", "2026-10-01"),
        ("x/2024/books-v2-2026-10-05.tsv", "books-v2", "2026-10-05"),
    ],
)
def test_snapshot_name_date_and_run_id_come_from_the_file_name(uri, catalog, run_id):
    s = parse_snapshot(uri)
    assert (s.catalog, s.run_id) == (catalog, run_id)


@pytest.mark.parametrize("uri", ["snapshots/beauty.parquet", "snapshots/beauty-2026-13-01.csv", "beauty-v3.csv"])
def test_a_snapshot_without_a_valid_date_is_a_clear_error(uri):
    with pytest.raises(SnapshotError, match="date"):
        parse_snapshot(uri)


def test_plan_groups_by_catalog_in_date_order_and_refuses_two_snapshots_of_one_date():
    groups = plan(["b/books-2026-10-02.csv", "a/beauty-2026-10-03.csv", "a/beauty-2026-09-30.csv", "b/books-2026-10-01.csv", "a/beauty-2026-10-01T120000Z.csv"])
    assert {c: [s.run_id for s in g] for c, g in groups.items()} == {
        "beauty": ["2026-09-30", "2026-10-01T120000Z", "2026-10-03"],
        "books": ["2026-10-01", "2026-10-02"],
    }
    assert [s.catalog for s in plan(["x/a-2026-01-02.csv", "y/b-2026-01-01.csv"], name="shop")["shop"]] == ["shop", "shop"]
    with pytest.raises(SnapshotError, match="both dated 2026-10-01"):
        plan(["a/beauty-2026-10-01.csv", "b/beauty_20261001.parquet"])


def test_expand_snapshots_globs_and_fails_on_a_pattern_that_matches_nothing(tmp_path):
    for name in ("shop-2026-01-02.csv", "shop-2026-01-01.csv", "other.txt"):
        (tmp_path / name).write_text("item_id\n")
    assert expand_snapshots([str(tmp_path / "shop-*.csv")]) == [str(tmp_path / "shop-2026-01-01.csv"), str(tmp_path / "shop-2026-01-02.csv")]
    with pytest.raises(SnapshotError, match="matches no file"):
        expand_snapshots([str(tmp_path / "none-*.csv")])


def test_cli_backfill_refuses_an_undated_snapshot_before_starting_anything(tmp_path, capsys):
    from flows.cli import main

    (tmp_path / "shop.csv").write_text("item_id,title\n1,a\n")
    code = main(["backfill", "--snapshots", str(tmp_path / "shop.csv"), "--out", str(tmp_path / "out")])
    assert code == 2
    assert "has no date in its file name" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_env_references_are_read_at_run_time_and_an_unset_one_is_named(monkeypatch):
    monkeypatch.setenv("SEMID_TEST_ROOT", "s3://bucket/catalogs")
    assert expand_env("${SEMID_TEST_ROOT}/beauty/latest.parquet", "catalog") == "s3://bucket/catalogs/beauty/latest.parquet"
    assert expand_env("plain/path.csv", "catalog") == "plain/path.csv"
    monkeypatch.delenv("SEMID_TEST_ROOT")
    with pytest.raises(UnsetVariable, match=r"\$\{SEMID_TEST_ROOT\}"):
        expand_env("${SEMID_TEST_ROOT}/beauty/latest.parquet", "catalog")


def test_artifact_keys_are_valid_prefect_keys():
    assert artifact_key("Beauty_EU.v2") == "semid-beauty-eu-v2"


def test_run_id_and_run_name_come_from_the_flow_runs_scheduled_start_time():
    """A flow run created for a schedule slot is named and identified by that slot (what a retry keeps)."""
    from prefect import flow
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.objects import FlowRun
    from prefect.states import Scheduled

    from flows.ops import run_name, slot_run_id

    @flow(flow_run_name=lambda: run_name(lambda c: "fallback"))
    def probe(catalog: str, name: str | None = None) -> str:
        return slot_run_id()

    slot = dt.datetime(2026, 11, 30, 3, 0, tzinfo=dt.timezone.utc)
    with get_client(sync_client=True) as client:
        created: FlowRun = client.create_flow_run(probe, parameters={"catalog": "x.csv", "name": "shop"}, state=Scheduled(scheduled_time=slot))
    from prefect.flow_engine import run_flow_sync

    assert run_flow_sync(probe, flow_run=created, parameters={"catalog": "x.csv", "name": "shop"}) == "20261130T030000Z"
    with get_client(sync_client=True) as client:
        assert client.read_flow_run(created.id).name == "shop/20261130T030000Z"

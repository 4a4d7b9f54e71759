"""The one stage runner: resume on a matching record, rebuild on anything else, record last."""

import json

import pytest

from tasks.manifest import STAGE_RECORD, FitResult, completed, run_stage


def _build(calls: list[int], model: str = "m"):
    def build() -> FitResult:
        calls.append(1)
        return FitResult(model=model, model_hash="h")
    return build


def test_resume_rebuild_and_record(tmp_path):
    work, calls = str(tmp_path), []
    first = run_stage(work_uri=work, result_type=FitResult, input_hash="a", build=_build(calls))
    assert not first.resumed and first.input_hash == "a" and calls == [1]
    record = json.loads((tmp_path / "fit" / STAGE_RECORD).read_text())
    assert record["model"] == "m" and "resumed" not in record
    again = run_stage(work_uri=work, result_type=FitResult, input_hash="a", build=_build(calls))
    assert again.resumed and again.model == "m" and calls == [1]
    other = run_stage(work_uri=work, result_type=FitResult, input_hash="b", build=_build(calls, "n"))
    assert not other.resumed and other.model == "n" and calls == [1, 1]
    (tmp_path / "fit" / STAGE_RECORD).write_text(json.dumps({"input_hash": "b", "outputs": {}}))  # an older record schema
    assert completed(work, FitResult, "b") is None


def test_a_failed_build_leaves_no_record(tmp_path):
    run_stage(work_uri=str(tmp_path), result_type=FitResult, input_hash="a", build=_build([]))

    def broken() -> FitResult:
        raise OSError("disk full")

    with pytest.raises(OSError):
        run_stage(work_uri=str(tmp_path), result_type=FitResult, input_hash="b", build=broken)
    assert not (tmp_path / "fit" / STAGE_RECORD).exists()

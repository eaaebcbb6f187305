"""`bench early` (issue 25): a new task's first items judged against the fixed thresholds,
on a real stream with its recorded large-LM answers and the bench's own small models."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from bench.early import EarlyArgs, early_bench
from bench.early_checks import fixed_share_at, run_checks


def test_fixed_share_at_reads_the_frontier_of_mixed_thresholds() -> None:
    points = [(0.13, 0.80), (0.25, 0.82), (0.42, 0.80), (1.0, 0.84)]
    assert fixed_share_at(points, 0.79) == pytest.approx(0.13)  # a point reaches it alone
    assert fixed_share_at(points, 0.82) == pytest.approx(0.25)
    # 0.83 lies between 0.82 at 25% and 0.84 at 100%: half of each, 62.5%
    assert fixed_share_at(points, 0.83) == pytest.approx(0.625)
    # 0.81 is cheaper mixing 0.80 at 13% with 0.82 at 25% than reaching it any other way
    assert fixed_share_at(points, 0.81) == pytest.approx(0.19)
    assert fixed_share_at(points, 0.85) is None  # no mix reaches it


def _run(acc: float, share: float, start: int | None) -> dict:
    return {"early": {"300": {"accuracy": acc, "llm_share": share}}, "saving_positive_from": start}


def test_run_checks_apply_the_three_targets() -> None:
    llm = _run(0.82, 1.0, None)
    fixed = [_run(0.80, 0.13, 1), _run(0.82, 0.25, 1)]
    ok = run_checks(_run(0.815, 0.22, 120), llm, fixed)
    assert ok["ok"] and ok["fixed_share_at_accuracy"] == pytest.approx(0.22)
    assert not run_checks(_run(0.80, 0.10, 120), llm, fixed)["accuracy_ok"]  # 2 points under
    assert not run_checks(_run(0.82, 0.31, 120), llm, fixed)["share_ok"]  # 6 points above
    assert not run_checks(_run(0.82, 0.25, 151), llm, fixed)["saving_ok"]  # too late
    assert not run_checks(_run(0.82, 0.25, None), llm, fixed)["saving_ok"]  # never
    # above every fixed mix (the large LM alone included): no fixed threshold matches it
    above = run_checks(_run(0.83, 0.6, 100), llm, fixed)
    assert above["fixed_share_at_accuracy"] is None and above["share_ok"]


@pytest.mark.slow  # 300 items, learned and fixed, on the bench's models
def test_early_bench_runs_a_stream_and_judges_it(tmp_path: Path) -> None:
    out = tmp_path / "early.json"
    args = EarlyArgs(
        streams=("rotten-tomatoes",),
        orders=(0,),
        limit=300,
        target_agreement=(0.9,),
        thresholds=(0.7, 1.0),
        out=out,
        write_doc=False,
    )
    payload = asyncio.run(early_bench(args))
    assert json.loads(out.read_text()) == payload
    learned = [c for c in payload["cells"] if "checks" in c]
    base = [c for c in payload["cells"] if "fixed" in c]
    assert len(learned) == 1 and len(base) == 1
    run, checks = learned[0]["run"], learned[0]["checks"]
    assert learned[0]["system"] == "config target 0.9"
    assert len(run["cumulative_saved"]) == 300
    assert checks["llm_share"] == run["early"]["300"]["llm_share"]
    assert 0.0 < checks["llm_share"] < 1.0  # it learned to answer some items itself
    assert checks["llm_accuracy"] == base[0]["llm_only"]["early"]["300"]["accuracy"]
    # threshold 1.0 answers nothing itself: every item reaches the large LM
    never = next(f for f in base[0]["fixed"] if f["threshold"] == 1.0)
    assert never["early"]["300"]["llm_share"] == 1.0
    assert payload["summary"]["config target 0.9"]["runs"] == 1

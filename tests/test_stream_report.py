"""`bench stream-report`: one docs section from several `bench stream --out` runs."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

import bench.report
from bench.stream_report import targets, write_combined_report, write_stream_report


def _row(system: str, accuracy: float, share: float, **knob: float) -> dict[str, Any]:
    return {
        "system": system,
        **knob,
        "accuracy": accuracy,
        "agreement": 0.9,
        "llm_share": share,
        "cost": share * 100,
        "cost_ratio": share,
        "wall_ratio": share + 0.5,
        "answered_by": {"large": share, "small": 1 - share},
        "degraded": 0,
        "errors": 0,
    }


def _payload(runs: list[dict[str, Any]], stream: str = "rotten-tomatoes") -> dict[str, Any]:
    return {
        "stream": stream,
        "items": 100,
        "labels": ["positive", "negative"],
        "seed": 42,
        "seconds_per_call": {"small": 0.5, "large": 0.6},
        "large_level": "large",
        "distill_n": 10,
        "runs": [_row("llm_only", 0.84, 1.0), *runs],
    }


@pytest.fixture
def doc(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setattr(bench.report, "DOC", tmp_path / "docs" / "BENCHMARKS.md")
    monkeypatch.setattr(bench.report, "PLOTS", tmp_path / "docs" / "plots")
    return tmp_path / "docs" / "BENCHMARKS.md"


def test_combines_variant_runs_beside_baselines(tmp_path: Path, doc: Path) -> None:
    base = tmp_path / "base.json"
    base.write_text(json.dumps(_payload([_row("threshold", 0.80, 0.11, threshold=0.6)])))
    files = []
    for target, acc, share in ((0.92, 0.83, 0.25), (0.85, 0.81, 0.09)):
        files.append(tmp_path / f"icl-{target}.json")
        files[-1].write_text(
            json.dumps(
                _payload(
                    [
                        {
                            **_row("cascade", acc, share, target_agreement=target),
                            "share_by_tenth": [0.9, *[share] * 8, share - 0.05],
                        }
                    ]
                )
            )
        )
    payload = write_combined_report(files, base, "icl", "bench/configs/x.yaml")

    systems = [(r["system"], r["llm_share"]) for r in payload["runs"]]
    # the baselines' rows first, then the variant's, by share
    assert systems == [
        ("llm_only", 1.0),
        ("threshold", 0.11),
        ("cascade+icl", 0.09),
        ("cascade+icl", 0.25),
    ]
    text = doc.read_text()
    assert "<!-- bench:stream:rotten-tomatoes:icl -->" in text
    assert "--config bench/configs/x.yaml" in text and "--target-agreement 0.92" in text
    # the share in the last tenth of the stream: where a learning cascade has got to
    assert "| cascade+icl | target_agreement=0.85 | 0.81 | 0.9 | 0.09 | 0.04 |" in text
    assert "| threshold | threshold=0.6 | 0.8 | 0.9 | 0.11 | - |" in text
    assert (doc.parent / "plots" / "stream-rotten-tomatoes-icl.png").stat().st_size > 0
    assert "icl-0.92.json: small 0.500, large 0.600" in text


def test_the_commands_name_the_order_and_an_untimed_run(tmp_path: Path, doc: Path) -> None:
    """The section's commands are the ones that wrote the JSON: another order's seed, and
    --no-timing where the run measured no seconds per call (said so, not left blank)."""
    run = tmp_path / "warm.json"
    payload = _payload([_row("cascade", 0.82, 0.25, target_agreement=0.9)])
    run.write_text(json.dumps({**payload, "order_seed": 3, "seconds_per_call": {}}))
    write_combined_report([run], None, "warm", None)
    text = doc.read_text()
    assert "--seed 42 --order-seed 3 --thresholds" in text
    assert "--no-doc --no-timing --out" in text
    assert "warm.json: not timed (--no-timing)" in text


def test_a_sweep_section_names_its_order_and_an_untimed_run(doc: Path) -> None:
    """`bench stream` without --no-doc writes its own section: the same flags, so a run in
    another order or without timings can be reproduced from the doc."""
    payload = _payload([_row("cascade", 0.82, 0.25, target_agreement=0.9)])
    payload.update(order_seed=2, seconds_per_call={})
    args = SimpleNamespace(file=None, config=None, thresholds=(), mu=(), target_agreement=(0.9,))
    write_stream_report(payload, args)
    text = doc.read_text()
    assert "--seed 42 --order-seed 2 --no-timing --thresholds ''" in text
    assert "(seconds per call: not timed (--no-timing))" in text


def test_refuses_results_of_another_stream(tmp_path: Path, doc: Path) -> None:
    base = tmp_path / "base.json"
    base.write_text(json.dumps(_payload([])))
    other = tmp_path / "trec.json"
    other.write_text(json.dumps(_payload([], stream="trec")))
    with pytest.raises(ValueError, match="same stream"):
        write_combined_report([other], base, "icl", None)
    assert not doc.exists()


def _bar_row(system: str, acc: float, share: float, **knob: float) -> dict[str, Any]:
    return {"system": system, "accuracy": acc, "llm_share": share, **knob}


def test_targets_read_the_bars_off_the_rows() -> None:
    rows = [
        _bar_row("llm_only", 0.84, 1.0),
        _bar_row("threshold", 0.80, 0.11, threshold=0.6),
        _bar_row("cascade", 0.82, 0.12, target_agreement=0.85),
        _bar_row("cascade", 0.832, 0.29, target_agreement=0.9),
        _bar_row("cascade", 0.839, 0.31, target_agreement=0.95),  # over 30%: not counted
    ]
    line = targets(rows)
    assert "83.20% at 29.0%" in line and "bar of 83.00%" in line and "met" in line
    assert "cascade 82.0% at 12.0%" in line and "threshold 80.0% at 11.0%" in line
    rows[3] = _bar_row("cascade", 0.825, 0.29, target_agreement=0.9)
    assert "missed by 0.50%" in targets(rows)
    assert targets([_bar_row("threshold", 0.8, 0.1)]) == ""
    assert "Second half" not in targets(rows)  # no per-tenth figures: no second-half line


def test_targets_also_read_the_second_half_of_the_stream() -> None:
    llm = {**_bar_row("llm_only", 0.84, 1.0), "share_by_tenth": [1.0] * 10}
    llm["accuracy_by_tenth"] = [0.84] * 5 + [0.86] * 5
    ours = _bar_row("cascade", 0.82, 0.35, target_agreement=0.9)
    ours["share_by_tenth"] = [0.8, 0.5, 0.4, 0.3, 0.3, 0.2, 0.2, 0.25, 0.25, 0.3]
    ours["accuracy_by_tenth"] = [0.8] * 5 + [0.85] * 5
    line = targets([llm, ours])
    assert "large LM alone 86.00% there" in line
    assert "cascade 0.9: 85.00% at 24.0%" in line
    assert "best within 30% share 85.00% against 85.00%" in line


def test_tables_write_counts_with_thousands_separators_and_fractions_short() -> None:
    """Item counts and break-even items read as numbers (5,000, not 5000); a flag stays a
    word; a missing figure is a dash."""
    table = bench.report.md_table(["n", "f", "ok", "gap"], [[5000, 0.8312345, True, None]])
    assert table.splitlines()[2] == "| 5,000 | 0.8312 | True | - |"

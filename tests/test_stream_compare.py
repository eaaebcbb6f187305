"""`bench stream-compare`: a change judged on several orders of a stream, by the mean of
after-minus-before accuracy read at the same large-LM shares."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

import bench.report
from bench.cli import main
from bench.stream_compare import compare, read_at


def _run(path: Path, order: int | None, curve: list[tuple[float, float]]) -> Path:
    """A `bench stream --out` result with cascade rows at (share, accuracy) and a baseline
    row the comparison must ignore."""
    runs: list[dict[str, Any]] = [{"system": "llm_only", "accuracy": 0.9, "llm_share": 1.0}]
    runs += [
        {"system": "cascade", "target_agreement": 0.8 + i / 100, "accuracy": a, "llm_share": s}
        for i, (s, a) in enumerate(curve)
    ]
    runs.append({"system": "threshold", "threshold": 0.6, "accuracy": 0.1, "llm_share": 0.2})
    path.write_text(json.dumps({"stream": "rt", "order_seed": order, "runs": runs}))
    return path


@pytest.fixture
def doc(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setattr(bench.report, "DOC", tmp_path / "docs" / "BENCHMARKS.md")
    monkeypatch.setattr(bench.report, "PLOTS", tmp_path / "docs" / "plots")
    return tmp_path / "docs" / "BENCHMARKS.md"


def test_curves_are_read_between_their_runs_and_not_past_them() -> None:
    import numpy as np

    share, acc = np.array([0.1, 0.3]), np.array([0.80, 0.84])
    assert read_at(share, acc, 0.2) == pytest.approx(0.82)
    assert read_at(share, acc, 0.1) == pytest.approx(0.80)
    assert read_at(share, acc, 0.05) is None and read_at(share, acc, 0.31) is None


def test_the_mean_over_orders_is_what_moves(tmp_path: Path) -> None:
    # order 1: the new curve is 1 point higher everywhere; order 2: 0.5 point lower from 15%
    # and it never reaches 10%; the mean at 10% has order 1 alone
    pairs = [
        (
            _run(tmp_path / "b1.json", 1, [(0.1, 0.80), (0.2, 0.82), (0.4, 0.84)]),
            _run(tmp_path / "a1.json", 1, [(0.1, 0.81), (0.2, 0.83), (0.4, 0.85)]),
        ),
        (
            _run(tmp_path / "b2.json", 2, [(0.12, 0.80), (0.4, 0.84)]),
            _run(tmp_path / "a2.json", 2, [(0.12, 0.795), (0.4, 0.835)]),
        ),
    ]
    out = compare(pairs, shares=(0.10, 0.15, 0.30))
    one, two = (o["diff_points"] for o in out["orders"])
    assert one == {k: pytest.approx(1.0) for k in ("0.10", "0.15", "0.30")}
    assert two["0.10"] is None and two["0.15"] == pytest.approx(-0.5)
    assert out["mean_points"] == {
        "0.10": pytest.approx(1.0),
        "0.15": pytest.approx(0.25),
        "0.30": pytest.approx(0.25),
    }
    assert out["orders_at"] == {"0.10": 1, "0.15": 2, "0.30": 2}


def test_different_orders_are_refused(tmp_path: Path) -> None:
    b = _run(tmp_path / "b.json", 1, [(0.1, 0.8), (0.3, 0.84)])
    a = _run(tmp_path / "a.json", 2, [(0.1, 0.8), (0.3, 0.84)])
    with pytest.raises(ValueError, match="different orders"):
        compare([(b, a)])


def test_the_command_writes_json_docs_and_plot(tmp_path: Path, doc: Path) -> None:
    b = _run(tmp_path / "b.json", None, [(0.1, 0.80), (0.4, 0.84)])
    a = _run(tmp_path / "a.json", None, [(0.1, 0.79), (0.4, 0.83)])
    out = tmp_path / "cmp.json"
    argv = ["stream-compare", "--name", "t", "--before", str(b), "--after", str(a)]
    assert main([*argv, "--out", str(out), "--what", "A test change."]) == 0
    result = json.loads(out.read_text())
    assert result["orders"][0]["order"] == "committed"
    assert result["mean_points"]["0.20"] == pytest.approx(-1.0)
    assert result["mean_within_tolerance"]["0.20"] is False  # 1 point is past 0.3
    text = doc.read_text()
    assert "<!-- bench:compare:t -->" in text and "A test change." in text
    assert "20%: no" in text and (doc.parent / "plots" / "t.png").stat().st_size > 0
    with pytest.raises(SystemExit, match="one file per order"):
        main([*argv, str(a), "--out", str(out)])

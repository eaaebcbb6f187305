"""bench.lean_sim: the fast replay of the lean cascade learns, defers and fits as the harness."""

from __future__ import annotations

import numpy as np
import pytest

from bench.lean_doc import _source, disagreement
from bench.lean_sim import Arrays, Knobs, frontier, replay, summarise


def _stream(n: int = 1200, seed: int = 0) -> Arrays:
    """A stream the probe can learn: the hidden state carries the large LM's label, the small
    LM's zero-shot answer is a weak guess (right 60% of the time at confidence 0.6)."""
    rng = np.random.default_rng(seed)
    truth = rng.integers(0, 2, n)
    large = np.where(rng.random(n) < 0.9, truth, 1 - truth)
    hidden = rng.normal(size=(n, 8)).astype(np.float32)
    hidden[:, 0] += 3.0 * (2 * large - 1)
    guess = np.where(rng.random(n) < 0.6, large, 1 - large)
    zero_shot = np.where(guess[:, None] == np.arange(2), 0.6, 0.4)
    x = np.concatenate([hidden, np.log(zero_shot)], axis=1).astype(np.float32)
    large_probs = np.where(large[:, None] == np.arange(2), 0.9, 0.1)
    return Arrays(x, zero_shot, np.ones(n, bool), large, truth, large_probs)


def test_the_cascade_learns_to_answer_and_keeps_its_agreement() -> None:
    a = _stream()
    r = replay(a, 0.9, Knobs())
    assert r["llm_share_second_half"] < 0.5 * r["llm_share"]
    assert r["agreement"] >= 0.9
    assert r["llm_share"] < 0.5


def test_a_target_of_one_sends_everything_to_the_large_lm() -> None:
    a = _stream(400)
    r = replay(a, 1.0, Knobs())
    assert r["llm_share"] == 1.0
    assert r["accuracy"] == pytest.approx(float((a.large == a.truth).mean()))


def test_a_fusing_cascade_serves_the_product_of_the_two_distributions() -> None:
    a = _stream(400)
    a.large_probs[:200] = np.where(a.large[:200, None] == np.arange(2), 0.55, 0.45)
    fused = a.fused()
    # a large LM sure at 0.9 is never overruled by a zero-shot 0.6; at 0.55 it always is
    assert (fused[200:] == a.large[200:]).all()
    assert (fused[:200] == a.zero_shot[:200].argmax(axis=1)).all()
    assert (fused[:200] != a.large[:200]).any()
    r = replay(a, 1.0, Knobs(fuse=True))  # everything reaches the top
    assert r["accuracy"] == pytest.approx(float((fused == a.truth).mean()))
    assert r["agreement"] == pytest.approx(float((fused == a.large).mean()))
    assert r["accuracy"] != replay(a, 1.0, Knobs())["accuracy"]
    a.valid[0], a.large[1] = False, -1  # no zero-shot answer; no large-LM answer
    assert a.fused()[0] == a.large[0] and a.fused()[1] == -1


def test_invalid_answers_always_reach_the_large_lm() -> None:
    a = _stream(600)
    a.valid[:] = False
    r = replay(a, 0.5, Knobs())
    assert r["llm_share"] == 1.0 and r["agreement"] == 1.0


@pytest.mark.slow  # five full replays of the simulated stream
def test_exploration_seeds_give_different_draws_of_the_same_run() -> None:
    a = _stream()
    runs = {replay(a, 0.9, Knobs(), seed=s)["llm_share"] for s in range(3)}
    assert len(runs) > 1
    assert replay(a, 0.9, Knobs(), seed=0) == replay(a, 0.9, Knobs(), seed=0)


def test_frontier_is_the_line_through_the_points_in_the_band() -> None:
    pts = [(s, 0.8 + 0.1 * s) for s in (0.2, 0.25, 0.35, 0.4, 0.1, 0.6)]
    assert frontier(pts, 0.3) == pytest.approx(0.83)
    assert frontier([(0.2, 0.8), (0.3, 0.81), (0.5, 0.9)], 0.3) is None  # two in the band


def test_summarise_reads_each_order_and_its_second_half_off_its_own_points() -> None:
    def point(order: str, share: float, late_gain: float) -> dict[str, object]:
        return {
            "order": order,
            "llm_share": share,
            "accuracy": 0.8 + 0.1 * share,
            "llm_share_second_half": share,
            "accuracy_second_half": 0.8 + 0.1 * share + late_gain,
            "llm_accuracy_second_half": 0.85 if order == "seeded" else 0.84,
        }

    pts = [point("seeded", s, 0.01) for s in (0.2, 0.3, 0.4)]
    pts += [point("1", s, 0.02) for s in (0.2, 0.25, 0.35)]
    out = summarise(pts)
    assert list(out) == ["seeded", "1"]
    assert out["seeded"]["accuracy_at_30"] == pytest.approx(0.83)
    assert out["seeded"]["second_half_accuracy_at_30"] == pytest.approx(0.84)
    assert out["1"]["second_half_accuracy_at_30"] == pytest.approx(0.85)
    assert out["1"]["second_half_llm_accuracy"] == 0.84


def test_replay_reports_the_large_lms_own_accuracy_on_the_second_half() -> None:
    a = _stream(600)
    r = replay(a, 0.9, Knobs())
    assert r["llm_accuracy_second_half"] == pytest.approx(
        float((a.large[300:] == a.truth[300:]).mean())
    )


def test_disagreement_counts_who_is_right_where_the_two_answers_differ() -> None:
    # items: (zero-shot small, large, truth); the small LM answers item 5 outside the label set
    # and the large LM fails on item 6: neither counts
    small = np.array([0, 0, 0, 1, 1, 0, 1, 1])
    large = np.array([1, 1, 0, 0, 1, 1, -1, 1])
    truth = np.array([1, 0, 0, 1, 1, 1, 0, 0])
    zero_shot = np.where(small[:, None] == np.arange(2), 0.7, 0.3)
    valid = np.ones(8, bool)
    valid[5] = False
    a = Arrays(np.zeros((8, 3), np.float32), zero_shot, valid, large, truth, zero_shot)
    d = disagreement(a, ["pos", "neg"])
    assert d["items"] == 6
    by = {(p["small"], p["large"]): p for p in d["pairs"]}
    assert set(by) == {("pos", "neg"), ("neg", "pos"), ("any", "any other")}
    assert by[("pos", "neg")]["items"] == 2 and by[("pos", "neg")]["large_right"] == 0.5
    assert by[("neg", "pos")]["items"] == 1 and by[("neg", "pos")]["small_right"] == 1.0
    every = by[("any", "any other")]
    assert every["items"] == 3
    assert every["large_right"] == pytest.approx(1 / 3)
    assert every["small_right"] == pytest.approx(2 / 3)
    shares = {s["label"]: s for s in d["shares"]}
    assert shares["pos"]["truth"] == pytest.approx(3 / 6)
    assert shares["pos"]["large"] == pytest.approx(2 / 6)
    assert shares["pos"]["small"] == pytest.approx(3 / 6)


def test_a_re_rendered_section_names_the_sweep_its_points_came_from() -> None:
    sweep = "python -m bench.lean_sim --limit 8000 --out f.json"
    assert _source({"command": sweep}, sweep) == ""  # written by the sweep itself
    again = "python -m bench.lean_sim --from f.json"
    assert f"sweep of `{sweep}` saved" in _source({"command": sweep}, again)
    assert _source({"command": None}, again) == ", from the points that the sweep saved"

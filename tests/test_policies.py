"""Deferral policies on their own (no model, no store): static thresholds, the agreement-target
operating point and its parameters (learned ones: tests/test_policies_learned.py)."""

from __future__ import annotations

import copy
from collections.abc import Callable

import numpy as np
import pytest

from cascade.stats import wilson
from policies import (
    Features,
    Policy,
    PolicyError,
    ThresholdPolicy,
    make_policy,
)
from policies.explore import TARGET_FLOOR
from policies.ocl import OCLPolicy
from policies.operating import OperatingPoint, wilson_lower


def conf(c: float) -> Features:
    return Features(confidence=c)


def probs(*p: float) -> Features:
    a = np.array(p, dtype=np.float64)
    return Features(confidence=float(a.max()), probs=a)


# ------------------------------------------------------------------ threshold, static


def test_static_threshold_decisions() -> None:
    p = ThresholdPolicy(threshold=0.8)
    for c, defer in [(0.95, False), (0.8, False), (0.79, True), (0.1, True)]:
        d = p.decide(conf(c))
        assert d.defer is defer, c
        assert d.score == pytest.approx(1.0 - c)
    assert p.explore_probability == 0.0  # a static rule never explores
    assert p.params()["threshold"] == 0.8
    assert p.report() == {}
    p.set_params(threshold=0.5)
    assert p.decide(conf(0.6)).defer is False


# ------------------------------------------------------------------ threshold, agreement target

GRID = np.linspace(0.5, 1.0, 51)  # confidences of the explored items, and of later queries


def answer_share(p: ThresholdPolicy) -> float:
    return float(np.mean([not p.decide(conf(c)).defer for c in GRID]))


def fed(target: float, agrees: Callable[[float], bool], rounds: int = 2) -> ThresholdPolicy:
    p = ThresholdPolicy(target_agreement=target)
    for _ in range(rounds):
        for c in GRID:
            p.update(conf(c), wrong=not agrees(c), explored=True)
    return p


def test_operating_point_needs_explored_samples() -> None:
    p = ThresholdPolicy(target_agreement=0.9)
    assert answer_share(p) == 0.0  # nothing known yet: answer nothing
    for _ in range(29):
        p.update(conf(0.99), wrong=False, explored=True)
    assert answer_share(p) == 0.0  # 29 samples: still below the minimum of 30
    for c in GRID:
        p.update(conf(c), wrong=False, explored=False)  # not a uniform sample: no evidence
    assert answer_share(p) == 0.0
    assert p.explorer.seen == 29 + len(GRID)  # ... but they count for exploration's decay
    p.update(conf(0.99), wrong=False, explored=True)
    assert answer_share(p) > 0.0


def test_a_prior_answers_the_confident_items_before_any_sample() -> None:
    """issue 25: with ``prior`` the level's own confidence stands in for explored samples, so
    a new task's level answers its surest items at once; its own samples then take over."""
    p = ThresholdPolicy(target_agreement=0.9, prior=10)
    assert not p.cannot_answer
    assert not p.decide(conf(0.99)).defer  # sure enough by its own account
    assert p.decide(conf(0.8)).defer  # a prior of 0.8 cannot show 0.9
    cut = p.operating_threshold
    assert 0.9 < cut < 1.0
    for _ in range(3):  # the level turns out to disagree where it is surest
        for c in GRID:
            p.update(conf(c), wrong=c > 0.9, explored=True)
    assert p.decide(conf(0.99)).defer  # the samples outweigh the prior
    q = ThresholdPolicy(target_agreement=0.9, prior=10)
    for _ in range(3):  # and where it agrees everywhere, it answers more than the prior did
        for c in GRID:
            q.update(conf(c), wrong=False, explored=True)
    assert q.operating_threshold < cut and not q.decide(conf(0.6)).defer


def test_explore_need_stops_exploring_once_the_estimate_has_its_samples() -> None:
    """issue 25: exploration sized by what the estimate still needs, not by a fixed decay."""
    p = ThresholdPolicy(target_agreement=0.9, explore_need=20)
    # a level that has not decided on any item yet (a head not ready) has nothing to learn
    # from exploring: it asks for the floor only, not for every request of a new task
    assert p.explore_probability == TARGET_FLOOR
    p.explorer.decided()
    assert p.explore_probability == 1.0
    for _ in range(10):
        p.update(conf(0.95), wrong=False, explored=True)
    assert p.explore_probability == pytest.approx(0.5)
    for _ in range(10):
        p.update(conf(0.95), wrong=False, explored=True)
    assert p.explore_probability == TARGET_FLOOR
    decayed = ThresholdPolicy(target_agreement=0.9)  # the default: beta^k in items decided
    for _ in range(20):
        decayed.update(conf(0.95), wrong=False, explored=True)
    assert decayed.explore_probability == pytest.approx(0.99**20)


def test_a_level_that_plainly_cannot_pay_runs_on_its_learning_sample_only() -> None:
    """issue 25: a small LM costing 0.46 of a large call saves only where it answers more than
    46% of its traffic. While young it runs on everything (its bound is wide: it may pay, and
    learns sooner); once even the upper bound of its agreement answers less, it runs on its
    learning sample only; one that agrees keeps running while it gathers its samples."""

    def policy() -> ThresholdPolicy:
        return ThresholdPolicy(target_agreement=0.9, min_answer_share=0.46, learn_share=0.25)

    bad, good = policy(), policy()
    assert bad.cannot_answer and not bad.sample_only  # nothing known: it may pay
    for _ in range(12):
        bad.update(conf(0.7), wrong=True, explored=True)
        good.update(conf(0.95), wrong=False, explored=True)
    assert bad.cannot_answer and bad.sample_only  # plainly below the target
    assert good.cannot_answer and not good.sample_only  # young, but it may answer all
    assert bad.op is not None and bad.op.hoped_share == 0.0
    assert good.op is not None and good.op.hoped_share == 1.0
    # the serving process adopts it with the version
    served = policy()
    served.load_state(bad.state())
    assert served.sample_only
    # without min_answer_share a level is never held back (the default)
    plain = ThresholdPolicy(target_agreement=0.9)
    for _ in range(12):
        plain.update(conf(0.7), wrong=True, explored=True)
    assert plain.cannot_answer and not plain.sample_only


def test_a_generative_level_that_plainly_cannot_pay_idles_on_a_smaller_sample() -> None:
    """A chat small LM costing 0.62 of a large call that cannot meet the target on this
    traffic ran on its whole learning sample forever (1.15x the large LM's cost on trec-chat);
    once even its estimate's upper bound answers less than it costs, it runs on idle_share,
    and on learn_share again (then everything) once its answers start to agree."""
    rule = make_policy(
        "chow_quantile", target_agreement=0.9, learn_share=0.25, min_answer_share=0.62,
        idle_share=0.05,
    )  # fmt: skip
    sure = Features(confidence=0.98, token_logprobs=np.array([-0.01, -0.02]))
    unsure = Features(confidence=0.08, token_logprobs=np.array([-2.0, -3.0]))
    assert rule.cannot_answer and rule.run_share == 0.25  # nothing known: learning
    for _ in range(16):
        rule.update(sure, wrong=True, explored=True)
        rule.update(unsure, wrong=True, explored=True)
    assert rule.plainly_cannot_pay and rule.run_share == 0.05
    assert rule.params()["run_share"] == 0.05  # the admin API shows it with the policy
    for _ in range(200):  # three in four answers sure, and now they agree
        for _ in range(3):
            rule.update(sure, wrong=False, explored=True)
        rule.update(unsure, wrong=True, explored=True)
    assert not rule.cannot_answer and rule.run_share == 1.0
    # without idle_share nothing changes: the learning sample is the floor
    plain = make_policy("chow_quantile", target_agreement=0.9, learn_share=0.25,
                        min_answer_share=0.62)  # fmt: skip
    for _ in range(16):
        plain.update(sure, wrong=True, explored=True)
    assert plain.plainly_cannot_pay and plain.run_share == 0.25
    with pytest.raises(PolicyError, match="idle_share"):
        make_policy("chow_quantile", target_agreement=0.9, learn_share=0.25, idle_share=0.5)


def test_a_level_must_show_the_target_at_enter_z_to_start_answering() -> None:
    """The knob is looked at after every sample, so a level whose true agreement sits below
    the target crosses a z = 0.5 bound by luck sooner or later, and once it answers, the 1%
    floor's samples correct it slowly (trec-chat at target 0.7: 63% acceptable on 69% of the
    traffic). With enter_z the bound to start is stricter; once answering, z holds it."""

    def feed(p: ThresholdPolicy, agree_of_10: int, n: int = 40) -> None:
        for i in range(n):  # each ten: the disagreements first, so no prefix looks better
            p.update(conf(0.95), wrong=i % 10 < 10 - agree_of_10, explored=True)

    loose = ThresholdPolicy(target_agreement=0.7)
    strict = ThresholdPolicy(target_agreement=0.7, enter_z=1.5)
    for p in (loose, strict):
        feed(p, 8)  # 80% agreement on 40 samples: bound 0.76 at z 0.5, 0.69 at z 1.5
    assert not loose.cannot_answer and strict.cannot_answer
    feed(strict, 10)  # 90% on 80: bound 0.84 at z 1.5, it starts
    assert not strict.cannot_answer
    assert strict.op is not None and strict.op.answering
    feed(strict, 6, 80)  # 75% on 160: 0.695 at z 1.5 would stop it, 0.73 at z 0.5 holds it
    assert not strict.cannot_answer
    assert wilson_lower(120, 160, 1.5) < 0.7 <= wilson_lower(120, 160, 0.5)
    # below the knob's own z, starting would be easier than staying: refused
    with pytest.raises(PolicyError, match="enter_z"):
        ThresholdPolicy(target_agreement=0.7, enter_z=0.2)
    # a prior that lets a level answer before any sample is held to enter_z as well
    primed = ThresholdPolicy(target_agreement=0.7, prior=30)
    held = ThresholdPolicy(target_agreement=0.7, prior=30, enter_z=5.0)
    assert primed.decide(conf(0.99)).defer is False and held.decide(conf(0.99)).defer is True


def test_operating_point_follows_agreement() -> None:
    high = fed(0.9, lambda c: True)  # the level always agrees with the large LM
    low = fed(0.9, lambda c: False)  # never
    mixed = fed(0.9, lambda c: c >= 0.8)  # only when it is confident
    assert answer_share(high) == 1.0
    assert answer_share(low) == 0.0
    assert 0.0 < answer_share(mixed) < 1.0
    # the mixed level answers what it is confident on, and defers the rest
    assert not mixed.decide(conf(0.95)).defer
    assert mixed.decide(conf(0.6)).defer
    # a stricter target answers less, a looser one more (never less)
    strict, loose = copy.deepcopy(mixed), copy.deepcopy(mixed)
    strict.set_params(target_agreement=0.99)
    loose.set_params(target_agreement=0.5)
    assert answer_share(strict) <= answer_share(mixed) <= answer_share(loose)
    assert answer_share(loose) > answer_share(mixed)
    assert mixed.params()["target_agreement"] == 0.9
    assert 0.0 < mixed.params()["operating_threshold"] < 1.0


def test_operating_point_moves_as_samples_arrive() -> None:
    p = fed(0.9, lambda c: True, rounds=1)
    before = answer_share(p)
    assert before == 1.0
    for _ in range(4):  # then the level starts disagreeing on its less confident answers
        for c in GRID:
            p.update(conf(c), wrong=c < 0.75, explored=True)
    after = answer_share(p)
    assert 0.0 < after < before
    assert p.decide(conf(0.7)).defer and not p.decide(conf(0.9)).defer


def test_report_exposes_the_estimate_with_a_95_interval() -> None:
    p = fed(0.9, lambda c: c >= 0.8)
    est = p.report()["agreement_estimate"]
    # by hand: the explored items the level answers at its threshold, and how many agreed
    score_threshold = est["threshold"]
    xs = [c for c in GRID for _ in range(2)]
    inside = [c for c in xs if 1.0 - c < score_threshold]
    agree = sum(c >= 0.8 for c in inside)
    assert est["n"] == len(inside) > 0
    assert est["agreement"] == pytest.approx(agree / len(inside))
    assert est["answer_share"] == pytest.approx(len(inside) / len(xs))
    low, high = wilson(agree, len(inside))  # the stats module's own Wilson interval
    assert est["ci95_low"] == pytest.approx(low)
    assert est["ci95_high"] == pytest.approx(high)
    assert est["ci95_low"] < est["agreement"] <= est["ci95_high"]
    # the operating point keeps the (z = 0.5) lower bound at the target
    assert wilson_lower(agree, len(inside), 0.5) >= 0.9
    empty = ThresholdPolicy(target_agreement=0.9).report()["agreement_estimate"]
    assert empty["n"] == 0 and empty["agreement"] is None and empty["ci95_low"] is None


def _chosen_confidence(seed: int, use_deferred: bool) -> float:
    """A young level answering only items of confidence >= 0.9, 2% explored; each of its
    answers agrees with the large LM with probability = its confidence. Answering every item
    from c up then agrees (c + 1) / 2 of the time: target 0.85 is met from c = 0.7 up."""
    rng = np.random.default_rng(seed)
    p = ThresholdPolicy(target_agreement=0.85)
    p.op.z = 0.0  # the point estimate: this is about the evidence, not the bound
    for c in rng.uniform(0.5, 1.0, 4000):
        explored = rng.random() < 0.02
        deferred = c < 0.9 and not explored
        agreed = rng.random() < c
        if explored or (deferred and use_deferred):  # what ``update`` keeps, refit once
            p.op.observe(np.array([c]), agreed, deferred=deferred)
    p.op.refit(lambda x: 1.0 - x[:, 0])
    return 1.0 - p.op.threshold


def test_deferred_items_sharpen_the_operating_point() -> None:
    """Explored items give the traffic's mix of confidences; deferred ones, all of which reach
    the large LM, tell how often the level agrees at each confidence near the threshold."""
    with_deferred = [abs(_chosen_confidence(s, True) - 0.7) for s in range(30)]
    explored_only = [abs(_chosen_confidence(s, False) - 0.7) for s in range(30)]
    assert np.mean(with_deferred) < 0.6 * np.mean(explored_only)
    assert np.mean(with_deferred) < 0.05


def test_deferred_items_alone_are_not_a_sample_of_the_traffic() -> None:
    p = ThresholdPolicy(target_agreement=0.9)
    for c in GRID:
        p.update(conf(c), wrong=False, explored=False, deferred=True)
    assert answer_share(p) == 0.0  # no explored item: the traffic's mix is unknown
    assert len(p.op.deferred) == len(GRID) and not p.op.samples
    q = ThresholdPolicy(target_agreement=0.9)
    q.load_state(p.state())
    assert len(q.op.deferred) == len(GRID)
    q.load_state(ThresholdPolicy(target_agreement=0.9).state())  # a version with none
    assert not q.op.deferred


def test_an_unscorable_deferral_does_not_break_the_fit() -> None:
    """Generative policies score an item with no token log-probabilities +inf (always defer)."""
    op = OperatingPoint(0.8)
    for c in GRID:
        op.observe(np.array([c]), True)
    op.observe(np.array([-1.0]), False, deferred=True)
    op.observe(np.array([0.6]), False, deferred=True)
    t = op.refit(lambda x: np.where(x[:, 0] < 0, np.inf, 1.0 - x[:, 0]))
    assert 0.0 < t < np.inf
    assert op.estimate()["n"] > 0


def test_threshold_state_round_trip() -> None:
    p = fed(0.9, lambda c: c >= 0.8)
    q = ThresholdPolicy(target_agreement=0.9)
    q.load_state(p.state())
    assert [q.decide(conf(c)) for c in GRID] == [p.decide(conf(c)) for c in GRID]
    assert q.explore_probability == p.explore_probability < 1.0
    # a serving process only ever loads versions: it reports the same estimate as the learner
    assert q.report() == p.report()
    assert q.report()["agreement_estimate"]["n"] > 0


@pytest.mark.parametrize(
    ("kind", "params", "words"),
    [
        ("threshold", {"threshold": 5}, "between 0 and 1"),
        ("threshold", {"threshold": -0.1}, "between 0 and 1"),
        ("threshold", {"target_agreement": 0}, "target_agreement"),
        ("threshold", {"target_agreement": 1.5}, "target_agreement"),
        ("threshold", {"treshold": 0.5}, "treshold"),
        ("ocl", {"mu": -1}, "mu"),
        ("ocl", {"c": 0.5}, "c must be"),
        ("ocl", {"target_agreement": 0}, "target_agreement"),
        ("ocl", {"hidden_units": 3}, "hidden_units"),
        ("chow_sum", {}, "threshold or a target_agreement"),
        ("chow_quantile", {"alpha": 2, "threshold": 1}, "alpha"),
    ],
)
def test_invalid_parameters_raise_policy_error(kind: str, params: dict, words: str) -> None:
    with pytest.raises(PolicyError, match=words):
        make_policy(kind, **params)


@pytest.mark.parametrize("make", [lambda: ThresholdPolicy(0.9), lambda: OCLPolicy()])
@pytest.mark.parametrize(
    "params", [{"target_agreement": 0}, {"target_agreement": -1}, {"target_agreement": 2}]
)
def test_invalid_targets_set_at_run_time_raise_policy_error(
    make: Callable[[], object], params: dict
) -> None:
    """The admin API validates a change with set_params and answers 422 on PolicyError only."""
    for with_target in (False, True):
        p = make()
        if with_target:
            p.set_params(target_agreement=0.9)
        with pytest.raises(PolicyError, match="target_agreement"):
            p.set_params(**params)
        if with_target:
            assert p.params()["target_agreement"] == 0.9  # unchanged


def test_unknown_parameter_at_run_time() -> None:
    with pytest.raises(PolicyError, match="bogus"):
        ThresholdPolicy().set_params(bogus=1.0)
    with pytest.raises(PolicyError, match="bogus"):
        OCLPolicy().set_params(bogus=1.0)


@pytest.mark.parametrize(
    ("make", "good"),
    [
        (lambda: ThresholdPolicy(0.8), {"threshold": 0.7}),
        (lambda: OCLPolicy(), {"mu": 0.5}),
        (lambda: make_policy("chow_sum", threshold=1.0), {"threshold": 2.0}),
    ],
)
@pytest.mark.parametrize("bad", [{"target_agreement": 0}, {"target_agreement": "x"}])
def test_a_change_with_one_bad_value_changes_nothing(
    make: Callable[[], Policy], good: dict, bad: dict
) -> None:
    p = make()
    before = p.params()
    with pytest.raises(PolicyError, match="target_agreement"):
        p.set_params(**good, **bad)
    assert p.params() == before

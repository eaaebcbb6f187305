"""Deferral policies on their own (no model, no store): static thresholds, the agreement-target
operating point, the OCL policy's online learning and state, exploration and the registry."""

from __future__ import annotations

import copy
import itertools
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression, SGDClassifier

from cascade.stats import wilson
from policies import (
    Features,
    Policy,
    PolicyError,
    ThresholdPolicy,
    known_policies,
    make_policy,
)
from policies.explore import TARGET_FLOOR
from policies.linear import LinearHead
from policies.ocl import OCLPolicy, OCLStep, ocl_update
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


# ------------------------------------------------------------------ OCL


def test_ocl_warmup_defers() -> None:
    p = OCLPolicy(warmup=5)
    confident = probs(0.999, 0.001)
    for _ in range(5):
        assert p.decide(confident).defer is True
        p.update(confident, wrong=False, explored=False)
    assert p.explorer.seen == 5
    d = p.decide(confident)
    assert d.defer is (d.score > 0.5)  # after warm-up the MLP decides


def train(p: OCLPolicy, f: Features, label: int, steps: int) -> list[float]:
    assert f.probs is not None
    chain = [OCLStep(p, f, next_cost=1.0, probs=f.probs, label=label)]
    return [ocl_update(chain) for _ in range(steps)]


@pytest.mark.parametrize("right", [True, False])
def test_ocl_update_learns_a_repeated_pattern(right: bool) -> None:
    p = OCLPolicy(warmup=0, hidden=16, lr=0.01)
    f = probs(0.8, 0.2)
    d0 = p.d(f)
    w0 = {k: v.copy() for k, v in p.state().items()}
    losses = train(p, f, label=0 if right else 1, steps=60)
    w1 = p.state()
    assert any(not np.array_equal(w0[k], w1[k]) for k in w0 if k.startswith("net."))
    assert losses[-1] < losses[0]
    d1 = p.d(f)
    if right:  # the level is always right: answering is cheap and safe, d falls
        assert d1 < d0 and d1 < 0.5
        assert p.decide(f).defer is False
    else:  # always wrong: deferring pays, d rises
        assert d1 > d0 and d1 > 0.5
        assert p.decide(f).defer is True


def test_ocl_update_without_an_answer_changes_nothing() -> None:
    p = OCLPolicy(warmup=0, hidden=8)
    f = probs(0.6, 0.4)
    before = p.d(f)
    assert ocl_update([OCLStep(p, None, 1.0)]) == 0.0
    assert p.d(f) == before


def test_ocl_state_round_trip_gives_identical_decisions() -> None:
    p = OCLPolicy(warmup=3, hidden=16, lr=0.01, target_agreement=0.8)
    rng = np.random.default_rng(0)
    xs = [probs(a, 1 - a) for a in rng.uniform(0.5, 1.0, 40)]
    for f in xs:
        assert f.probs is not None
        right = f.confidence > 0.7
        train(p, f, label=0 if right else 1, steps=1)
        p.update(f, wrong=not right, explored=True)
    q = OCLPolicy(warmup=3, hidden=16, lr=0.01, target_agreement=0.8, seed=7)
    assert [q.d(f) for f in xs] != [p.d(f) for f in xs]  # another seed: other weights
    q.load_state(p.state())
    assert [q.decide(f) for f in xs] == [p.decide(f) for f in xs]
    assert q.params() == p.params()
    assert q.explorer.seen == p.explorer.seen == 40
    assert q.report() == p.report() and q.report()["agreement_estimate"]["n"] > 0


@pytest.mark.parametrize(
    "make",
    [lambda: OCLPolicy(beta=0.9, explore_floor=0.2), lambda: ThresholdPolicy(0.9, 0.9, 0.9, 0.2)],
)
def test_exploration_decays_as_beta_to_the_k_down_to_the_floor(make: Callable[[], object]) -> None:
    p = make()
    f = probs(0.7, 0.3)
    seen = []
    for k in range(30):
        seen.append(p.explore_probability)
        assert p.explore_probability == pytest.approx(max(0.9**k, 0.2))
        p.update(f, wrong=False, explored=False)
    assert seen[0] == 1.0 and seen[-1] == 0.2
    assert all(a >= b for a, b in itertools.pairwise(seen))


def test_threshold_with_target_explores_by_default() -> None:
    p = ThresholdPolicy(target_agreement=0.9)
    assert p.explore_probability == 1.0
    p.explorer.seen = 10_000
    assert p.explore_probability == pytest.approx(TARGET_FLOOR)  # keeps the estimate alive


def test_exploration_with_a_target_decays_with_the_items_decided_on() -> None:
    """Counted in demonstrations alone, exploration would slow down as the level answers more
    (the explored items become nearly all the demonstrations): the items it decides on count."""
    p = ThresholdPolicy(target_agreement=0.9)
    for _ in range(300):
        p.explorer.decided()
    assert p.explore_probability == pytest.approx(0.99**300)
    p.update(conf(0.9), wrong=False, explored=True)  # a demonstration does not reset it
    assert p.explore_probability == pytest.approx(0.99**300)
    q = ThresholdPolicy(target_agreement=0.9)
    q.load_state(p.state())  # traffic is this process's; a version carries the demonstrations
    assert q.explore_probability == pytest.approx(0.99)
    static = OCLPolicy(beta=0.9)  # the paper's policy keeps the paper's k
    static.explorer.decided()
    assert static.explore_probability == 1.0
    plain = ThresholdPolicy(threshold=0.8, beta=0.9)  # no target: k is demonstrations too
    plain.explorer.decided()
    assert plain.explore_probability == 1.0
    plain.set_params(target_agreement=0.9)  # a target set later counts traffic from then
    plain.explorer.decided()
    assert plain.explore_probability == pytest.approx(0.9)  # the one decided since


# ------------------------------------------------------------------ registry


def test_warmup_sends_the_first_items_on_then_decays_as_before() -> None:
    """During warm-up every item is explored (a uniform sample, not a deferral); afterwards
    exploration is what it would have been without one, and a version keeps the count."""
    p = ThresholdPolicy(target_agreement=0.9, warmup=50)
    assert p.params()["warmup"] == 50
    for _ in range(49):
        p.explorer.decided()
    assert p.explore_probability == 1.0
    p.explorer.decided()
    assert p.explore_probability == pytest.approx(0.99**50)
    q = ThresholdPolicy(target_agreement=0.9, warmup=50)
    for _ in range(50):
        q.update(conf(0.9), wrong=False, explored=True)  # demonstrations count as well
    assert q.explore_probability == pytest.approx(0.99**50)
    assert len(q.op.samples) == 50 and q.op.threshold > 0  # the warm-up seeded the estimate
    assert "warmup" not in ThresholdPolicy(target_agreement=0.9).params()


@pytest.mark.parametrize("bad", [-1, 2.5, "ten"])
def test_warmup_must_be_a_whole_number(bad: object) -> None:
    with pytest.raises(PolicyError, match="warmup"):
        make_policy("threshold", target_agreement=0.9, warmup=bad)


def test_unknown_kind_names_the_known_kinds() -> None:
    """In a fresh interpreter, before any lazily imported policy module was loaded."""
    code = (
        "from policies import make_policy, PolicyError\n"
        "try:\n    make_policy('nope')\nexcept PolicyError as e:\n    print(e)\n"
    )
    root = Path(__file__).resolve().parent.parent
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
        cwd=root,
    ).stdout
    assert "'nope'" in out
    for kind in known_policies():
        assert kind in out, (kind, out)
    with pytest.raises(PolicyError, match="unknown policy kind 'nope'"):
        make_policy("nope")
    assert {"threshold", "ocl", "chow_sum", "posthoc_quantile"} <= set(known_policies())


# ------------------------------------------------------------------ the linear head


def _data(n: int, dim: int, k: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, dim)).astype(np.float32)
    return x, np.argmax(x @ rng.normal(size=(dim, k)) + rng.normal(size=(n, k)), axis=1)


@pytest.mark.parametrize("k", [2, 3])
def test_linear_head_fit_gives_scikit_learns_probabilities(k: int) -> None:
    """``fit``: L-BFGS on standardised inputs, as ``LogisticRegression`` on the same."""
    x, y = _data(300, 6, k)
    head = LinearHead(range(k), "multinomial", c=0.5)
    assert head.fit(x, y)
    xs = (x - x.mean(axis=0)) / (x.std(axis=0) + 1e-3)
    want = LogisticRegression(C=0.5, max_iter=300).fit(xs, y).predict_proba(xs)
    np.testing.assert_allclose(head.predict_proba(x), want, atol=1e-4)
    np.testing.assert_allclose(head.predict_proba(x[0]), want[0], atol=1e-4)  # one vector
    event = LinearHead(c=0.5)  # a binary event: one coefficient vector
    assert event.fit(x, (y == 0).astype(int)) and event.state()["coef"].shape == (6,)
    assert not LinearHead().fit(x, np.zeros(len(x), int))  # one class: nothing to fit


def test_linear_head_partial_fit_keeps_the_label_order() -> None:
    """``partial_fit``: SGD one-vs-rest over labels in the task's order, not sklearn's."""
    x, y = _data(200, 5, 3, seed=1)
    labels = ["c", "a", "b"]
    names = np.array(labels)[y]
    head = LinearHead(labels, alpha=1e-3).partial_fit(x, names)
    sgd = SGDClassifier(loss="log_loss", alpha=1e-3, random_state=0)
    want = sgd.partial_fit(x, names, classes=np.array(labels)).predict_proba(x)
    order = [list(sgd.classes_).index(lab) for lab in labels]
    np.testing.assert_allclose(head.predict_proba(x), want[:, order], rtol=1e-5)
    assert head.t_ == pytest.approx(sgd.t_)
    binary = LinearHead(["pos", "neg"], alpha=1e-3).partial_fit(x, np.array(["pos", "neg"])[y % 2])
    assert binary.state()["coef"].shape == (1, 5)  # one row, scoring "neg"
    assert binary.predict_proba(x[:1]).shape == (1, 2)


def test_linear_head_state_round_trip_and_resume() -> None:
    x, y = _data(64, 4, 2, seed=2)
    a = LinearHead().partial_fit(x[:32], y[:32])
    state = a.state()
    assert state["coef"].dtype == np.float32 and state["intercept"].dtype == np.float64
    b = LinearHead()
    b.load_state(state)
    np.testing.assert_array_equal(b.predict_proba(x), a.predict_proba(x))
    b.load_state({})  # a version without coefficients leaves the head as it was
    np.testing.assert_array_equal(b.predict_proba(x), a.predict_proba(x))
    b.resume_t = a.t_
    a.partial_fit(x[32:], y[32:])
    b.partial_fit(x[32:], y[32:])  # SGD goes on from the loaded coefficients and step count
    np.testing.assert_allclose(b.predict_proba(x), a.predict_proba(x), atol=1e-5)

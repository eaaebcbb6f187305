"""Learned deferral policies on their own (no model, no store): the OCL policy's online
learning and state, exploration, the registry, and the linear head they share."""

from __future__ import annotations

import itertools
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression, SGDClassifier

from policies import (
    Features,
    PolicyError,
    ThresholdPolicy,
    known_policies,
    make_policy,
)
from policies.explore import TARGET_FLOOR
from policies.linear import LinearHead
from policies.ocl import OCLPolicy, OCLStep, ocl_update
from tests.test_policies import conf, probs

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

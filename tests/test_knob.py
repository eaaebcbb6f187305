"""The quality knob of the learned generative rules: it holds out of sample, from the start.

These drive the policies the way the gateway does (decide, exploration coin, a demonstration
only when the large LM answered) on features whose link to the verdict is known, so what the
knob must do is known too.
"""

from __future__ import annotations

import random

import numpy as np
import pytest

from policies import Features, make_policy
from policies.abort import EarlyAbort


def _drive(
    kind: str, n: int, signal: float, seed: int = 0, target: float = 0.9
) -> tuple[list[bool], int]:
    """Serve ``n`` items; each is acceptable with P = 0.7 + ``signal`` * (its first
    embedding coordinate > 0 ? 1 : -1) (0.7 on average). Returns the verdicts of the items
    the policy answered itself, and how many ran the level."""
    rng = np.random.default_rng(seed)
    coin = random.Random(seed)
    pol = make_policy(kind, target_agreement=target, learn_share=0.5)
    answered: list[bool] = []
    ran = 0
    for _ in range(n):
        emb = rng.normal(size=64).astype(np.float32)
        lps = rng.normal(-1.0, 0.5, size=12)
        ok = bool(rng.random() < 0.7 + signal * (1 if emb[0] > 0 else -1))
        f = Features(
            confidence=float(np.exp(lps.mean())),
            token_logprobs=lps,
            entropies=np.abs(rng.normal(size=12)),
            embedding=emb,
            hidden=rng.normal(size=32).astype(np.float32),
        )
        if pol.cannot_answer and coin.random() >= pol.learn_share:
            continue  # outside the learning sample: straight to the large LM
        ran += 1
        explored = pol.cannot_answer or coin.random() < pol.explore_probability
        pol.explorer.decided()
        d = pol.decide(f)
        if not d.defer and not explored:
            answered.append(ok)
            continue
        pol.update(f, wrong=not ok, explored=explored, deferred=not explored)
    return answered, ran


@pytest.mark.parametrize("kind", ["posthoc_embed", "posthoc_hidden"])
def test_knob_answers_nothing_when_the_features_say_nothing(kind: str) -> None:
    """Acceptable 70% of the time whatever the features: no threshold meets 0.9, so the
    policy must keep deferring. Scored in sample, the head that learned the explored items
    found them separable and answered items ~70% acceptable (the bug behind issue 21)."""
    answered, _ = _drive(kind, 1200, signal=0.0)
    assert len(answered) <= 24, (len(answered), np.mean(answered) if answered else None)


def test_knob_holds_where_there_is_a_signal() -> None:
    """Half the items are 95% acceptable (the other half 45%): the policy learns to answer
    those, and what it answers meets the target less a small slack."""
    answered, ran = _drive("posthoc_embed", 1500, signal=0.25)
    assert len(answered) >= 200
    assert np.mean(answered) >= 0.88, np.mean(answered)
    assert ran < 1500  # the learning sample skipped the level while it could not answer


def test_fold_heads_travel_with_a_version() -> None:
    """A gateway that adopts a version scores new items and its window as the learner does."""
    rng = np.random.default_rng(1)
    a = make_policy("posthoc_quantile", target_agreement=0.8, min_examples=16, refit_every=8)
    for _ in range(200):
        lps = rng.normal(-1.0, 0.5, size=10)
        f = Features(confidence=0.5, token_logprobs=lps, entropies=np.ones(10))
        a.update(f, wrong=bool(lps.mean() < -1.0), explored=True)
    b = make_policy("posthoc_quantile", target_agreement=0.8)
    b.load_state(a.state())
    probe = Features(confidence=0.5, token_logprobs=rng.normal(-1, 0.5, 10), entropies=np.ones(10))
    assert b.score(probe) == pytest.approx(a.score(probe))
    assert b.operating_threshold == a.operating_threshold
    assert b.report() == a.report()


def test_early_abort_learns_what_the_rule_defers() -> None:
    """The abort head imitates the rule's verdicts: prompts whose hidden state says "defer"
    are stopped at the prompt, the others are never stopped."""
    rng = np.random.default_rng(2)
    ab = EarlyAbort(every=4, confidence=0.9, min_examples=50, refit_every=25)
    for _ in range(400):
        h = rng.normal(size=16).astype(np.float32)
        lps = list(rng.normal(-1, 0.3, size=12))
        ab.learn(h, None, lps, [0.5] * 12, deferred=bool(h[0] > 0.5))
    far_defer = np.zeros(16, dtype=np.float32)
    far_defer[0] = 3.0
    assert ab.should_abort(ab.vector(far_defer, None, [], []))
    assert not ab.should_abort(ab.vector(-far_defer, None, [], []))
    assert list(ab.checkpoints(9)) == [0, 4, 8]

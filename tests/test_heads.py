"""The refitted logistic head's bounded memory and refit schedule (bench learner relies on
both for a flat cost per demonstration)."""

from __future__ import annotations

import numpy as np
import pytest

from cascade.levels.heads import LogisticHead
from policies.linear import LinearHead


def _batches(rng: np.random.Generator, total: int, dim: int) -> list[tuple[np.ndarray, np.ndarray]]:
    out, made = [], 0
    while made < total:
        k = int(rng.integers(1, 90))
        x = rng.normal(loc=3.0, scale=2.0, size=(k, dim)).astype(np.float32)
        x[:, 0] = np.arange(made, made + k)  # an id per example, to check which are held
        out.append((x, rng.integers(0, 3, size=k)))
        made += k
    return out


@pytest.mark.parametrize("memory", [50, 257, 1000])
def test_memory_holds_exactly_the_latest_examples_and_their_moments(memory: int) -> None:
    rng = np.random.default_rng(memory)
    head = LogisticHead(3, memory=memory, min_examples=10**9)  # never refits
    batches = _batches(rng, 3 * memory + 17, 6)
    big = rng.normal(size=(memory + 40, 6)).astype(np.float32)  # one batch beyond the memory
    big[:, 0] = np.arange(len(big)) + 10**6
    batches.append((big, rng.integers(0, 3, size=len(big))))
    batches += _batches(rng, memory // 3, 6)
    seen_x = np.concatenate([x for x, _ in batches])
    seen_y = np.concatenate([y for _, y in batches])
    for x, y in batches:
        head.remember(x, y)
        assert head.x_mem is not None and len(head.x_mem) <= memory
        assert len(head._x) <= memory  # the buffer never outgrows the memory
    want = seen_x[-memory:]
    held = head.x_mem
    assert held is not None and len(held) == min(memory, len(seen_x))
    order = np.argsort(held[:, 0])
    np.testing.assert_array_equal(held[order], want[np.argsort(want[:, 0])])
    np.testing.assert_array_equal(head.y_mem[order], seen_y[-memory:][np.argsort(want[:, 0])])
    mean, std = head.moments()
    np.testing.assert_allclose(mean, want.astype(np.float64).mean(axis=0), rtol=1e-9)
    np.testing.assert_allclose(std, want.astype(np.float64).std(axis=0), rtol=1e-6)
    assert head.seen == len(seen_x)


def test_refits_every_16_while_small_then_as_the_memory_grows_by_a_share() -> None:
    rng = np.random.default_rng(0)
    head = LogisticHead(2, refit_every=16, min_examples=32, refit_growth=1 / 128, memory=6000)
    w = rng.normal(size=8)
    refits_at = []
    for i in range(5000):
        x = rng.normal(size=(1, 8)).astype(np.float32)
        if head.add(x, np.array([int(x[0] @ w > 0)])):
            refits_at.append(i + 1)
    gaps = np.diff(refits_at)
    early = [g for at, g in zip(refits_at[1:], gaps, strict=True) if at <= 2048]
    late = [(at, g) for at, g in zip(refits_at[1:], gaps, strict=True) if at > 2600]
    assert refits_at[0] == 32 and set(early) == {16}
    # past 2,048 remembered, a refit once the memory grew by 1/128 of itself
    assert late and all(abs(g - at / 128) <= 1 for at, g in late)


def test_kept_moments_standardise_as_a_direct_fit_does() -> None:
    rng = np.random.default_rng(1)
    x = rng.normal(loc=5.0, size=(3000, 12)).astype(np.float32)
    y = (x[:, 0] + x[:, 1] > 10).astype(np.int64)
    head = LogisticHead(2, memory=2000, min_examples=10**9)
    for i in range(0, len(x), 64):
        head.remember(x[i : i + 64], y[i : i + 64])
    assert head.refit()
    direct = LinearHead(range(2), "multinomial", c=0.01)
    assert direct.fit(x[-2000:], y[-2000:])
    np.testing.assert_allclose(head.mean_, direct.mean_, rtol=1e-5)
    np.testing.assert_allclose(head.scale_, direct.scale_, rtol=1e-4)
    probe = rng.normal(loc=5.0, size=(200, 12)).astype(np.float32)
    np.testing.assert_allclose(head.proba(probe), direct.predict_proba(probe), atol=1e-3)

"""Token-level uncertainty features of a generated answer (Gupta et al., ICLR 2024).

From the per-token log-probabilities l_i of what the small model generated: the length, the
sequence log-likelihood (Chow-Sum), its mean (Chow-Average), the alpha-quantiles of the l_i
(alpha = 0 is the least confident token) and, where the backend saw each step's top-k
distribution, the mean and max of the step entropies.
"""

from __future__ import annotations

import numpy as np

from policies.base import Features

ALPHAS: tuple[float, ...] = tuple(round(a / 10, 1) for a in range(11))


def chow_sum(lp: np.ndarray) -> float:
    return float(np.sum(lp)) if lp.size else 0.0


def chow_average(lp: np.ndarray) -> float:
    return float(np.mean(lp)) if lp.size else 0.0


def chow_quantile(lp: np.ndarray, alpha: float) -> float:
    return float(np.quantile(lp, alpha)) if lp.size else 0.0


def entropy_mean(entropies: np.ndarray | None) -> float:
    return float(np.mean(entropies)) if entropies is not None and entropies.size else 0.0


def token_features(f: Features, alphas: tuple[float, ...] = ALPHAS) -> dict[str, float]:
    """Named token features; all zero when the level had no log-probabilities."""
    lp = f.token_logprobs if f.token_logprobs is not None else np.zeros(0)
    ent = f.entropies
    out = {
        "length": float(lp.size),
        "log_length": float(np.log1p(lp.size)),
        "chow_sum": chow_sum(lp),
        "chow_average": chow_average(lp),
        "entropy_mean": entropy_mean(ent),
        "entropy_max": float(np.max(ent)) if ent is not None and ent.size else 0.0,
    }
    for a in alphas:
        out[f"q{a:.1f}"] = chow_quantile(lp, a)
    return out


def quantile_vector(f: Features, alphas: tuple[float, ...] = ALPHAS) -> np.ndarray:
    """The post-hoc rule's inputs: quantiles, log length, sum, mean, entropy mean and max."""
    t = token_features(f, alphas)
    keys = [f"q{a:.1f}" for a in alphas] + [
        "log_length",
        "chow_sum",
        "chow_average",
        "entropy_mean",
        "entropy_max",
    ]
    return np.array([t[k] for k in keys], dtype=np.float32)

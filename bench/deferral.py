"""``cascade-gateway bench deferral``: token-level deferral rules on a generative stream.

Each prompt is answered by the small LM (token log-probabilities and step entropies kept) and
by the large LM; the small answer is *acceptable* when the task's quality measure (by default
MiniLM cosine to the large answer >= 0.8) says so. A deferral rule orders the items by its
score; deferring the top fraction r sends them to the large LM (quality 1 against itself), so
quality(r) is the deferral curve and its mean over r in [0, 1] the AUC-DF. Learned rules are
scored online, in stream order: each item's score comes from a rule trained only on earlier
items. Then the pre-router is measured in the real cascade: the same stream with and without
a router in front of the small LM.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from policies import Features, make_policy

SIMPLE_RULES: dict[str, dict[str, Any]] = {
    "chow_sum": {"kind": "chow_sum"},
    "chow_average": {"kind": "chow_average"},
    "chow_quantile_0.0": {"kind": "chow_quantile", "alpha": 0.0},
    "chow_quantile_0.1": {"kind": "chow_quantile", "alpha": 0.1},
    "chow_quantile_0.5": {"kind": "chow_quantile", "alpha": 0.5},
    "entropy_mean": {"kind": "entropy_mean"},
}
LEARNED_RULES: dict[str, dict[str, Any]] = {
    "posthoc_quantile": {"kind": "posthoc_quantile"},
    "posthoc_embed": {"kind": "posthoc_embed"},
    "posthoc_hidden": {"kind": "posthoc_hidden"},
}


def deferral_curve(scores: np.ndarray, quality: np.ndarray, seed: int = 0) -> np.ndarray:
    """Quality of the cascade after deferring the k highest-scored items, k = 0..N.

    Ties are broken at random (seeded): a rule that cannot tell items apart is as good as
    random among them, no better.
    """
    rng = np.random.default_rng(seed)
    jitter = rng.random(len(scores))
    order = np.lexsort((jitter, -np.nan_to_num(scores, posinf=1e300, neginf=-1e300)))
    gain = 1.0 - quality[order]  # deferring item i lifts its quality to 1
    return (quality.sum() + np.concatenate([[0.0], np.cumsum(gain)])) / len(quality)


def auc(curve: np.ndarray) -> float:
    """Area under the deferral curve, fraction deferred on [0, 1] (trapezoid)."""
    return float(np.trapezoid(curve, dx=1.0 / (len(curve) - 1)))


def random_auc(quality: np.ndarray) -> float:
    """Expected AUC-DF of random deferral: linear from mean quality to 1."""
    return float((quality.mean() + 1.0) / 2)


def oracle_scores(quality: np.ndarray) -> np.ndarray:
    return 1.0 - quality  # defer the worst answers first


def simple_scores(kind: dict[str, Any], feats: list[Features]) -> np.ndarray:
    rule = make_policy(**kind, threshold=0.0)
    return np.array([rule.score(f) for f in feats])


def online_scores(
    kind: dict[str, Any], feats: list[Features], acceptable: np.ndarray
) -> np.ndarray:
    """Each item scored by the rule trained on the items before it, then learned from."""
    rule = make_policy(**kind)
    out = np.empty(len(feats))
    for i, (f, ok) in enumerate(zip(feats, acceptable, strict=True)):
        out[i] = rule.score(f)
        rule.update(f, wrong=not ok, explored=False)
    return out


def rule_rows(
    feats: list[Features], quality: np.ndarray, acceptable: np.ndarray, seed: int
) -> tuple[list[dict[str, Any]], dict[str, np.ndarray]]:
    """Every rule's AUC-DF (binary and continuous), gain over random, share of the oracle."""
    binary = acceptable.astype(float)
    r_bin, r_q = random_auc(binary), random_auc(quality)
    scores: dict[str, np.ndarray] = {"oracle": oracle_scores(binary)}
    for name, kind in SIMPLE_RULES.items():
        scores[name] = simple_scores(kind, feats)
    for name, kind in LEARNED_RULES.items():
        if kind["kind"] in ("posthoc_embed", "posthoc_hidden") and any(
            f.embedding is None for f in feats
        ):
            continue
        if kind["kind"] == "posthoc_hidden" and any(f.hidden is None for f in feats):
            continue
        scores[name] = online_scores(kind, feats, acceptable)
    o_bin = auc(deferral_curve(scores["oracle"], binary, seed))
    rows = [
        {
            "rule": "random",
            "auc_df": round(r_bin, 4),
            "auc_df_quality": round(r_q, 4),
            "gain_vs_random": 0.0,
            "oracle_share": 0.0,
        }
    ]
    curves: dict[str, np.ndarray] = {}
    for name, s in scores.items():
        c_bin = deferral_curve(s, binary, seed)
        curves[name] = c_bin
        a_bin = auc(c_bin)
        a_q = auc(deferral_curve(s, quality, seed))
        rows.append(
            {
                "rule": name,
                "auc_df": round(a_bin, 4),
                "auc_df_quality": round(a_q, 4),
                "gain_vs_random": round((a_bin - r_bin) / r_bin, 4),
                "oracle_share": round((a_bin - r_bin) / (o_bin - r_bin), 4)
                if o_bin > r_bin
                else math.nan,
            }
        )
    return rows, curves


def best_simple(rows: list[dict[str, Any]]) -> dict[str, Any]:
    simple = [r for r in rows if r["rule"] in SIMPLE_RULES]
    return max(simple, key=lambda r: r["auc_df"])

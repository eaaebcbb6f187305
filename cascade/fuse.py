"""The large LM's answer fused with the cheaper LMs' zero-shot ones (classify tasks, opt-in).

Why: two LMs that err in opposite directions are more accurate together than either alone
(on Rotten Tomatoes the 1.5B leans to "negative", the 0.5B to "positive"; README, Fusing, and
docs/BENCHMARKS.md have the figures). The product of their label distributions takes equal
weights, fits nothing and needs no labels. A cascade has already run the small LM on every
item that reaches the large LM, so the fused answer costs nothing more.

Only the answer served changes. The demonstration stays the large LM's own answer, so the
cheaper levels still imitate the large LM and every agreement figure is still measured against
it. Only zero-shot distributions take part (never a probe's or a stacked average, which imitate
the large LM and would count its opinion twice, and which change with the learned version: the
cache keeps a large-LM answer across versions).
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from cascade.levels.base import LevelOutput


def has_distribution(out: LevelOutput) -> bool:
    """The LM's label probabilities came from its log-probabilities (``label_mass`` is set
    then). An endpoint that returns none gives a one-hot "distribution": fused, it would
    overrule any other opinion, so it takes no part."""
    return out.ready and out.valid and "label_mass" in out.extra


def zero_shot(out: LevelOutput, labels: list[str]) -> np.ndarray | None:
    """A cheaper LM's own label distribution: recorded as ``zs_<label>`` by a local LM (whose
    ``probs`` may be averaged with its probe), else its ``probs``; None if it has none."""
    if not has_distribution(out):
        return None
    zs = [out.extra.get(f"zs_{lab}") for lab in labels]
    if None not in zs:
        return np.array(zs, dtype=np.float64)
    return None if out.probs is None else np.asarray(out.probs, dtype=np.float64)


def fuse(
    large: LevelOutput, earlier: list[LevelOutput], names: list[str], labels: list[str]
) -> LevelOutput:
    """The product of the large LM's label distribution and those of the named earlier levels,
    renormalised; ``large`` itself when none of them has a distribution to add."""
    if large.probs is None or not has_distribution(large):
        return large
    logp = np.log(np.clip(np.asarray(large.probs, dtype=np.float64), 1e-9, 1.0))
    used = 0
    for out in earlier:
        zs = zero_shot(out, labels) if out.name in names else None
        if zs is not None and zs.shape == logp.shape:
            logp += np.log(np.clip(zs, 1e-9, 1.0))
            used += 1
    if not used:
        return large
    probs = np.exp(logp - logp.max())
    probs /= probs.sum()
    i = int(np.argmax(probs))
    extra = {**large.extra, "fused": float(used), "large_agrees": float(labels[i] == large.label)}
    return replace(
        large,
        text=labels[i] if labels[i] != large.label else large.text,
        label=labels[i],
        probs=probs,
        confidence=float(probs[i]),
        extra=extra,
    )


def fused_logprobs(
    served: LevelOutput, labels: list[str]
) -> tuple[list[str], list[float], list[dict[str, float]]]:
    """Token log-probabilities that match a fused answer (one token: the label served, its
    alternatives the other labels): the large LM's own would name the label it picked."""
    assert served.probs is not None
    logp = np.log(np.clip(np.asarray(served.probs, dtype=np.float64), 1e-12, 1.0))
    top = {lab: float(lp) for lab, lp in zip(labels, logp, strict=True)}
    return [served.text], [top[served.label or served.text]], [top]

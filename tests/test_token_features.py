"""Token-level uncertainty features and the deferral rules for generated text, on a real SmolLM2
generation (in-process llama.cpp, greedy), checked against numbers computed here by hand; and
the quality measures that decide whether a small LM's answer is acceptable."""

from __future__ import annotations

import math
import statistics

import numpy as np
import pytest

from cascade.backends.base import LMResult
from cascade.backends.llama import LlamaBackend
from cascade.config import LevelConfig, PromptConfig, TaskConfig
from cascade.levels import LevelOutput
from cascade.levels.base import Demo
from cascade.levels.lm import sequence_confidence
from cascade.levels.router import RouterLevel
from cascade.quality import QualityMeasure, exact_match, rouge_l, token_f1
from cascade.runtime import features_of
from policies import Features, make_policy
from policies.features import ALPHAS, quantile_vector, token_features

PROMPT = [{"role": "user", "content": "Name the colours of the rainbow."}]


@pytest.fixture(scope="module")
def small(shared_backends: dict[str, object]) -> LlamaBackend:
    backend = shared_backends["small"]
    assert isinstance(backend, LlamaBackend)
    return backend


@pytest.fixture(scope="module")
def generation(small: LlamaBackend) -> LMResult:
    r = small.generate(PROMPT, max_tokens=12, temperature=0.0)
    assert r.text.strip(), r
    assert 3 <= len(r.token_logprobs) <= 12
    return r


@pytest.fixture(scope="module")
def feats(generation: LMResult) -> Features:
    out = LevelOutput(
        name="small",
        text=generation.text,
        confidence=sequence_confidence(generation.token_logprobs),
        lm=generation,
    )
    return features_of(out, [])  # what the runner hands the small level's policy


def test_greedy_generation_is_deterministic(small: LlamaBackend, generation: LMResult) -> None:
    again = small.generate(PROMPT, max_tokens=12, temperature=0.0)
    assert again.text == generation.text
    assert again.token_logprobs == pytest.approx(generation.token_logprobs, abs=1e-4)


def test_token_features_match_hand_computation(generation: LMResult, feats: Features) -> None:
    lps = list(generation.token_logprobs)
    n = len(lps)
    assert all(lp <= 0.0 for lp in lps)  # log-probabilities
    assert feats.token_logprobs is not None
    assert feats.token_logprobs.tolist() == pytest.approx(lps)
    t = token_features(feats)
    assert t["length"] == n
    assert t["log_length"] == pytest.approx(math.log(1 + n))
    assert t["chow_sum"] == pytest.approx(sum(lps))
    assert t["chow_average"] == pytest.approx(sum(lps) / n)
    assert t["q0.0"] == pytest.approx(min(lps))
    assert t["q0.5"] == pytest.approx(statistics.median(lps))
    assert t["q1.0"] == pytest.approx(max(lps))
    qs = [t[f"q{a:.1f}"] for a in ALPHAS]
    assert qs == sorted(qs)  # quantiles grow with alpha
    # the level's confidence is the geometric-mean token probability: exp(Chow-Average)
    assert feats.confidence == pytest.approx(math.exp(sum(lps) / n))

    ents = list(generation.entropies or [])
    assert len(ents) == n
    assert t["entropy_mean"] == pytest.approx(sum(ents) / n)
    assert t["entropy_max"] == pytest.approx(max(ents))

    v = quantile_vector(feats)
    assert v.shape == (len(ALPHAS) + 5,)
    expected = [*qs, math.log(1 + n), sum(lps), sum(lps) / n, sum(ents) / n, max(ents)]
    assert v.tolist() == pytest.approx(expected, rel=1e-5, abs=1e-5)


def test_entropies_are_bounded_by_the_top_k(small: LlamaBackend, generation: LMResult) -> None:
    ents = generation.entropies
    assert ents is not None and small.top_k == 20
    for e in ents:
        assert 0.0 <= e <= math.log(small.top_k) + 1e-9
    assert max(ents) > 0.0  # a 135M model is not certain of every token


def hand_scores(generation: LMResult) -> dict[str, tuple[dict, float]]:
    """(policy params without the threshold, hand-computed deferral score) per rule."""
    lps = generation.token_logprobs
    ents = generation.entropies or []
    return {
        "chow_sum": ({"kind": "chow_sum"}, -sum(lps)),
        "chow_average": ({"kind": "chow_average"}, -sum(lps) / len(lps)),
        "chow_quantile_min": ({"kind": "chow_quantile", "alpha": 0.0}, -min(lps)),
        "chow_quantile_median": ({"kind": "chow_quantile", "alpha": 0.5}, -statistics.median(lps)),
        "entropy_mean": ({"kind": "entropy_mean"}, sum(ents) / len(ents)),
    }


@pytest.mark.parametrize(
    "rule",
    ["chow_sum", "chow_average", "chow_quantile_min", "chow_quantile_median", "entropy_mean"],
)
def test_each_rule_flips_at_its_score(generation: LMResult, feats: Features, rule: str) -> None:
    params, score = hand_scores(generation)[rule]
    kind = params.pop("kind")
    eps = 1e-3
    above = make_policy(kind, threshold=score + eps, **params)
    below = make_policy(kind, threshold=score - eps, **params)
    assert above.score(feats) == pytest.approx(score, abs=1e-4)
    d = above.decide(feats)
    assert d.defer is False and d.score == pytest.approx(score, abs=1e-4)
    assert below.decide(feats).defer is True


def scaled(f: Features, k: float, shift: float = 0.0) -> Features:
    assert f.token_logprobs is not None and f.entropies is not None
    return Features(
        confidence=f.confidence,
        token_logprobs=f.token_logprobs * k + shift,
        entropies=f.entropies * k,
        embedding=f.embedding,
    )


@pytest.mark.parametrize("kind", ["posthoc_quantile", "posthoc_embed"])
def test_posthoc_rules_learn_from_demonstrations(
    feats: Features, shared_backends: dict[str, object], kind: str
) -> None:
    encoder = shared_backends["minilm"]
    prompts = ["Name the colours of the rainbow.", "What is 2 + 2?", "Who wrote Hamlet?"]
    embs = encoder.embed(prompts)  # type: ignore[attr-defined]
    base = Features(
        feats.confidence, token_logprobs=feats.token_logprobs, entropies=feats.entropies
    )
    base.embedding = embs[0]
    p = make_policy(kind, min_examples=8, refit_every=4, threshold=0.5)
    before = p.score(base)
    assert before == pytest.approx(0.5)  # nothing learned: the prior
    rng = np.random.default_rng(0)
    for i in range(12):  # confident answers were acceptable, unsure ones were not
        emb = embs[i % len(embs)]
        good = scaled(base, 0.2 + 0.05 * rng.random())
        bad = scaled(base, 3.0 + rng.random(), shift=-1.0)
        good.embedding, bad.embedding = emb, emb
        p.update(good, wrong=False, explored=False)
        p.update(bad, wrong=True, explored=False)
    after = p.score(base)
    assert after != pytest.approx(before, abs=1e-3)
    probe_good, probe_bad = scaled(base, 0.22), scaled(base, 3.5, shift=-1.0)
    probe_good.embedding = probe_bad.embedding = embs[1]
    assert p.score(probe_good) < 0.5 < p.score(probe_bad)
    assert p.decide(probe_good).defer is False and p.decide(probe_bad).defer is True
    # what it learned is its state: another copy that loads it scores the same
    q = make_policy(kind, min_examples=8, refit_every=4, threshold=0.5)
    q.load_state(p.state())
    assert q.score(base) == pytest.approx(after, rel=1e-5)


def test_posthoc_publishes_what_it_learned_from_one_kind_of_verdict(feats: Features) -> None:
    """Until both verdicts were seen there is no regression, only the base rate: a serving
    copy that loads the learner's state must score as the learner does."""
    p = make_policy("posthoc_quantile", min_examples=4, refit_every=2, threshold=0.5)
    for k in range(6):
        p.update(scaled(feats, 0.5 + 0.1 * k), wrong=False, explored=False)  # all acceptable
    assert p.score(feats) == pytest.approx(0.0)  # P(unacceptable) from the base rate alone
    q = make_policy("posthoc_quantile", min_examples=4, refit_every=2, threshold=0.5)
    q.load_state(p.state())
    assert q.score(feats) == pytest.approx(p.score(feats))
    assert q.decide(feats).defer is False


NO_LOGPROBS = {
    "none": Features(confidence=0.4),
    "empty": Features(confidence=0.4, token_logprobs=np.zeros(0), entropies=np.zeros(0)),
}


@pytest.mark.parametrize("which", list(NO_LOGPROBS))
@pytest.mark.parametrize(
    "params",
    [
        {"kind": "chow_sum"},
        {"kind": "chow_average"},
        {"kind": "chow_quantile", "alpha": 0.5},
        {"kind": "entropy_mean"},
        {"kind": "posthoc_quantile"},
        {"kind": "posthoc_embed"},
    ],
    ids=lambda p: p["kind"],
)
def test_without_logprobs_every_rule_defers(params: dict, which: str) -> None:
    """An endpoint that returns no log-probabilities gives nothing to trust: defer."""
    f = NO_LOGPROBS[which]
    p = make_policy(**{**params, "threshold": 1e9})  # a threshold that would answer anything
    assert p.score(f) == math.inf
    d = p.decide(f)
    assert d.defer is True
    t = token_features(f)
    assert t["length"] == 0 and t["chow_sum"] == 0.0  # all-zero features, no crash


# ------------------------------------------------------------------ quality measures


@pytest.mark.parametrize(
    ("a", "b", "em", "f1", "rl"),
    [
        ("The Cat!", "cat", 1.0, 1.0, 1.0),  # case, punctuation and articles do not count
        ("the cat sat on the mat", "a cat sat", 0.0, 2 * 0.5 * 1.0 / 1.5, 2 * 0.5 * 1.0 / 1.5),
        ("cat sat on mat", "cat on the mat", 0.0, 2 * 0.75 / 1.75, 2 * 0.75 / 1.75),
        ("mat on cat", "cat on mat", 0.0, 1.0, 1 / 3),  # same words, other order: LCS of 1
        ("blue sky", "green grass", 0.0, 0.0, 0.0),
        ("", "", 1.0, 1.0, 1.0),
        ("the", "cat", 0.0, 0.0, 0.0),  # nothing left after normalising one side
    ],
)
def test_overlap_measures_by_hand(a: str, b: str, em: float, f1: float, rl: float) -> None:
    assert exact_match(a, b) == em
    assert token_f1(a, b) == pytest.approx(f1)
    assert rouge_l(a, b) == pytest.approx(rl)
    for name, value in (("exact", em), ("token_f1", f1), ("rouge_l", rl)):
        assert QualityMeasure(name, 0.5).score(a, b) == pytest.approx(value)


def test_acceptable_respects_the_threshold() -> None:
    a, b = "cat sat on mat", "cat on the mat"  # token F1 = 6/7 = 0.857...
    assert QualityMeasure("token_f1", 0.85).acceptable(a, b)
    assert QualityMeasure("token_f1", token_f1(a, b)).acceptable(a, b)  # reaching it is enough
    assert not QualityMeasure("token_f1", 0.86).acceptable(a, b)
    q = QualityMeasure("rouge_l", 0.5)
    assert q.scores(["mat on cat", "cat"], ["cat on mat", "cat"]).tolist() == pytest.approx(
        [1 / 3, 1.0]
    )
    with pytest.raises(ValueError, match="unknown quality measure"):
        QualityMeasure("bleu", 0.5)
    with pytest.raises(ValueError, match="encoder"):
        QualityMeasure("cosine", 0.5)


def test_cosine_with_minilm(shared_backends: dict[str, object]) -> None:
    q = QualityMeasure("cosine", 0.7, shared_backends["minilm"])  # type: ignore[arg-type]
    ref = "The cat is sitting on the mat."
    para = "A cat sits on the mat."
    other = "Interest rates rose sharply in March."
    s_para, s_other, s_same = q.score(para, ref), q.score(other, ref), q.score(ref, ref)
    assert 0.0 <= s_other < s_para <= s_same <= 1.0
    assert s_same == pytest.approx(1.0, abs=1e-4)
    assert s_para > 0.7 > s_other
    assert q.acceptable(para, ref) and not q.acceptable(other, ref)
    both = q.scores([para, other], [ref, ref])
    assert both.tolist() == pytest.approx([s_para, s_other], abs=1e-5)


def _router_demo(i: int, text: str, defer: bool, p: float, routed: bool = False) -> Demo:
    small = {"text": "x", "decision": {"defer": defer, "score": 0.5, "explore_p": p}}
    router = {"decision": {"defer": routed, "score": 0.5, "explore_p": p}}
    return Demo(f"0-{i}", text, None, "y", {"router": router, "small": small})


def test_router_weights_demonstrations_back_to_all_traffic() -> None:
    """Demonstrations hold every deferral but an accepted answer only when the request
    explored (here 1 in 10): each accepted one stands for 10 requests."""
    cfg = LevelConfig(name="router", kind="router", cost=0.0001, params={"batch_size": 8})
    task = TaskConfig(
        kind="generate",
        prompt=PromptConfig(user="{input}"),
        levels=[cfg, LevelConfig(name="small", kind="openai", backend="x", cost=0.5)],
    )
    router = RouterLevel(cfg, task, target="small")
    assert router._sample(_router_demo(0, "q", defer=True, p=0.1)) == (0, 1.0)
    assert router._sample(_router_demo(0, "q", defer=False, p=0.1)) == (1, pytest.approx(10.0))
    # past a routing skip only exploring requests reach the small level at all
    assert router._sample(_router_demo(0, "q", True, 0.1, routed=True)) == (0, pytest.approx(10))
    # no exploration recorded: fall back to the quality verdict, unweighted
    old = Demo("0-0", "q", None, "y", {"small": {"text": "x", "acceptable": True}})
    assert router._sample(old) == (1, 1.0)
    assert router._sample(Demo("0-0", "q", None, "y", {})) is None

    # and the weighted samples reach the classifier
    demos = [_router_demo(i, f"question {i}", defer=i % 4 == 0, p=0.1) for i in range(8)]
    assert router.learn(demos) and router.updates == 1
    p = router.p_accept(router._x(["question 1"], [None]))
    assert p is not None and 0.0 < p < 1.0

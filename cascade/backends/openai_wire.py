"""What an OpenAI-compatible endpoint sends back, read strictly: its error bodies, streamed
chunks and chat completions (a malformed or cut-off answer is a BackendError, never an answer).
Split from the HTTP client (openai_http.py), which is about when and how to ask."""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np

from cascade.backends.base import (
    BackendError,
    ContextLengthError,
    LMResult,
    entropy_of_logprobs,
    label_distribution,
)
from cascade.prompts import LabelMatcher


def context_error(status: int, text: str) -> bool:
    """Does an error answer say the prompt is past the model's context? OpenAI says so with
    the code ``context_length_exceeded``, llama.cpp's and vLLM's servers in their message."""
    if status not in (400, 413, 422):
        return False
    low = text.lower()
    return "context_length_exceeded" in low or (
        "context" in low and any(w in low for w in ("length", "window", "exceed"))
    )


def error_message(text: str) -> str:
    """The upstream's own error message where its body has one, else the body's start."""
    try:
        err = json.loads(text).get("error")
        msg = err.get("message") if isinstance(err, dict) else err
        if isinstance(msg, str) and msg:
            return msg[:300]
    except (ValueError, AttributeError):
        pass
    return text[:200]


def raise_for(model: str, status: int, text: str) -> None:
    if context_error(status, text):
        raise ContextLengthError(f"{model}: {error_message(text)}")


def stream_choice(model: str, chunk: str) -> dict[str, Any]:
    """The first choice of one streamed chunk; a chunk that is not one is a failure."""
    try:
        obj = json.loads(chunk)
    except ValueError:
        raise BackendError(f"{model}: stream line is not JSON: {chunk[:80]!r}") from None
    if not isinstance(obj, dict):
        raise BackendError(f"{model}: stream line is not a JSON object: {chunk[:80]!r}")
    if obj.get("error"):
        raise BackendError(f"{model}: error mid-stream: {str(obj['error'])[:200]}")
    choice = (obj.get("choices") or [{}])[0]
    if not isinstance(choice, dict):
        raise BackendError(f"{model}: malformed stream chunk: {chunk[:80]!r}")
    return choice


def check_complete(model: str, text: str, finish: str | None) -> None:
    """A generated answer is complete when the endpoint said why it stopped and said
    something: an answer cut off (no finish reason) or empty is a failure, not an answer."""
    if finish is None:
        raise BackendError(f"{model}: the answer ended before the model finished it (truncated)")
    if not text.strip():
        raise BackendError(f"{model}: empty answer (finish_reason {finish!r})")


def top_map(item: dict[str, Any]) -> dict[str, float]:
    tops = item.get("top_logprobs") or []
    return {t["token"]: float(t["logprob"]) for t in tops if "token" in t and "logprob" in t}


def parse_chat_response(data: dict[str, Any], model: str, matcher: LabelMatcher | None) -> LMResult:
    """An OpenAI chat completion body as an LMResult (labels read when given a matcher)."""
    try:
        choice = data["choices"][0]
        text = choice["message"].get("content") or ""
    except (KeyError, IndexError, TypeError, AttributeError) as e:
        raise BackendError(f"{model}: malformed chat completion: {str(data)[:200]}") from e
    content = (choice.get("logprobs") or {}).get("content") or []
    lps = [float(c["logprob"]) for c in content if "logprob" in c]
    toks = [str(c.get("token", "")) for c in content if "logprob" in c]
    tops = [top_map(c) for c in content]
    entropies = [entropy_of_logprobs(np.fromiter(t.values(), float)) for t in tops if t]
    result = LMResult(
        text=text,
        model=model,
        token_logprobs=lps,
        tokens=toks or None,
        entropies=entropies or None,
        top_logprobs=tops or None,
        finish_reason=choice.get("finish_reason"),
        has_logprobs=bool(content),
    )
    if matcher is not None:
        answered = matcher.match_text(text)
        if tops and tops[0]:
            pairs = [(matcher.match_token(tok), lp) for tok, lp in tops[0].items()]
            result.label_probs, result.label_mass = label_distribution(pairs, matcher.labels)
            if answered is None and not result.label_mass:
                result.label_probs = None  # outside the label set, and no label in view
            # otherwise the level decides whether the labels' share of the first token's
            # mass is enough to read an answer that starts a sentence (MIN_LABEL_MASS)
        elif answered is not None:
            result.label_probs = {lab: float(lab == answered) for lab in matcher.labels}
            result.label_mass = math.nan
    return result

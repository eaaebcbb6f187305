"""Prompt rendering and the mapping from what an LM says to a task's labels."""

from __future__ import annotations

import re

from cascade.config import PromptConfig

Message = dict[str, str]


def render_messages(prompt: PromptConfig, text: str) -> list[Message]:
    """Chat messages for one input; ``{input}`` is replaced literally (no str.format surprises)."""
    msgs: list[Message] = []
    if prompt.system:
        msgs.append({"role": "system", "content": prompt.system})
    msgs.append({"role": "user", "content": prompt.user.replace("{input}", text)})
    return msgs


_NON_WORD = re.compile(r"[^a-z0-9]+")


def normalise_word(s: str) -> str:
    return _NON_WORD.sub("", s.lower())


class LabelMatcher:
    """Maps an LM's answer (a token or a short text) to a label, or to None when it is none.

    A token matches a label when its normalised text is a non-empty prefix of exactly one label
    word: "Pos", "positive" and " POSITIVE" all mean positive; "the" means nothing.
    """

    def __init__(self, labels: list[str], words: dict[str, str] | None = None) -> None:
        self.labels = list(labels)
        words = words or {}
        self.words = {lab: normalise_word(words.get(lab, lab)) for lab in self.labels}
        empty = [lab for lab, w in self.words.items() if not w]
        if empty:
            raise ValueError(f"labels {empty} have no letters or digits to match an answer on")
        seen: dict[str, str] = {}
        for lab, w in self.words.items():
            if w in seen:
                raise ValueError(f"labels {seen[w]!r} and {lab!r} have the same word {w!r}")
            seen[w] = lab

    def match_token(self, token: str) -> str | None:
        t = normalise_word(token)
        if not t:
            return None
        hits = [lab for lab, w in self.words.items() if w.startswith(t)]
        return hits[0] if len(hits) == 1 else None

    def match_text(self, text: str) -> str | None:
        """The label an answer names: its first word, read as a whole word or a unique prefix."""
        first = text.strip().split(maxsplit=1)
        if not first:
            return None
        word = normalise_word(first[0])
        exact = [lab for lab, w in self.words.items() if w == word]
        if exact:
            return exact[0]
        return self.match_token(word)

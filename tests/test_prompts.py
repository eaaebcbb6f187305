"""What an LM says mapped to a task's labels, and prompt rendering."""

from __future__ import annotations

import pytest

from cascade.config import PromptConfig
from cascade.prompts import LabelMatcher, normalise_word, render_messages

PN = LabelMatcher(["positive", "negative"])


@pytest.mark.parametrize(
    ("token", "label"),
    [
        ("positive", "positive"),
        ("Pos", "positive"),
        (" POSITIVE", "positive"),
        ("p", "positive"),
        ("neg", "negative"),
        (" Negative", "negative"),
        ("NEGATIVE\n", "negative"),
        ("the", None),
        ("positively", None),  # longer than the label word: not a prefix of it
        ("", None),
        ("   ", None),
        ("...", None),
        ("n't", None),  # "nt" is no prefix of "negative"
    ],
)
def test_match_token(token: str, label: str | None) -> None:
    assert PN.match_token(token) == label


@pytest.mark.parametrize(
    ("text", "label"),
    [
        ("positive", "positive"),
        ("Positive.", "positive"),
        ("  NEGATIVE!\n", "negative"),
        ("negative, because the acting is poor", "negative"),
        ("Pos", "positive"),
        ("The review is positive", None),  # only the first word counts
        ("neutral", None),
        ("", None),
        ("   \n", None),
    ],
)
def test_match_text(text: str, label: str | None) -> None:
    assert PN.match_text(text) == label


def test_ambiguous_prefix_matches_nothing() -> None:
    m = LabelMatcher(["politics", "positive", "sport"])
    assert m.match_token("po") is None  # politics or positive
    assert m.match_token("pol") == "politics"
    assert m.match_token("pos") == "positive"
    assert m.match_token("s") == "sport"
    assert m.match_text("Po") is None


def test_whole_word_beats_ambiguous_prefix() -> None:
    m = LabelMatcher(["yes", "yesterday"])
    assert m.match_token("yes") is None  # as a token it could begin either word
    assert m.match_text("Yes.") == "yes"  # as a whole answer it is the word itself
    assert m.match_text("yesterday") == "yesterday"
    assert m.match_text("yest") == "yesterday"


def test_label_words() -> None:
    m = LabelMatcher(["pos", "neg"], {"pos": "Positive", "neg": "negative"})
    assert m.words == {"pos": "positive", "neg": "negative"}
    assert m.match_text("Positive") == "pos"
    assert m.match_token(" neg") == "neg"
    assert m.match_text("pos") == "pos"  # "pos" is a prefix of "positive"
    # labels without a label word are matched on the label itself
    m = LabelMatcher(["a_ok", "bad"], {"a_ok": "good"})
    assert m.match_text("good") == "a_ok"
    assert m.match_text("bad") == "bad"


@pytest.mark.parametrize(
    ("labels", "words"),
    [
        (["Yes", "yes"], None),
        (["well-done", "welldone"], None),
        (["pos", "neg"], {"pos": "good", "neg": "Good!"}),
        (["yes", "no"], {"no": "YES"}),
    ],
)
def test_duplicate_words_rejected(labels: list[str], words: dict[str, str] | None) -> None:
    with pytest.raises(ValueError, match="same word"):
        LabelMatcher(labels, words)


def test_label_without_letters_rejected() -> None:
    with pytest.raises(ValueError, match="no letters or digits"):
        LabelMatcher(["ok", "???"])


def test_normalise_word() -> None:
    assert normalise_word(" Hello, World! ") == "helloworld"
    assert normalise_word("A-1_b") == "a1b"
    assert normalise_word("—") == ""


def test_numeric_labels() -> None:
    m = LabelMatcher(["1", "2", "10"])
    assert m.match_text("10") == "10"
    assert m.match_text("2 stars") == "2"
    assert m.match_text("1") == "1"  # exact beats the prefix of "10"
    assert m.match_token("1") is None  # as a token: "1" or the start of "10"


# ------------------------------------------------------------------ render_messages


def test_render_with_system() -> None:
    p = PromptConfig(system="You classify.", user="Review: {input}\nAnswer:")
    assert render_messages(p, "a fine film") == [
        {"role": "system", "content": "You classify."},
        {"role": "user", "content": "Review: a fine film\nAnswer:"},
    ]


def test_render_without_system() -> None:
    assert render_messages(PromptConfig(), "hello") == [{"role": "user", "content": "hello"}]


def test_render_is_literal() -> None:
    # braces in the template or the input are not str.format fields
    p = PromptConfig(user='Reply as JSON {"label": ...} for: {input}')
    out = render_messages(p, "use {0} and {input} and {name}")
    assert out[0]["content"] == 'Reply as JSON {"label": ...} for: use {0} and {input} and {name}'


def test_render_replaces_every_placeholder() -> None:
    p = PromptConfig(user="{input} / {input}")
    assert render_messages(p, "x")[0]["content"] == "x / x"


def test_prompt_config_rejects_template_without_input() -> None:
    with pytest.raises(ValueError, match="input"):
        PromptConfig(user="no placeholder")

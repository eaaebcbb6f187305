"""Configuration loading: the default file, and errors that name the file and the field (a bad
file must stop start-up with a message, never fail later). Interpolation and the CLI:
tests/test_config_cli.py."""

from __future__ import annotations

from pathlib import Path

import pytest

from cascade.config import DEFAULT_CONFIG, ConfigError, load_config
from tests.conftest import ROOT

# A small valid configuration; the cases below each break one thing in it.
BASE = """
backends:
  small: {kind: llama, model: small.gguf}
  large: {kind: openai, base_url: "http://127.0.0.1:9/v1", model: big}
  enc: {kind: encoder}
tasks:
  sentiment:
    kind: classify
    labels: [positive, negative]
    prompt:
      user: "Review: {input}"
    levels:
      - {name: logistic, kind: logistic, cost: 0.001}
      - {name: small, kind: local_lm, backend: small, cost: 0.1}
      - {name: large, kind: openai, backend: large, cost: 1.0}
"""


def write(tmp_path: Path, text: str, name: str = "config.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def load_error(path: Path, env: dict[str, str] | None = None) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(path, env=env or {})
    return str(info.value)


def test_base_config_is_valid(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, BASE), env={})
    task = cfg.tasks["sentiment"]
    assert [lv.name for lv in task.levels] == ["logistic", "small", "large"]
    assert task.labels == ["positive", "negative"]
    assert cfg.backends["large"].kind == "openai"


@pytest.mark.parametrize("base_url", [None, "http://10.1.2.3:8081/v1"])
def test_default_deploy_config_loads(base_url: str | None) -> None:
    env = {} if base_url is None else {"LLM_BASE_URL": base_url}
    cfg = load_config(DEFAULT_CONFIG, env=env)
    assert DEFAULT_CONFIG == ROOT / "deploy" / "config.yaml"
    assert set(cfg.tasks) >= {"sentiment", "chat"}
    large = cfg.backends["large"]
    assert large.kind == "openai"
    assert large.base_url == base_url  # unset: None, so `serve` starts the local server
    assert large.model and "$" not in large.model  # ${LLM_MODEL:-...}'s default
    assert load_config(DEFAULT_CONFIG, env={**env, "LLM_MODEL": "m-1"}).backends["large"].model == (
        "m-1"
    )
    assert large.api_key is None
    for task in cfg.tasks.values():
        assert task.levels[-1].kind in ("openai", "local_lm")
    assert cfg.tasks["sentiment"].labels == ["positive", "negative"]


def test_default_used_when_no_path_given() -> None:
    assert (
        load_config(None, env={}).tasks.keys() == load_config(DEFAULT_CONFIG, env={}).tasks.keys()
    )


# ------------------------------------------------------------------ errors


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.yaml"
    msg = load_error(path)
    assert str(path) in msg
    assert "cannot read" in msg


def test_invalid_yaml(tmp_path: Path) -> None:
    path = write(tmp_path, "tasks: [unclosed\n")
    msg = load_error(path)
    assert str(path) in msg
    assert "invalid YAML" in msg
    assert "line 1" in msg  # where in the file


@pytest.mark.parametrize("text", ["- a\n- b\n", "just a string\n", ""])
def test_top_level_not_a_mapping(tmp_path: Path, text: str) -> None:
    path = write(tmp_path, text)
    msg = load_error(path)
    assert str(path) in msg
    assert "top level must be a mapping" in msg


# (what to replace in BASE, with what, the field the message must name, words it must contain)
CASES = {
    "unknown level kind": (
        "kind: local_lm, backend: small",
        "kind: oracle, backend: small",
        "tasks.sentiment.levels.1.kind",
        ["logistic", "local_lm"],
    ),
    "last level not an LM": (
        "- {name: large, kind: openai, backend: large, cost: 1.0}",
        "- {name: large, kind: encoder, backend: enc, cost: 1.0}",
        "tasks.sentiment",
        ["last level", "must be an LM"],
    ),
    "unknown backend": (
        "kind: openai, backend: large",
        "kind: openai, backend: huge",
        "tasks.sentiment.levels.large",
        ["unknown backend 'huge'", "known: ['enc', 'large', 'small']"],
    ),
    "backend of the wrong kind": (
        "kind: local_lm, backend: small",
        "kind: local_lm, backend: enc",
        "tasks.sentiment.levels.small",
        ["needs a llama backend", "'enc' is encoder"],
    ),
    "level without a backend": (
        "kind: local_lm, backend: small,",
        "kind: local_lm,",
        "tasks.sentiment.levels.small",
        ["needs a backend"],
    ),
    "classify without labels": (
        "labels: [positive, negative]",
        "labels: []",
        "tasks.sentiment",
        ["at least two labels"],
    ),
    "classify with one label": (
        "labels: [positive, negative]",
        "labels: [positive]",
        "tasks.sentiment",
        ["at least two labels"],
    ),
    "duplicate labels": (
        "labels: [positive, negative]",
        "labels: [positive, negative, positive]",
        "tasks.sentiment",
        ["unique"],
    ),
    "user template without input": (
        'user: "Review: {input}"',
        'user: "Review this"',
        "tasks.sentiment.prompt.user",
        ["{input}"],
    ),
    "generate task with a logistic level": (
        "kind: classify\n    labels: [positive, negative]",
        "kind: generate",
        "tasks.sentiment",
        ["'logistic'", "classify"],
    ),
    "label_words naming unknown labels": (
        "labels: [positive, negative]",
        "labels: [positive, negative]\n    label_words: {neutral: meh, positive: good}",
        "tasks.sentiment",
        ["label_words", "neutral"],
    ),
    "unknown field": (
        "cost: 0.001}",
        "cost: 0.001, treshold: 0.5}",
        "tasks.sentiment.levels.0.treshold",
        ["not permitted"],
    ),
    "negative cost": (
        "cost: 0.001}",
        "cost: -1}",
        "tasks.sentiment.levels.0.cost",
        ["greater than 0"],
    ),
    "fuse naming a level that does not come before": (
        "backend: large, cost: 1.0}",
        "backend: large, cost: 1.0, params: {fuse: [smal]}}",
        "tasks.sentiment",
        ["params.fuse names 'smal'", "earlier levels: ['logistic', 'small']"],
    ),
    "fuse with a level that is no LM": (
        "backend: large, cost: 1.0}",
        "backend: large, cost: 1.0, params: {fuse: [logistic]}}",
        "tasks.sentiment",
        ["'logistic' is a logistic", "only LM levels"],
    ),
    "fuse on a cheaper level": (
        "backend: small, cost: 0.1}",
        "backend: small, cost: 0.1, params: {fuse: [logistic]}}",
        "tasks.sentiment",
        ["'small'", "only the last level"],
    ),
    "fuse with a level that prompts with learned examples": (
        "backend: small, cost: 0.1}\n"
        "      - {name: large, kind: openai, backend: large, cost: 1.0}",
        "backend: small, cost: 0.1, params: {icl_k: 4}}\n"
        "      - {name: large, kind: openai, backend: large, cost: 1.0, params: {fuse: small}}",
        "tasks.sentiment",
        ["icl_k", "not zero-shot"],
    ),
    "misspelt level setting (prob)": (
        "backend: small, cost: 0.1}",
        "backend: small, cost: 0.1, params: {prob: true}}",
        "tasks.sentiment.levels.1",
        ["level 'small' (local_lm)", "unknown setting 'prob'", "probe, probe_c"],
    ),
    "misspelt level setting (stak)": (
        "backend: small, cost: 0.1}",
        "backend: small, cost: 0.1, params: {stak: [logistic]}}",
        "tasks.sentiment.levels.1",
        ["unknown setting 'stak'", "stack"],
    ),
    "misspelt level setting (icl_kk)": (
        "backend: small, cost: 0.1}",
        "backend: small, cost: 0.1, params: {icl_kk: 2}}",
        "tasks.sentiment.levels.1",
        ["unknown setting 'icl_kk'", "icl_k"],
    ),
    "mistyped level setting": (
        "backend: small, cost: 0.1}",
        "backend: small, cost: 0.1, params: {probe_c: lots}}",
        "tasks.sentiment.levels.1",
        ["level 'small'", "probe_c", "number"],
    ),
    "logistic setting of another kind": (
        "cost: 0.001}",
        "cost: 0.001, params: {probe: true}}",
        "tasks.sentiment.levels.0",
        ["level 'logistic' (logistic)", "unknown setting 'probe'", "n_features"],
    ),
    "negative prior": (
        "backend: small, cost: 0.1}",
        "backend: small, cost: 0.1, policy: {target_agreement: 0.9, prior: -1}}",
        "tasks.sentiment.levels.1.policy",
        ["prior", "greater than or equal to 0"],
    ),
    "explore_need not a whole number": (
        "backend: small, cost: 0.1}",
        "backend: small, cost: 0.1, policy: {target_agreement: 0.9, explore_need: 2.5}}",
        "tasks.sentiment.levels.1.policy",
        ["explore_need", "integer"],
    ),
    "stack naming a later level": (
        "backend: small, cost: 0.1}",
        "backend: small, cost: 0.1, params: {stack: [large]}}",
        "tasks.sentiment",
        ["params.stack names ['large']", "earlier levels: ['logistic']"],
    ),
}


def test_level_settings_have_their_defaults_in_one_place(tmp_path: Path) -> None:
    from cascade.level_settings import LocalLMSettings, LogisticSettings

    cfg = load_config(write(tmp_path, BASE))
    levels = cfg.tasks["sentiment"].levels
    assert levels[0].settings(LogisticSettings).n_features == 2**18
    assert levels[1].settings(LocalLMSettings).probe is False
    with pytest.raises(TypeError, match="is a logistic"):
        levels[0].settings(LocalLMSettings)


@pytest.mark.parametrize("case", list(CASES))
def test_config_errors_name_file_and_field(tmp_path: Path, case: str) -> None:
    old, new, field, words = CASES[case]
    assert old in BASE, "the case must change the base configuration"
    path = write(tmp_path, BASE.replace(old, new, 1))
    msg = load_error(path)
    assert str(path) in msg
    assert field in msg, msg
    for w in words:
        assert w in msg, msg


def test_every_problem_is_listed(tmp_path: Path) -> None:
    text = BASE.replace("cost: 0.001}", "cost: 0}").replace("model: big}", "model: big, x: 1}")
    msg = load_error(write(tmp_path, text))
    assert "tasks.sentiment.levels.0.cost" in msg
    assert "backends.large" in msg and ".x" in msg


def test_labels_with_the_same_word_are_a_config_error(tmp_path: Path) -> None:
    path = write(tmp_path, BASE.replace("[positive, negative]", "[Positive, positive]"))
    msg = load_error(path)
    assert str(path) in msg
    assert "tasks.sentiment" in msg and "same word" in msg


def test_unknown_policy_kind_is_a_config_error(tmp_path: Path) -> None:
    path = write(tmp_path, BASE.replace("cost: 0.001}", "cost: 0.001, policy: {kind: magic}}"))
    msg = load_error(path)
    assert str(path) in msg and "magic" in msg and "tasks.sentiment.levels.0" in msg

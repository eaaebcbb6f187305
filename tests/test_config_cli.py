"""Configuration loading, continued: ``${VAR}`` interpolation and the CLI stopping on a bad
file (the error names the file and the field before anything starts)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from cascade.config import load_config
from tests.conftest import ROOT
from tests.test_config import BASE, load_error, write

# ------------------------------------------------------------------ interpolation

INTERP = """
backends:
  large:
    kind: openai
    base_url: ${LLM_BASE_URL}
    model: ${LLM_MODEL:-fallback-model}
    api_key: ${LLM_API_KEY}
    timeout_s: ${LLM_TIMEOUT:-7.5}
tasks:
  chat:
    kind: generate
    levels:
      - {name: large, kind: openai, backend: large, cost: 1.0}
"""


def test_interpolation_from_env(tmp_path: Path) -> None:
    path = write(tmp_path, INTERP)
    env = {
        "LLM_BASE_URL": "http://gpu-box:8000/v1",
        "LLM_MODEL": "qwen",
        "LLM_API_KEY": "sk-123",
        "LLM_TIMEOUT": "12",
    }
    large = load_config(path, env=env).backends["large"]
    assert large.base_url == "http://gpu-box:8000/v1"
    assert large.model == "qwen"
    assert large.api_key == "sk-123"
    assert large.timeout_s == 12.0


def test_interpolation_defaults_and_unset(tmp_path: Path) -> None:
    path = write(tmp_path, INTERP)
    large = load_config(path, env={}).backends["large"]
    assert large.base_url is None  # ${VAR} unset: null, not the literal text
    assert large.api_key is None
    assert large.model == "fallback-model"  # ${VAR:-default}
    assert large.timeout_s == 7.5
    # an empty value counts as unset, as in the shell's ${VAR:-default}
    large = load_config(path, env={"LLM_MODEL": "", "LLM_API_KEY": ""}).backends["large"]
    assert large.model == "fallback-model"
    assert large.api_key is None


def test_interpolation_reads_os_environ_by_default(tmp_path: Path) -> None:
    path = write(tmp_path, INTERP)
    name = "LLM_BASE_URL"
    old = os.environ.get(name)
    os.environ[name] = "http://from-environ:1/v1"
    try:
        assert load_config(path).backends["large"].base_url == "http://from-environ:1/v1"
    finally:
        if old is None:
            del os.environ[name]
        else:
            os.environ[name] = old


def test_interpolated_value_is_validated(tmp_path: Path) -> None:
    path = write(tmp_path, INTERP)
    msg = load_error(path, env={"LLM_TIMEOUT": "soon"})
    assert str(path) in msg
    assert "backends.large" in msg and "timeout_s" in msg


# ------------------------------------------------------------------ the CLI


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    exe = Path(sys.executable).parent / "cascade-gateway"
    full_env = {k: v for k, v in os.environ.items() if not k.startswith(("CASCADE_", "LLM_"))}
    full_env.update(env or {})
    return subprocess.run(
        [str(exe), *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=full_env,
        cwd=ROOT,
    )


def test_serve_with_bad_config_exits_2(tmp_path: Path) -> None:
    path = write(
        tmp_path, BASE.replace("kind: local_lm, backend: small", "kind: oracle"), "bad.yaml"
    )
    proc = run_cli("serve", "--config", str(path), "--no-llm-server", "--port", "1")
    assert proc.returncode == 2, proc.stderr
    assert "cascade-gateway:" in proc.stderr
    assert str(path) in proc.stderr
    assert "tasks.sentiment.levels.1.kind" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_serve_with_missing_config_exits_2(tmp_path: Path) -> None:
    path = tmp_path / "missing.yaml"
    proc = run_cli("serve", "--config", str(path), "--no-llm-server", "--port", "1")
    assert proc.returncode == 2, proc.stderr
    assert str(path) in proc.stderr
    assert "cannot read" in proc.stderr


def test_fuse_on_a_generate_task_is_a_config_error(tmp_path: Path) -> None:
    text = BASE.replace("kind: classify\n    labels: [positive, negative]", "kind: generate")
    text = text.replace("      - {name: logistic, kind: logistic, cost: 0.001}\n", "")
    text = text.replace(
        "backend: large, cost: 1.0}", "backend: large, cost: 1.0, params: {fuse: [small]}}"
    )
    msg = load_error(write(tmp_path, text))
    assert "params.fuse is for classify tasks" in msg, msg


def test_fuse_is_read_as_a_list_of_earlier_level_names(tmp_path: Path) -> None:
    text = BASE.replace(
        "backend: large, cost: 1.0}", "backend: large, cost: 1.0, params: {fuse: small}}"
    )
    task = load_config(write(tmp_path, text), env={}).tasks["sentiment"]
    assert task.fuse_names() == ["small"]
    assert (
        load_config(write(tmp_path, BASE, "plain.yaml"), env={}).tasks["sentiment"].fuse_names()
        == []
    )


MISSPELT = BASE.replace(
    "backend: small, cost: 0.1}", "backend: small, cost: 0.1, params: {stak: [x]}}"
)


@pytest.mark.parametrize(
    "command", [["config", "check"], ["serve", "--no-llm-server", "--port", "9", "--config"]]
)
def test_misspelt_level_setting_stops_the_cli(tmp_path: Path, command: list[str]) -> None:
    """`config check` (for deployers' CI) and start-up both refuse it, naming every part."""
    import subprocess
    import sys

    path = write(tmp_path, MISSPELT)
    exe = Path(sys.executable).with_name("cascade-gateway")
    r = subprocess.run([str(exe), *command, str(path)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2, (r.stdout, r.stderr)
    for part in (str(path), "tasks.sentiment.levels.1", "level 'small'", "unknown setting 'stak'"):
        assert part in r.stderr, r.stderr


def test_config_check_passes_the_default_file() -> None:
    import subprocess
    import sys

    exe = Path(sys.executable).with_name("cascade-gateway")
    r = subprocess.run([str(exe), "config", "check"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "sentiment: classify, logistic (logistic) -> encoder (encoder)" in r.stdout
    assert r.stdout.strip().endswith("(2 tasks)")

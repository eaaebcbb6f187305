from __future__ import annotations

import gc
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import yaml

from cascade.llm_server import free_port
from tests.conftest import MODELS, SMOL, make_settings, running_app


async def test_sentiment_end_to_end(
    tmp_path: Path, config_path: Path, redis_settings: dict
) -> None:
    settings = make_settings(tmp_path, config_path, **redis_settings)
    async with running_app(settings) as client:
        r = await client.post("/generate", json={"task": "sentiment", "input": "a warm film"})
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["level"] == "large"
        r2 = await client.post("/generate", json={"task": "sentiment", "input": "a warm film"})
        assert r2.json()["cached"] is True
        stats = (await client.get("/admin/stats")).json()
        assert stats["tasks"]["sentiment"]["requests"] == 2


async def test_startup_objects_are_kept_out_of_full_collections(
    tmp_path: Path, config_path: Path
) -> None:
    """While serving, what startup built is frozen (full collections skip it); once the app
    stops it is unfrozen, so a process that builds another app can collect this one."""
    async with running_app(make_settings(tmp_path, config_path)) as client:
        assert gc.get_freeze_count() > 10_000  # modules, models, configuration
        r = await client.post("/generate", json={"task": "sentiment", "input": "a warm film"})
        assert r.status_code == 200, r.text
    assert gc.get_freeze_count() == 0


def _serve(tmp_path: Path, **extra_env: str) -> tuple[subprocess.Popen[bytes], int]:
    """`cascade-gateway serve` for a task whose large LM has no endpoint: serve starts
    llama.cpp's server (SmolLM2) itself and sets LLM_BASE_URL."""
    config = tmp_path / "config.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "backends": {
                    "large": {"kind": "openai", "model": "smol", "base_url": "${LLM_BASE_URL}"}
                },
                "tasks": {
                    "sentiment": {
                        "kind": "classify",
                        "labels": ["positive", "negative"],
                        "prompt": {"user": "{input} Positive or negative?"},
                        "levels": [
                            {"name": "large", "kind": "openai", "backend": "large", "cost": 1}
                        ],
                    }
                },
            }
        )
    )
    port = free_port()
    env = {
        **os.environ,
        "CASCADE_MODELS_DIR": str(MODELS),
        "CASCADE_DATA_DIR": str(tmp_path / "data"),
        "CASCADE_LOCAL_LLM_MODEL": str(MODELS / SMOL),
        "LLM_MODEL": "smol",
        **extra_env,
    }
    env.pop("LLM_BASE_URL", None)
    env.pop("REDIS_URL", None)
    exe = Path(sys.executable).with_name("cascade-gateway")
    serve = subprocess.Popen(
        [str(exe), "serve", "--config", str(config), "--port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    return serve, port


def _children(pid: int) -> list[int]:
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True, check=False)
    return [int(p) for p in out.stdout.split()]


def _assert_gone(pids: list[int], timeout_s: float = 15.0) -> None:
    for pid in pids:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.1)
        else:
            raise AssertionError(f"llama.cpp server {pid} outlived serve")


@pytest.mark.slow  # `cascade-gateway serve` and llama.cpp's server as subprocesses
def test_serve_stops_its_llm_server_on_sigterm(tmp_path: Path) -> None:
    """`serve` starts llama.cpp's server for a large LM without an endpoint, and a SIGTERM
    (what docker stop, systemd and Ctrl-C in a supervisor send) stops it too: uvicorn
    re-raises the signal after its shutdown, which used to kill serve before its cleanup.

    PORT and HOST are set as a platform (or `make serve PORT=...`) sets them: llama.cpp's
    server reads them over its own flags and used to take the gateway's port."""
    decoy = free_port()
    serve, port = _serve(tmp_path, PORT=str(decoy), HOST="127.0.0.1")
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert serve.poll() is None, "serve exited early"
            time.sleep(0.2)
        else:
            raise AssertionError("serve never became ready")
        r = httpx.post(
            f"http://127.0.0.1:{port}/generate", json={"task": "sentiment", "input": "great"}
        )
        assert r.status_code in (200, 503), r.text  # answered by the gateway, via the LM
        with pytest.raises(httpx.ConnectError):  # nothing took the PORT of the environment
            httpx.get(f"http://127.0.0.1:{decoy}/v1/models", timeout=2)
        kids = _children(serve.pid)
        assert kids, "serve started no llama.cpp server"
        serve.send_signal(signal.SIGTERM)
        serve.wait(timeout=30)
        _assert_gone(kids)
    finally:
        if serve.poll() is None:
            serve.kill()


@pytest.mark.slow  # `cascade-gateway serve` and llama.cpp's server as subprocesses
def test_sigterm_while_the_llm_server_loads_stops_it(tmp_path: Path) -> None:
    """A SIGTERM before llama.cpp's server is ready (a deploy rolled back, Ctrl-C at start)
    stops it too: it runs in its own session, so no signal to serve reaches it."""
    serve, _ = _serve(tmp_path)
    try:
        deadline = time.monotonic() + 30
        while not (kids := _children(serve.pid)):
            assert time.monotonic() < deadline, "serve started no llama.cpp server"
            time.sleep(0.02)
        # its Python imports alone take over a second: it cannot be ready yet
        serve.send_signal(signal.SIGTERM)
        assert serve.wait(timeout=30) != 0
        _assert_gone(kids)
    finally:
        if serve.poll() is None:
            serve.kill()

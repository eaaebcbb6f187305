"""In-process models run below the thread that serves requests (CASCADE_MODEL_NICE), so that on
a busy machine a cache hit does not wait behind a model's token loop.

Real parts: SmolLM2 in-process, the real app over httpx's ASGI transport, the kernel's own
per-thread priorities read back from /proc.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

from cascade.llm_server import LocalLLMServer
from tests.conftest import make_settings, running_app, write_config

NICE = 13  # above the default (10): a thread an earlier test lowered is lowered again here


def thread_nices() -> dict[int, int]:
    """Each thread of this process and its nice value, as the kernel schedules it."""
    out = {}
    for tid in os.listdir("/proc/self/task"):
        try:
            stat = Path(f"/proc/self/task/{tid}/stat").read_text()
        except OSError:  # the thread ended meanwhile
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        out[int(tid)] = int(fields[16])  # field 19 of stat: nice
    return out


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="needs Linux /proc")
async def test_models_run_below_the_serving_thread(
    tmp_path: Path, shared_backends: dict, smol_server: LocalLLMServer
) -> None:
    base = os.getpriority(os.PRIO_PROCESS, os.getpid())
    assert base + NICE <= 19, "the test process itself runs too low to lower a thread further"
    config = write_config(tmp_path / "config.yaml", smol_server.base_url, small_threshold=0.0)
    settings = make_settings(tmp_path, config, CASCADE_MODEL_NICE=NICE)
    ran_in: list[int] = []
    small = shared_backends["small"]
    original = small.iter_generate

    def spy(*args: object, **kwargs: object):  # which thread ran the model, seen from inside
        ran_in.append(threading.get_native_id())
        return original(*args, **kwargs)

    small.iter_generate = spy
    try:
        async with running_app(settings, shared_backends) as client:
            r = await client.post("/generate", json={"task": "chat", "input": "What is 2+2?"})
            assert r.status_code == 200, r.text
            assert r.json()["level"] == "small"
            nices = thread_nices()
    finally:
        del small.iter_generate
    assert ran_in, "the small LM did not run"
    loop_thread = threading.get_native_id()
    assert ran_in[0] != loop_thread
    assert nices[loop_thread] == base  # the event loop serves at the process's own priority
    assert nices[ran_in[0]] == base + NICE  # the model's thread is lowered


def test_a_model_run_in_the_main_thread_never_lowers_it(shared_backends: dict) -> None:
    """Tests, scripts and a synchronous caller run models in the main thread, which is the
    serving thread in the gateway: it must keep its priority."""
    from cascade.backends import base as backend_base

    before = backend_base._model_nice
    base = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    backend_base.set_model_nice(5)
    try:
        shared_backends["small"].generate([{"role": "user", "content": "Say hi."}], 2)
    finally:
        backend_base.set_model_nice(before)
    assert os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) == base


async def test_model_nice_zero_leaves_threads_alone() -> None:
    from cascade.backends import base as backend_base
    from cascade.backends.base import model_thread, set_model_nice

    before = backend_base._model_nice
    seen: list[int] = []

    def work() -> None:
        model_thread()
        seen.append(os.getpriority(os.PRIO_PROCESS, threading.get_native_id()))

    base = os.getpriority(os.PRIO_PROCESS, os.getpid())
    set_model_nice(0)
    try:
        t = threading.Thread(target=work)
        t.start()
        t.join()
    finally:
        set_model_nice(before)
    assert seen == [base]

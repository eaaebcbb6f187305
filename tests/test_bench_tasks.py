"""`bench tasks`: real `cascade-gateway serve` processes with copies of the classify tasks."""

from __future__ import annotations

from pathlib import Path

import yaml

from bench.tasks import TasksArgs, many_tasks, tasks_bench
from tests.conftest import write_config


def test_copies_share_the_backends(tmp_path: Path) -> None:
    base = yaml.safe_load(write_config(tmp_path / "c.yaml", "http://127.0.0.1:9/v1").read_text())
    classify = [n for n, t in base["tasks"].items() if t["kind"] == "classify"]
    many = many_tasks(base, 3)
    assert len(many["tasks"]) == 3 * len(classify)
    assert f"{classify[0]}-02" in many["tasks"] and many["backends"] == base["backends"]
    assert all(t["kind"] == "classify" for t in many["tasks"].values())


def test_gateways_with_more_tasks_start_and_list_them_all(tmp_path: Path) -> None:
    config = write_config(tmp_path / "config.yaml", "http://127.0.0.1:9/v1")
    out = tmp_path / "tasks.json"
    payload = tasks_bench(
        TasksArgs(counts=(1, 4), config=config, timeout_s=300, out=out, write_doc=False)
    )
    one, four = payload["points"]
    assert one["tasks"] < four["tasks"]  # every classify task, 1 and 4 copies
    for p in (one, four):
        assert p["start_s"] > 0 and p["rss_mb"] > 100  # the models are in memory
        assert sum(p["statuses"].values()) == p["tasks"]  # one answer per task
        assert set(p["statuses"]) <= {"200", "503"}  # never a 500
    # the models are loaded once: more tasks cost far less than another copy of them
    assert four["rss_mb"] - one["rss_mb"] < 0.5 * one["rss_mb"]
    assert out.is_file()


def test_a_server_that_dies_while_starting_fails_at_once(tmp_path: Path) -> None:
    """bench load and bench tasks wait for their servers through bench.procs: a child that
    exits before it answers is an error then, not after the whole wait."""
    import os
    import sys
    import time

    import pytest

    from bench.procs import process
    from cascade.llm_server import free_port

    cmd = [sys.executable, "-c", "import sys; print('no config'); sys.exit(3)"]
    log = tmp_path / "child.log"
    t0 = time.monotonic()
    url = f"http://127.0.0.1:{free_port()}/"
    with (
        pytest.raises(RuntimeError, match="exited with 3"),
        process(cmd, dict(os.environ), url, 60.0, log),
    ):
        pass
    assert time.monotonic() - t0 < 30 and "no config" in log.read_text()

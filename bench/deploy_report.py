"""The ``deploy-check`` section of docs/BENCHMARKS.md, from ``make deploy-check``'s JSON."""

from __future__ import annotations

from typing import Any

from bench.report import machine, md_table, stamp, write_section


def write_doc(payload: dict[str, Any]) -> None:
    rows = [
        [s["step"], "ok" if s["ok"] else "FAILED", s["seconds"], s["detail"]]
        for s in payload["steps"]
    ]
    verdict = "every step passed" if payload["ok"] else "NOT every step passed"
    body = f"""## Compose deployment, run for real (`make deploy-check`)

{stamp()} on {machine()}, {payload["engine"]} with podman-compose: deploy/docker-compose.yml
brought up with redis, the one-shot models fetch, the llama.cpp large LM, 2 gateway replicas and
the learner, checked, then torn down with its volumes; {verdict}. Image
{payload.get("image_mb", "-")} MiB; cold start (compose up, with the pinned models fetched into
a fresh volume, to the first answer): {payload.get("cold_start_s", "-")} s.
JSON: `bench/results/deploy-check.json`.

{md_table(["step", "result", "seconds", "what it found"], rows)}
"""
    write_section("deploy-check", body)

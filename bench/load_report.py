"""The load benchmark's section of docs/BENCHMARKS.md and its throughput plot."""

from __future__ import annotations

from typing import Any

from bench.report import machine, md_table, new_figure, save_figure, stamp, write_section


def plot(payload: dict[str, Any]) -> str:
    rows = payload["runs"]
    workers = sorted({r["workers"] for r in rows})
    fig, axes = new_figure(1, len(workers), figsize=(4.2 * len(workers), 4), sharey=True)
    axes = axes if len(workers) > 1 else [axes]
    for ax, w in zip(axes, workers, strict=True):
        for path, color in (("cache_hit", "tab:blue"), ("logistic", "tab:green")):
            pts = sorted(
                (r for r in rows if r["workers"] == w and r["path"] == path),
                key=lambda r: r["connections"],
            )
            ax.plot(
                [r["connections"] for r in pts],
                [r["rps"] for r in pts],
                "o-",
                color=color,
                label=path.replace("_", " "),
            )
        fl = sorted(
            (r for r in rows if r["workers"] == w and r["path"] == "cache_hit"),
            key=lambda r: r["connections"],
        )
        ax.plot([r["connections"] for r in fl], [r["floor_rps"] for r in fl], "k--", label="floor")
        ax.set_xscale("log")
        ax.set_title(f"{w} worker(s)")
        ax.set_xlabel("connections")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("requests/s")
    axes[0].legend(fontsize=8)
    return save_figure(fig, "load.png")


def write_load_report(payload: dict[str, Any]) -> None:
    png = plot(payload)
    table = md_table(
        [
            "workers",
            "conns",
            "path",
            "req/s",
            "floor req/s",
            "vs floor",
            "p50 ms",
            "floor p50 ms",
            "p50 - floor",
            "p99 ms",
            "errors",
        ],
        [
            [
                r["workers"],
                r["connections"],
                r["path"],
                round(r["rps"]),
                round(r["floor_rps"]),
                f"{100 * r['rps_vs_floor']:.0f}%",
                r["p50_ms"],
                r["floor_p50_ms"],
                r["p50_minus_floor_ms"],
                r["p99_ms"],
                r["errors"],
            ]
            for r in payload["runs"]
        ],
    )
    ovh = payload["overhead_at_8_connections"]
    ovh_rows = md_table(
        ["path", "overhead p50 ms", "overhead p99 ms", "requests"],
        [[k, v["p50_ms"], v["p99_ms"], v["n"]] for k, v in ovh.items()],
    )
    body = f"""## Load: the cache-hit and logistic paths against a floor

Written by `cascade-gateway bench load` on {stamp()} ({machine()}); wrk in another process on
the same machine, {payload["duration_s"]} s per point. The floor is a minimal FastAPI app that
validates the body, does one Redis GET and returns JSON: what the cache-hit path cannot avoid.
Read the ratios to the floor; absolute numbers on a shared 2-core VM are not meaningful.
Targets: cache-hit throughput >= 60% of the floor's with the same workers (stretch 80%); at 1
connection, p50 within 0.3 ms of the floor's; gateway overhead p50 <= 1 ms, p99 <= 5 ms at 8
connections.

![throughput]({png})

{table}

Gateway overhead (`x-cascade-overhead-ms`: the gateway's own time, model time excluded), 1
worker, 8 concurrent clients:

{ovh_rows}
{_cpu_section(payload)}"""
    write_section("load", body)


def _cpu_section(payload: dict[str, Any]) -> str:
    cpu = payload.get("cpu_per_cache_hit")
    if not cpu:
        return ""
    g, f = cpu["gateway"], cpu["floor"]
    return f"""
CPU per cache hit, in-process (`bench/hotpath.py`: each app driven through its ASGI interface,
no HTTP and no load generator on the cores; the process's own CPU time, median of 3 runs of
4,000 requests): gateway {g["cpu_us"]} us, floor {f["cpu_us"]} us; the floor needs
{100 * cpu["floor_over_gateway"]:.0f}% of the gateway's CPU, which bounds the gateway's
cache-hit throughput against the floor's on a saturated core. This ratio is steadier than
wrk's on a shared machine.
"""

"""``bench chaos`` results: per-phase figures, the targets met or missed, a docs section, a plot.

Every target is computed from what was measured, and one that could not be exercised (no cut
answer ever injected, no demonstration delivered, no repeat in an outage phase) is missed, not
met: a check that cannot fail says nothing.
"""

from __future__ import annotations

import math
from collections import Counter
from typing import Any

from bench.chaos_services import REMOTE_NICE
from bench.report import machine, md_table, new_figure, save_figure, stamp, write_section

OUTAGE_P99_MS = 50.0
REDIS_PHASES = ("redis_sigkill", "redis_sigstop")
BASELINE_PHASES = ("healthy", "recovered")  # the same run's repeats with all well
EXAMPLES = 10  # at most this many examples per anomaly list in the summary


def _pct(xs: list[float], q: float) -> float | None:
    """Nearest-rank percentile; None for no data."""
    if not xs:
        return None
    s = sorted(xs)
    return round(s[min(len(s) - 1, max(0, math.ceil(q * len(s)) - 1))], 1)


def _is5xx(status: Any) -> bool:
    return isinstance(status, int) and status >= 500


def phase_row(phase: str, recs: list[dict[str, Any]], wall_s: float) -> dict[str, Any]:
    lat = [r["latency_ms"] for r in recs]
    rep = [r["latency_ms"] for r in recs if r["repeat"]]
    ok200 = [r for r in recs if r["status"] == 200]
    failed = [r for r in recs if _is5xx(r["status"]) or not isinstance(r["status"], int)]
    return {
        "phase": phase,
        "requests": len(recs),
        "repeats": len(rep),
        "status_counts": dict(Counter(str(r["status"]) for r in recs)),
        "5xx": sum(_is5xx(r["status"]) for r in recs),
        "p50_ms": _pct(lat, 0.5),
        "p99_ms": _pct(lat, 0.99),
        "repeat_p50_ms": _pct(rep, 0.5),
        "repeat_p99_ms": _pct(rep, 0.99),
        "throughput_rps": round(len(recs) / wall_s, 2) if wall_s > 0 else 0.0,
        "cached": sum(bool(r["cached"]) for r in ok200),
        "degraded": sum(r["degraded"] is True for r in ok200),
        "stream_error_events": sum(r["stream_end"] == "error" for r in recs),
        "streams_without_end": sum(r["stream_end"] in ("none", "bad_json") for r in ok200),
        "failures_sample": [
            {k: r.get(k) for k in ("route", "task", "status", "latency_ms")}
            | {"body": str(r.get("body") or "")[:200]}
            for r in failed[:EXAMPLES]
        ],
    }


def print_phase(row: dict[str, Any]) -> None:
    print(
        f"[bench chaos] {row['phase']:<14} {row['requests']:>5} req "
        f"{row['throughput_rps']:>6.1f}/s "
        f"5xx={row['5xx']:<4} p50={row['p50_ms']} p99={row['p99_ms']} "
        f"repeat p99={row['repeat_p99_ms']} ms  {row['status_counts']} "
        f"no/bogus key: {row.get('auth')} load={row.get('loadavg_1m')}",
        flush=True,
    )


def _flagged(r: dict[str, Any]) -> bool:
    return r["degraded"] is True or r["stream_end"] == "error"


def _minus(a: list[list[str]], b: list[list[str]], most: int = EXAMPLES) -> list[list[str]]:
    left = Counter(map(tuple, a)) - Counter(map(tuple, b))
    return [list(k) for k in left.elements()][:most]


def _target(value: Any, target: str, met: bool) -> dict[str, Any]:
    return {"value": value, "target": target, "met": bool(met)}


def summarise(run: dict[str, Any], config: dict[str, Any]) -> dict[str, Any]:
    recs = run["records"]
    phases = [
        phase_row(p, [r for r in recs if r["phase"] == p], wall)
        | {"loadavg_1m": run["loadavg"].get(p)}
        for p, wall in run["walls"].items()
    ]
    demos, delivered = run["demos"], run["delivered"]
    # a duplicate (one request id stored twice) must not hide a demonstration lost elsewhere
    kept = {t: d["stored"] - d["duplicates"] - d["marked"] for t, d in demos.items()}
    lost = sum(max(0, delivered.get(t, 0) - n) for t, n in kept.items())
    demonstrations = {
        "delivered": sum(delivered.values()),
        "stored": sum(d["stored"] for d in demos.values()),
        "lost": lost,
        "stored_truncated": sum(d["marked"] for d in demos.values()),
        "stored_empty": sum(d["empty"] for d in demos.values()),
        "stored_twice": sum(d["duplicates"] for d in demos.values()),
        "per_task": {t: {"delivered": delivered.get(t, 0), **d} for t, d in demos.items()},
        "large_answers_not_delivered": run["undelivered"],
        # which: prompts the large LM answered and no demonstration holds, and the reverse
        "delivered_not_stored": _minus(run["delivered_prompts"], run["stored_prompts"]),
        "stored_not_delivered": _minus(run["stored_prompts"], run["delivered_prompts"]),
    }
    marked = [r for r in recs if r["marker"]]
    cut_injected = sum(v for k, v in run["proxy_seen"].items() if k.startswith("cut:"))
    truncated = {
        "served_unflagged": sum(not _flagged(r) for r in marked),
        "cached": sum(bool(r["cached"]) for r in marked),
        "learned": demonstrations["stored_truncated"],
        "marker_seen": len(marked),
        "cut_answers_injected": cut_injected,
        "rechecked": run["rechecked"],
        "examples": [
            {k: r.get(k) for k in ("phase", "route", "task", "output", "cached", "degraded")}
            | {"stream_end": r["stream_end"]}
            for r in marked[:EXAMPLES]
        ],
    }
    bad = run["bad"]
    bad_fail = [b for b in bad if _is5xx(b["status"]) or not isinstance(b["status"], int)]
    bad_input = {
        "sent": len(bad),
        "5xx": sum(_is5xx(b["status"]) for b in bad),
        "no_answer": sum(not isinstance(b["status"], int) for b in bad),
        "status_counts": dict(Counter(str(b["status"]) for b in bad)),
        "failures": bad_fail[:EXAMPLES],
        "requests": [{k: b[k] for k in ("what", "route", "status")} for b in bad],
    }
    polls = run["readyz"]
    readyz = {
        "polls": len(polls),
        "status_counts": dict(Counter(str(s) for s in polls)),
        "all_200": bool(polls) and all(s == 200 for s in polls),
    }
    by = {p["phase"]: p for p in phases}
    targets = {
        "bad_input_5xx": _target(len(bad_fail), "0 (5xx or no answer)", not bad_fail),
        "lost_demonstrations": _target(
            lost, "0 (of > 0 delivered)", lost == 0 and demonstrations["delivered"] > 0
        ),
        "readyz_200_in_healthy": _target(
            f"{readyz['status_counts'].get('200', 0)}/{len(polls)}", "all", readyz["all_200"]
        ),
    }
    for key in ("served_unflagged", "cached", "learned"):
        value = truncated[key]
        targets[f"truncated_{key}"] = _target(
            value, "0 (with cut answers injected)", value == 0 and cut_injected > 0
        )
    auth = _auth(run["probes"])
    targets["auth_2xx_without_valid_key"] = _target(
        auth["answered_2xx"], "0 (of > 0 sent)", auth["answered_2xx"] == 0 and auth["sent"] > 0
    )
    targets |= _repeat_targets(by)
    return {
        "config": config,
        "phases": phases,
        "demonstrations": demonstrations,
        "truncated": truncated,
        "bad_input": bad_input,
        "auth": auth,
        "readyz": readyz,
        "targets": targets,
        "proxy_seen": run["proxy_seen"],
        "gateway": {  # `serve` exits 143 after a graceful shutdown on SIGTERM; -9: killed
            "exit_code": run["gateway_exit_code"],
            "admin_stats": run["admin_stats"],
            "log_tail": run["gateway_log_tail"],
        },
    }


def _auth(probes: list[dict[str, Any]]) -> dict[str, Any]:
    """Requests with no key or a bogus one while a key exists: any 2xx is a hole."""
    ok = [r for r in probes if isinstance(r["status"], int) and 200 <= r["status"] < 300]
    by_phase: dict[str, dict[str, dict[str, int]]] = {}
    for r in probes:
        kinds = by_phase.setdefault(r["phase"], {})
        counts = kinds.setdefault(r["kind"], {})
        counts[str(r["status"])] = counts.get(str(r["status"]), 0) + 1
    return {
        "sent": len(probes),
        "answered_2xx": len(ok),
        "no_answer": sum(not isinstance(r["status"], int) for r in probes),
        "status_counts": dict(Counter(str(r["status"]) for r in probes)),
        "by_phase": by_phase,
        "answered_examples": [
            {k: r.get(k) for k in ("phase", "kind", "route", "task", "repeat", "status", "level")}
            for r in ok[:EXAMPLES]
        ],
    }


def _repeat_targets(by: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Repeat p99 in each Redis outage against the absolute line, beside the same run's
    healthy and recovered repeats: the ratio tells a slow gateway from a slow machine."""
    base = {
        p: {"p50": by.get(p, {}).get("repeat_p50_ms"), "p99": by.get(p, {}).get("repeat_p99_ms")}
        for p in BASELINE_PHASES
    }
    out: dict[str, dict[str, Any]] = {}
    for p in REDIS_PHASES:
        v, p50 = by.get(p, {}).get("repeat_p99_ms"), by.get(p, {}).get("repeat_p50_ms")
        tg = _target(v, f"<= {OUTAGE_P99_MS:.0f}", v is not None and v <= OUTAGE_P99_MS)
        tg["p50_ms"] = p50
        tg["ratio_to_healthy"] = {
            "p50": _ratio(p50, base["healthy"]["p50"]),
            "p99": _ratio(v, base["healthy"]["p99"]),
        }
        tg["baseline_ms"] = base
        out[f"repeat_p99_{p}_ms"] = tg
    return out


def _ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 2) if a is not None and b else None


def _mark(met: bool) -> str:
    return "met" if met else "missed"


def print_summary(payload: dict[str, Any]) -> None:
    d, t, b, a = (payload[k] for k in ("demonstrations", "truncated", "bad_input", "auth"))
    keys = ("delivered", "stored", "lost", "stored_twice", "delivered_not_stored")
    print(f"[bench chaos] demonstrations: {dict((k, d[k]) for k in keys)}")
    print(f"[bench chaos] truncated: { ({k: v for k, v in t.items() if k != 'examples'}) }")
    print(f"[bench chaos] bad input: {b['sent']} sent, {b['5xx']} 5xx, {b['status_counts']}")
    print(f"[bench chaos] without a valid key: {a['sent']} sent, {a['status_counts']}")
    print(f"[bench chaos] readyz in healthy: {payload['readyz']['status_counts']}")
    print(f"[bench chaos] gateway exit code: {payload['gateway']['exit_code']}")
    for name, tg in payload["targets"].items():
        extra = f" p50 {tg['p50_ms']}, x healthy {tg['ratio_to_healthy']}" if "p50_ms" in tg else ""
        print(
            f"[bench chaos] {_mark(tg['met']):<6} {name}: {tg['value']} "
            f"(target {tg['target']}){extra}",
            flush=True,
        )


def plot(payload: dict[str, Any]) -> str:
    rows = payload["phases"]
    xs = range(len(rows))
    fig, ax = new_figure(figsize=(9, 4))
    for off, key, label in ((-0.2, "p99_ms", "all requests"), (0.2, "repeat_p99_ms", "repeats")):
        ax.bar([x + off for x in xs], [r[key] or 0 for r in rows], width=0.4, label=label)
    target = f"{OUTAGE_P99_MS:.0f} ms: repeats' target in the Redis phases"
    ax.axhline(OUTAGE_P99_MS, color="k", ls="--", lw=1, label=target)
    ax.set_xticks(list(xs), [r["phase"] for r in rows], rotation=30, ha="right")
    ax.set_yscale("log")
    ax.set_ylabel("p99 latency (ms)")
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    return save_figure(fig, "chaos.png")


def command(config: dict[str, Any]) -> str:
    return (
        f"cascade-gateway bench chaos --phase-s {config['phase_s']:g} "
        f"--clients {config['clients']} --seed {config['seed']}"
    )


def _counts(c: dict[str, int]) -> str:
    return ", ".join(f"{k}: {v}" for k, v in c.items())


def _tables(payload: dict[str, Any]) -> tuple[str, str, str, str]:
    """Per phase; status counts; repeats against the same run's baseline; targets."""
    phases, tg = payload["phases"], payload["targets"]
    keys = ("phase", "requests", "throughput_rps", "5xx", "p50_ms", "p99_ms")
    keys += ("repeat_p50_ms", "repeat_p99_ms", "loadavg_1m")
    header = ["phase", "requests", "req/s", "5xx", "p50 ms", "p99 ms", "repeat p50", "repeat p99"]
    per_phase = md_table([*header, "load 1m"], [[p.get(k) for k in keys] for p in phases])
    statuses = md_table(
        ["phase", "status counts"], [[p["phase"], _counts(p["status_counts"])] for p in phases]
    )
    by = {p["phase"]: p for p in phases}
    h = by.get("healthy", {})
    rows = [
        [name, r.get("repeat_p50_ms"), r.get("repeat_p99_ms")]
        + [_ratio(r.get(f"repeat_{q}_ms"), h.get(f"repeat_{q}_ms")) for q in ("p50", "p99")]
        for name in ("healthy", *REDIS_PHASES, "recovered")
        for r in [by.get(name, {})]
    ]
    baseline = md_table(
        ["phase", "repeat p50 ms", "repeat p99 ms", "p50 / healthy", "p99 / healthy"], rows
    )
    targets = md_table(
        ["target", "measured", "wanted", ""],
        [[k, t["value"], t["target"], _mark(t["met"])] for k, t in tg.items()],
    )
    return per_phase, statuses, baseline, targets


def write_chaos_report(payload: dict[str, Any]) -> None:
    png = plot(payload)
    cfg = payload["config"]
    per_phase, statuses, baseline, targets = _tables(payload)
    d, t, b, a = (payload[k] for k in ("demonstrations", "truncated", "bad_input", "auth"))
    body = f"""## Chaos: Redis outages and a failing large LM

Written on {stamp()} ({machine()}, {cfg["wall_s"]} s in all) by

    {command(cfg)}

A real gateway process (bench/configs/chaos.yaml; `serve --no-learner` beside a `learn`
process, the Redis layout) with a private redis-server (AOF, fsync always) and SmolLM2 on
llama.cpp as the large LM, reached through a fault-injecting proxy (bench/chaos_proxy.py, its
own process, steered over loopback). The learner, llama.cpp and the proxy stand in for other
machines and run at nice {REMOTE_NICE}, so that on this one box they do not take the gateway
replica's CPU. {cfg["clients"]} clients per phase for {cfg["phase_s"]:g} s each, {
        100
        * cfg[
            "repeat_share"
        ]:.0f}% repeats of requests the large LM answered (which every version serves
from the cache) and the rest new, on /generate and /v1/chat/completions, plain and streamed,
each with the API key made before the gateway started. Phases: `redis_sigkill` (SIGKILL,
restarted half-way), `redis_sigstop` (SIGSTOP, SIGCONT at the end), then the large LM hangs,
answers 500, 429, junk, answers cut short (a marker, then the end with no finish reason), and
empty streams. "load 1m" is the machine's 1-minute load average at the end of each phase, this
bench's own processes included.

![p99 latency per phase]({png})

{per_phase}

{statuses}

Repeats (requests answered before, which need no model) in the Redis outages, beside the same
run's repeats with all well; the pass line is the absolute one, p99 <= {OUTAGE_P99_MS:.0f} ms:

{baseline}

Demonstrations: {d["delivered"]} complete large-LM answers delivered, {d["stored"]} stored
({d["stored_twice"]} of them a second copy of one request's), {d["lost"]} lost.
Truncated answers: {t["marker_seen"]} responses carried the cut marker
({t["cut_answers_injected"]} cut answers injected); {t["served_unflagged"]} served unflagged,
{t["cached"]} from the cache, {t["learned"]} learned. Malformed input: {b["sent"]} requests,
{b["5xx"]} 5xx ({_counts(b["status_counts"])}). Without a valid key ({cfg["auth_probes"]} with
no key and {cfg["auth_probes"]} with a bogus one per phase, every other one a repeat): {a["sent"]}
requests, {a["answered_2xx"]} answered 2xx ({_counts(a["status_counts"])}).

{targets}
"""
    write_section("chaos", body)

"""Writing benchmark results: a section of docs/BENCHMARKS.md, JSON, and PNG plots.

Each benchmark owns one section of docs/BENCHMARKS.md between markers and rewrites only that
section, so several benchmarks (and re-runs) share the file. Nothing in it is written by hand.
"""

from __future__ import annotations

import datetime as _dt
import platform
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "BENCHMARKS.md"
PLOTS = ROOT / "docs" / "plots"

_HEADER = """# Benchmarks

Every section below is written by the benchmark named in it; none is edited by hand.
`make bench` runs them all. Timings are from the machine that ran them (a shared 2-core VM
unless said otherwise): read ratios measured within one run, not absolute numbers.
"""


def machine() -> str:
    return f"{platform.machine()}, {platform.python_implementation()} {platform.python_version()}"


def stamp() -> str:
    return _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%d %H:%M UTC")


def md_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    def cell(v: Any) -> str:
        if v is None:
            return "-"
        if isinstance(v, float):
            return f"{v:.4g}" if abs(v) < 1000 else f"{v:,.0f}"
        if isinstance(v, int) and not isinstance(v, bool):
            return f"{v:,}"
        return str(v)

    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell(v) for v in r) + " |" for r in rows]
    return "\n".join(lines)


def write_section(key: str, body: str, doc: Path | None = None) -> None:
    """Replace (or append) the section ``key`` of the benchmarks document."""
    doc = doc or DOC
    doc.parent.mkdir(parents=True, exist_ok=True)
    text = doc.read_text(encoding="utf-8") if doc.exists() else _HEADER
    start, end = f"<!-- bench:{key} -->", f"<!-- /bench:{key} -->"
    block = f"{start}\n{body.rstrip()}\n{end}"
    pattern = re.compile(re.escape(start) + r".*?" + re.escape(end), re.S)
    if pattern.search(text):
        text = pattern.sub(lambda _m: block, text)
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    doc.write_text(text, encoding="utf-8")


def plot_path(name: str) -> Path:
    PLOTS.mkdir(parents=True, exist_ok=True)
    return PLOTS / name


def new_figure(*args: Any, **kwargs: Any) -> tuple[Any, Any]:
    """``plt.subplots`` on the file-only backend (benchmarks run without a display);
    matplotlib is imported here, so only the benchmarks that plot need it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt.subplots(*args, **kwargs)


def save_figure(fig: Any, name: str) -> str:
    """Lay out, write docs/plots/``name`` and free the figure; its path from the docs."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    path = plot_path(name)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return relpath(path)


def relpath(p: Path) -> str:
    try:
        return str(p.relative_to(DOC.parent))
    except ValueError:
        return str(p)

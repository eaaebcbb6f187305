"""The package layout's one-way imports, read from the source with ``ast`` (nothing imported).

HTTP -> ``app`` -> ``cascade`` -> ``policies``, never back: a route never imports the app that
mounts it, the product's CLI never carries the benchmarks, ``cascade`` and ``policies`` know
nothing of ``app``, and a policy sees plain features, never ``cascade``'s objects. Every
import counts, those inside functions too: a lazy import is still a dependency.
"""

from __future__ import annotations

import ast
from pathlib import Path

from tests.conftest import ROOT


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path) -> set[str]:
    """Every module ``path`` imports: ``from a.b import c`` gives a.b and a.b.c (c may be a
    module), relative imports resolved; ``importlib.import_module("x")`` counts too."""
    package = module_name(path).split(".")
    if path.name != "__init__.py":
        package = package[:-1]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            mod = ".".join([*base, *(node.module or "").split(".")]).strip(".")
            found.add(mod)
            found.update(f"{mod}.{alias.name}" for alias in node.names)
        elif (
            isinstance(node, ast.Call)
            and getattr(node.func, "attr", getattr(node.func, "id", None))
            in ("import_module", "__import__")
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):
            found.add(node.args[0].value)
    return found


def graph(*packages: str) -> dict[str, set[str]]:
    """Module -> the modules it imports, for every source file under ``packages``."""
    files = [p for pkg in packages for p in sorted((ROOT / pkg).rglob("*.py"))]
    assert files, f"no Python files under {packages}"
    return {module_name(p): imports(p) for p in files}


def within(name: str, package: str) -> bool:
    return name == package or name.startswith(package + ".")


def offenders(g: dict[str, set[str]], importer: str, imported: str) -> dict[str, list[str]]:
    return {
        mod: sorted(i for i in deps if within(i, imported))
        for mod, deps in g.items()
        if within(mod, importer) and any(within(i, imported) for i in deps)
    }


def test_the_import_reader_sees_imports() -> None:
    """A reader that found nothing would pass every test below."""
    g = graph("app")
    assert "app.gateway" in g["app.main"] and "app.routes.generate" in g["app.main"]
    assert "app.gateway" in g["app.routes.generate"]
    assert "cascade.store" in g["app.keys"]
    assert any(within(i, "policies") for i in graph("cascade")["cascade.runtime"])


def test_routes_do_not_import_the_app() -> None:
    assert offenders(graph("app"), "app.routes", "app.main") == {}


def test_the_product_cli_carries_no_benchmarks() -> None:
    assert offenders(graph("app"), "app.cli", "bench") == {}


def test_cascade_and_policies_do_not_import_app() -> None:
    g = graph("cascade", "policies")
    assert offenders(g, "cascade", "app") == {}
    assert offenders(g, "policies", "app") == {}


def test_policies_do_not_import_cascade() -> None:
    assert offenders(graph("policies"), "policies", "cascade") == {}


def test_app_has_no_import_cycle() -> None:
    g = graph("app")
    edges = {m: {d for d in deps if d in g and d != m} for m, deps in g.items()}
    # a package's __init__ runs before its submodules: importing app.routes.x imports app.routes
    for m in g:
        parent = m.rpartition(".")[0]
        if parent in g:
            edges[m].add(parent)
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(m: str, path: list[str]) -> list[str] | None:
        state[m] = 1
        for d in sorted(edges[m]):
            if state.get(d) == 1:
                return [*path[path.index(d) :], d] if d in path else [*path, d]
            if d not in state and (cycle := visit(d, [*path, d])):
                return cycle
        state[m] = 2
        return None

    for m in sorted(g):
        cycle = None if m in state else visit(m, [m])
        assert cycle is None, "import cycle: " + " -> ".join(cycle)

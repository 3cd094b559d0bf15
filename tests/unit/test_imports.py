"""Import rules (docs/architecture.md): Ray only under platform/ (the report included: it runs
on a laptop over a copied sweep directory), a light config package, no import circles."""

import ast
import shutil
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "vldistill"
FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "sweep_rows"


def test_trainers_and_search_spaces_do_not_import_ray():
    code = ("import sys, vldistill.trainers.loop, vldistill.search_spaces, vldistill.platform.cli; "
            "assert 'ray' not in sys.modules, 'ray imported'")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_the_config_package_imports_neither_torch_nor_ray():
    code = ("import vldistill.trainers.config, sys; "
            "assert 'torch' not in sys.modules and 'ray' not in sys.modules, "
            "sorted(m for m in sys.modules if m in ('torch', 'ray'))")
    subprocess.run([sys.executable, "-c", code], check=True)


def import_graph(root: Path = PACKAGE) -> dict[str, set[str]]:
    """Module -> the vldistill modules it imports, at top level or inside a function
    (``from a.b import c`` names the module ``a.b.c`` when it is one, else ``a.b``)."""
    files = {".".join(p.relative_to(root.parent).with_suffix("").parts).removesuffix(".__init__"): p
             for p in root.rglob("*.py")}
    graph: dict[str, set[str]] = {m: set() for m in files}
    for mod, path in files.items():
        package = mod if path.name == "__init__.py" else mod.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                graph[mod] |= {a.name for a in node.names if a.name in files}
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parts = package.split(".")[:len(package.split(".")) - node.level + 1]
                    base = ".".join(parts + ([node.module] if node.module else []))
                for a in node.names:
                    target = f"{base}.{a.name}" if f"{base}.{a.name}" in files else base
                    if target in files and target != mod:
                        graph[mod].add(target)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in graph:
        if v not in index:
            visit(v)
    return found


def test_no_import_circles():
    """Counting imports inside functions too. A registry package and its own submodules
    (``losses/__init__`` imports ``losses/p1``, which registers into it) are the one
    allowed pattern; ``platform/cli`` <-> ``platform/sweep`` and ``trainers/config`` <->
    ``trainers/synth`` were circles before the config package owned composition and checks."""
    graph = import_graph()
    assert {"vldistill.trainers.config.compose", "vldistill.trainers.synth"} <= set(graph)  # the walk sees them
    assert "vldistill.trainers.config.compose" in graph["vldistill.trainers.config"]
    bad = [c for c in cycles(graph) if not all(m.startswith(c[0] + ".") for m in c[1:])]
    assert not bad, f"import circles: {bad}"


def test_the_report_package_imports_no_ray_and_builds_without_it(tmp_path):
    """Every module of ``platform/report/`` imported, a whole report built: still no ray."""
    shutil.copytree(FIXTURE, tmp_path / "sweep")
    code = ("import importlib, pkgutil, sys, vldistill.platform.report as r\n"
            "mods = [m.name for m in pkgutil.iter_modules(r.__path__, r.__name__ + '.')]\n"
            "assert len(mods) >= 7, mods\n"
            "for m in mods: importlib.import_module(m)\n"
            "assert 'ray' not in sys.modules, 'ray imported'\n"
            f"files = r.build_report({str(tmp_path / 'sweep')!r}, {str(tmp_path / 'out')!r})\n"
            "assert files['report.md'].is_file()\n"
            "assert 'ray' not in sys.modules, 'ray imported while building'\n")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)

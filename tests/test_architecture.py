"""The package's shape, checked from its source: layers follow the data path, presentation stays in cli/.

Read without importing anything: every ``import`` of every module, with the line it is on.
"""
from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "pointtrack_cli"
# Bottom to top along the data path; a module may import its own layer or those below.
LAYERS = [
    {"errors", "version", "result", "geometry", "device"},
    {"weights"},
    {"io", "synthetic"},
    {"models"},
    {"queries"},
    {"trackers"},
    {"ensemble"},
    {"eval"},
    {"finetune"},
    {"api", "batch"},
    {"cli"},
    {"__init__", "__main__"},
]
PRESENTATION = ("rich", "typer", "click")


@dataclass
class Import:
    module: str  # importing module, dotted
    target: str  # imported module, dotted (a name imported from a package counts as its submodule if one exists)
    names: list[str]
    line: int
    in_function: bool


def module_name(path: Path) -> str:
    rel = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def all_modules() -> dict[str, Path]:
    return {module_name(p): p for p in PACKAGE.rglob("*.py") if "__pycache__" not in p.parts}


def _resolve(module: str, is_package: bool, node: ast.ImportFrom) -> str:
    if node.level == 0:
        return node.module or ""
    base = module.split(".")
    base = base if is_package else base[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def imports_of(name: str, path: Path, modules: dict[str, Path]) -> list[Import]:
    tree = ast.parse(path.read_text(), str(path))
    out: list[Import] = []

    def visit(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            inner = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef))
            if isinstance(child, ast.Import):
                for alias in child.names:
                    out.append(Import(name, alias.name, [], child.lineno, in_function))
            elif isinstance(child, ast.ImportFrom):
                target = _resolve(name, path.name == "__init__.py", child)
                names = [a.name for a in child.names]
                subs = [f"{target}.{n}" for n in names if f"{target}.{n}" in modules]
                if subs:
                    out.extend(Import(name, s, [], child.lineno, in_function) for s in subs)
                    names = [n for n in names if f"{target}.{n}" not in modules]
                    if names:
                        out.append(Import(name, target, names, child.lineno, in_function))
                else:
                    out.append(Import(name, target, names, child.lineno, in_function))
            visit(child, inner)

    visit(tree, False)
    return out


@pytest.fixture(scope="module")
def graph() -> tuple[dict[str, Path], list[Import]]:
    modules = all_modules()
    edges = [imp for name, path in modules.items() for imp in imports_of(name, path, modules)]
    return modules, edges


def top(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def layer(module: str) -> int:
    name = "__main__" if module.endswith("__main__") else top(module)
    for i, group in enumerate(LAYERS):
        if name in group:
            return i
    raise AssertionError(f"{module}: its folder {name!r} has no layer in tests/test_architecture.py")


def test_no_import_cycles(graph):
    modules, edges = graph
    adj: dict[str, set[str]] = {m: set() for m in modules}
    for e in edges:
        if e.target in modules and e.target != e.module:
            adj[e.module].add(e.target)
    state: dict[str, int] = {}
    stack: list[str] = []

    def dfs(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for n in sorted(adj[m]):
            if state.get(n) == 1:
                raise AssertionError("import cycle: " + " -> ".join(stack[stack.index(n):] + [n]))
            if n not in state:
                dfs(n)
        stack.pop()
        state[m] = 2

    for m in sorted(modules):
        if m not in state:
            dfs(m)


def test_layers_follow_the_data_path(graph):
    modules, edges = graph
    bad = [f"{e.module}:{e.line} imports {e.target}" for e in edges
           if e.target in modules and e.target.startswith("pointtrack_cli.") and layer(e.target) > layer(e.module)]
    assert not bad, "imports from a higher layer:\n" + "\n".join(bad)


def test_presentation_only_in_cli(graph):
    _, edges = graph
    bad = [f"{e.module}:{e.line} imports {e.target}" for e in edges
           if e.target.split(".")[0] in PRESENTATION and top(e.module) != "cli"]
    assert not bad, "rich/typer/click outside pointtrack_cli/cli/:\n" + "\n".join(bad)


def test_no_private_names_across_packages(graph):
    modules, edges = graph
    bad = []
    for e in edges:
        if not e.target.startswith("pointtrack_cli"):
            continue
        target_pkg = e.target if modules.get(e.target, Path()).name == "__init__.py" else e.target.rpartition(".")[0]
        own_pkg = e.module if modules[e.module].name == "__init__.py" else e.module.rpartition(".")[0]
        private = [n for n in e.names if n.startswith("_") and not n.startswith("__")]
        private += [e.target.rpartition(".")[2]] if e.target.rpartition(".")[2].startswith("_") and e.target in modules and not e.target.endswith("__main__") else []
        if private and target_pkg != own_pkg:
            bad.append(f"{e.module}:{e.line} imports {', '.join(private)} from {e.target}")
    assert not bad, "private names imported across packages:\n" + "\n".join(bad)


def test_function_level_imports_say_why(graph):
    modules, edges = graph
    bad = []
    for e in edges:
        if not e.in_function:
            continue
        lines = modules[e.module].read_text().splitlines()
        here, above = lines[e.line - 1], lines[e.line - 2] if e.line >= 2 else ""
        if "#" not in here and not above.strip().startswith("#"):
            bad.append(f"{e.module}:{e.line} {here.strip()}")
    assert not bad, ("function-level imports without a comment saying why (an optional dependency or start-up "
                     "time):\n" + "\n".join(bad))


def test_the_checker_sees_what_it_checks(graph):
    """Guards against a walker that finds nothing: known edges of the package must be present."""
    modules, edges = graph
    found = {(e.module, e.target) for e in edges}
    assert ("pointtrack_cli.api", "pointtrack_cli.queries") in found
    assert ("pointtrack_cli.cli.common", "rich.console") in found
    assert len(modules) > 40

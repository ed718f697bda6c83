"""Package structure, read with the standard library's ast (nothing is imported): the modules of fga import
each other without cycles, and no function is longer than the team's limit."""
from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "fga"
MAX_FUNCTION_LINES = 60
# Functions allowed past MAX_FUNCTION_LINES because they are a flat table of data ("module.qualname": why).
FLAT_TABLES: dict[str, str] = {}


def module_files(package: Path = PACKAGE) -> dict[str, Path]:
    """Dotted module name -> file, for every module and package under `package`."""
    modules = {}
    for path in sorted(package.rglob("*.py")):
        parts = path.relative_to(package.parent).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        modules[".".join(parts)] = path
    return modules


def _known_prefix(name: str, modules: dict[str, Path]) -> str | None:
    """The longest dotted prefix of `name` that is one of `modules` (`fga.x.y.func` -> `fga.x.y`)."""
    parts = name.split(".")
    for end in range(len(parts), 0, -1):
        candidate = ".".join(parts[:end])
        if candidate in modules:
            return candidate
    return None


def _from_base(module: str, path: Path, node: ast.ImportFrom) -> str:
    """The absolute module an `from X import ...` statement names, relative imports resolved."""
    if not node.level:
        return node.module or ""
    package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
    base = package[: len(package) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def imported_modules(module: str, path: Path, modules: dict[str, Path]) -> dict[str, int]:
    """fga modules that `module` imports anywhere in its body (module level or inside functions) -> first line."""
    found: dict[str, int] = {}
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = _from_base(module, path, node)
            # `from pkg import sub` imports the submodule pkg.sub; `from mod import name` imports mod
            names = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base for alias in node.names]
        for name in names:
            target = _known_prefix(name, modules)
            if target is not None and target != module:
                found[target] = min(found.get(target, node.lineno), node.lineno)
    return found


def import_graph(package: Path = PACKAGE) -> dict[str, dict[str, int]]:
    modules = module_files(package)
    return {name: imported_modules(name, path, modules) for name, path in modules.items()}


def cycles(graph: dict[str, dict[str, int]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan's algorithm, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, {})))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return sorted(found)


def describe_cycle(component: list[str], graph: dict[str, dict[str, int]]) -> str:
    edges = [f"{a} -> {b} (line {graph[a][b]})" for a in component for b in sorted(graph[a]) if b in component]
    return "cycle among " + ", ".join(component) + ":\n    " + "\n    ".join(edges)


def long_functions(package: Path = PACKAGE, limit: int = MAX_FUNCTION_LINES) -> list[str]:
    """'path:line module.qualname (N lines)' for every function or method longer than `limit` lines."""
    found: list[tuple[str, int, str]] = []
    for module, path in module_files(package).items():
        tree = ast.parse(path.read_text(), str(path))
        todo: list[tuple[ast.AST, str]] = [(tree, "")]
        while todo:
            node, prefix = todo.pop()
            for child in ast.iter_child_nodes(node):
                if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                    qualname = f"{prefix}{child.name}"
                    todo.append((child, qualname + "."))
                    if isinstance(child, ast.ClassDef):
                        continue
                    lines = child.end_lineno - child.lineno + 1
                    if lines > limit and f"{module}.{qualname}" not in FLAT_TABLES:
                        found.append((str(path.relative_to(package.parent)), child.lineno,
                                      f"{module}.{qualname} ({lines} lines)"))
                else:
                    todo.append((child, prefix))
    return [f"{where}:{line} {what}" for where, line, what in sorted(found)]


# --------------------------------------------------------------------------- the checkers themselves


def _write(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root / "pkg"


def test_graph_sees_function_level_and_relative_imports_and_finds_every_cycle(tmp_path):
    package = _write(tmp_path, {
        "pkg/__init__.py": "",
        "pkg/a.py": "from pkg.b import f\n",
        "pkg/b.py": "def f():\n    from . import c\n",
        "pkg/c.py": "import pkg.a\n",                       # a -> b -> c -> a
        "pkg/sub/__init__.py": "from .d import g\n",
        "pkg/sub/d.py": "from .. import e\nimport os\n",       # relative, two levels; os is outside
        "pkg/e.py": "def h():\n    from .sub.d import g\n",  # e <-> sub.d
        "pkg/f.py": "from pkg.a import f\n",                  # only into a cycle: not part of one
    })
    graph = import_graph(package)
    assert graph["pkg.b"] == {"pkg.c": 2} and graph["pkg.sub.d"] == {"pkg.e": 1}
    assert graph["pkg.sub"] == {"pkg.sub.d": 1} and graph["pkg.e"] == {"pkg.sub.d": 2}
    assert cycles(graph) == [["pkg.a", "pkg.b", "pkg.c"], ["pkg.e", "pkg.sub.d"]]
    assert "pkg.c -> pkg.a (line 1)" in describe_cycle(["pkg.a", "pkg.b", "pkg.c"], graph)


def test_long_functions_counts_methods_and_nested_functions(tmp_path):
    def body(n: int, indent: str) -> str:
        return "".join(f"{indent}x{i} = {i}\n" for i in range(n))

    package = _write(tmp_path, {
        "pkg/__init__.py": "",
        "pkg/m.py": (f"def short():\n{body(4, '    ')}\n\nclass K:\n    def method(self):\n{body(3, '        ')}"
                     f"        def inner():\n{body(2, '            ')}\n    def ok(self):\n        pass\n"),
    })
    assert long_functions(package, limit=5) == ["pkg/m.py:9 pkg.m.K.method (7 lines)"]
    assert long_functions(package, limit=2) == ["pkg/m.py:1 pkg.m.short (5 lines)",  # in file order
                                                "pkg/m.py:9 pkg.m.K.method (7 lines)",
                                                "pkg/m.py:13 pkg.m.K.method.inner (3 lines)"]


# --------------------------------------------------------------------------- the package


def test_no_import_cycles_in_fga():
    graph = import_graph()
    assert len(graph) > 20 and "fga.data.prepare" in graph
    found = cycles(graph)
    assert not found, "import cycles in fga:\n" + "\n".join(describe_cycle(c, graph) for c in found)


def test_no_function_longer_than_the_limit():
    found = long_functions()
    assert not found, f"functions longer than {MAX_FUNCTION_LINES} lines (split them into named helpers):\n" + \
        "\n".join(found)


# --------------------------------------------------------------------------- start-up cost of every job

# Packages that cost seconds to import (measured: timm 6.4 s, mlflow 2.5 s on a 2-core machine) and that most
# jobs never use: they are imported inside the functions that use them, never at a module's top level.
LAZY_PACKAGES = {"timm", "mlflow", "seaborn", "matplotlib"}


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or \
        (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def top_level_imports(path: Path) -> list[tuple[int, str]]:
    """(line, package) of every import that runs when the module is imported (not inside a function or a
    TYPE_CHECKING block)."""
    found = []
    todo: list[ast.AST] = [ast.parse(path.read_text(), str(path))]
    while todo:
        node = todo.pop()
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
                continue
            if isinstance(child, ast.If) and _is_type_checking(child):
                todo.extend(child.orelse)
                continue
            if isinstance(child, ast.Import):
                found += [(child.lineno, alias.name.split(".")[0]) for alias in child.names]
            elif isinstance(child, ast.ImportFrom) and not child.level and child.module:
                found.append((child.lineno, child.module.split(".")[0]))
            else:
                todo.append(child)
    return sorted(found)


def test_top_level_imports_skips_functions_and_type_checking(tmp_path):
    package = _write(tmp_path, {
        "pkg/__init__.py": "",
        "pkg/m.py": ("import os, timm.layers\nfrom typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import mlflow\n"
                     "def f():\n    import seaborn\nclass K:\n    from matplotlib import pyplot\n"
                     "try:\n    import yaml\nexcept ImportError:\n    pass\n"),
    })
    assert top_level_imports(package / "m.py") == [(1, "os"), (1, "timm"), (2, "typing"), (8, "matplotlib"),
                                                    (10, "yaml")]


def test_heavy_packages_are_imported_only_where_used():
    found = [f"{path.relative_to(PACKAGE.parent)}:{line} imports {pkg} at module level"
             for path in module_files().values() for line, pkg in top_level_imports(path) if pkg in LAZY_PACKAGES]
    assert not found, "import these inside the functions that use them (every job pays a module-level import):\n" + \
        "\n".join(found)

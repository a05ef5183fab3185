"""The shape of the code, as DESIGN.md draws it: no import cycles, `augment` standalone, a thin app, small units.

Imports are read by parsing every module (not by importing it), so that lazy imports inside
functions and `importlib.import_module("...")` strings count like the ones at the top.
An import names the most specific module of this repository it reaches: `from finetune import zoo`
depends on `finetune.zoo`, `from finetune.data import discover` on the package `finetune.data`.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("finetune", "augment", "app")
MAX_MODULE_LINES = 400
MAX_FUNCTION_LINES = 80
# What the app may import of finetune: its public API, never the internals it is a face over.
APP_MAY_IMPORT = {"finetune", "finetune.inference", "finetune.run", "finetune.config"}


def module_name(path: Path, root: Path = ROOT) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def find_modules(root: Path = ROOT, packages=PACKAGES) -> dict[str, Path]:
    modules = {}
    for package in packages:
        for path in sorted((root / package).rglob("*.py")):
            modules[module_name(path, root)] = path
    return modules


def _absolute(module: str, node: ast.ImportFrom, is_package: bool) -> str:
    if not node.level:
        return node.module or ""
    base = module.split(".") if is_package else module.split(".")[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def imported_names(source: str, module: str = "", is_package: bool = False) -> set[str]:
    """Every name `source` imports, dotted: top-level and lazy imports, and `import_module("...")` strings.

    `from a.b import c` gives "a.b.c": the module a.b.c when there is one, else a name in a.b.
    """
    names = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            target = _absolute(module, node, is_package)
            names.update(f"{target}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Call):
            function = node.func
            called = function.attr if isinstance(function, ast.Attribute) else getattr(function, "id", "")
            if called in ("import_module", "__import__") and node.args and isinstance(node.args[0], ast.Constant):
                names.add(str(node.args[0].value))
    return names


def dependencies(modules: dict[str, Path]) -> dict[str, set[str]]:
    """For each module of ours, the modules of ours it imports: for each name, the longest module prefix."""
    graph = {}
    for module, path in modules.items():
        found = set()
        for name in imported_names(path.read_text(encoding="utf-8"), module, path.name == "__init__.py"):
            parts = name.split(".")
            for end in range(len(parts), 0, -1):
                candidate = ".".join(parts[:end])
                if candidate in modules:
                    if candidate != module:
                        found.add(candidate)
                    break
        graph[module] = found
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), each sorted."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(node):
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for neighbour in sorted(graph.get(node, ())):
            if neighbour not in index:
                visit(neighbour)
                low[node] = min(low[node], low[neighbour])
            elif neighbour in on_stack:
                low[node] = min(low[node], index[neighbour])
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

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


MODULES = find_modules()
GRAPH = dependencies(MODULES)


def test_the_checker_sees_lazy_imports_import_module_strings_and_cycles(tmp_path):
    files = {
        "pkg/__init__.py": "",
        "pkg/a.py": "import os\nfrom pkg.b import helper\n",
        "pkg/b.py": "def helper():\n    from . import c\n",  # lazy and relative
        "pkg/c.py": "import importlib\nimportlib.import_module('pkg.a')\n",  # a string
        "pkg/d.py": "from pkg import a\n",
    }
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    graph = dependencies(find_modules(tmp_path, ("pkg",)))
    assert graph == {"pkg": set(), "pkg.a": {"pkg.b"}, "pkg.b": {"pkg.c"}, "pkg.c": {"pkg.a"}, "pkg.d": {"pkg.a"}}
    assert cycles(graph) == [["pkg.a", "pkg.b", "pkg.c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_the_graph_holds_the_known_dependencies():
    # If parsing silently found nothing, every other test here would pass: guard against that.
    assert "finetune.files" in GRAPH["finetune.run"]
    assert "finetune.export.reader" in GRAPH["finetune.run"]
    assert "finetune.pipeline" in GRAPH["finetune"]
    assert "finetune.inference" in {name for names in GRAPH.values() for name in names}


@pytest.mark.parametrize("package", PACKAGES)
def test_no_import_cycles(package):
    graph = {module: {name for name in names if name.split(".")[0] == package}
             for module, names in GRAPH.items() if module.split(".")[0] == package}
    assert cycles(graph) == [], "import cycles (lazy imports included); break each by moving the shared part to a leaf module"


def test_augment_imports_nothing_of_finetune():
    offending = {module: sorted(name for name in names if name.split(".")[0] in ("finetune", "app"))
                 for module, names in GRAPH.items() if module.split(".")[0] == "augment"}
    assert {module: names for module, names in offending.items() if names} == {}


def test_the_app_uses_only_the_public_api_of_finetune():
    offending = {module: sorted(name for name in names if name.split(".")[0] == "finetune" and name not in APP_MAY_IMPORT)
                 for module, names in GRAPH.items() if module.split(".")[0] == "app"}
    assert {module: names for module, names in offending.items() if names} == {}
    assert not any(name.split(".")[0] == "augment" for module, names in GRAPH.items()
                   if module.split(".")[0] == "app" for name in names)


def test_no_module_is_over_400_lines():
    lengths = {module: len(path.read_text(encoding="utf-8").splitlines()) for module, path in MODULES.items()}
    assert {module: length for module, length in lengths.items() if length > MAX_MODULE_LINES} == {}


def test_no_function_is_over_80_lines():
    long = {}
    for module, path in MODULES.items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                if length > MAX_FUNCTION_LINES:
                    long[f"{module}.{node.name}"] = length
    assert long == {}

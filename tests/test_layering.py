"""The import graph of compress, export and evalsuite has no cycle and points one way only.

    evalsuite  <-  compress  <-  export  <-  (the CLI: compress.run, which reaches export only
                                              through the `gpt2_edge.steps` entry points)

evalsuite imports neither compress nor export; compress never imports export. Every import counts,
at module level or inside a function (a lazy import is still a dependency); imports under
`if TYPE_CHECKING:` do not (they never run). Built with the standard library's `ast`: no module is
imported to build the graph.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("evalsuite", "compress", "export")  # lower layers first
LAYER = {name: i for i, name in enumerate(PACKAGES)}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _is_import_call(func: ast.expr) -> bool:
    name = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else ""
    return name in ("import_module", "__import__", "lazy_function")


def _imports(tree: ast.AST, module: str, is_package: bool):
    """((module, module.name), line) for every imported name not under `if TYPE_CHECKING:`."""
    stack = [tree]
    while stack:
        node = stack.pop()
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child.test):
                stack.extend(child.orelse)  # the else branch runs
                continue
            if isinstance(child, ast.Import):
                for alias in child.names:
                    yield (alias.name, alias.name), child.lineno
            elif isinstance(child, ast.ImportFrom):
                if child.level:  # relative: resolve against this module's package
                    base = module.split(".")
                    base = base[: len(base) - child.level + (1 if is_package else 0)]
                    target = ".".join(base + ([child.module] if child.module else []))
                else:
                    target = child.module or ""
                for alias in child.names:  # `from pkg import name`: pkg.name if it is a module, else pkg
                    yield (target, f"{target}.{alias.name}"), child.lineno
            elif isinstance(child, ast.Call) and _is_import_call(child.func) and child.args \
                    and isinstance(child.args[0], ast.Constant) and isinstance(child.args[0].value, str):
                name = child.args[0].value.partition(":")[0]  # import_module("export.step"), lazy_function("m:f")
                yield (name, name), child.lineno
            stack.append(child)


def registry_lists(tree: ast.AST):
    """(module name, line) for every string in a module-level `*_MODULES = ("pkg.mod", ...)` tuple (or
    the values of a `{"key": "pkg.mod"}` dict): a registry that imports its members by name
    (BUILTIN_STEP_MODULES, METHOD_MODULES)."""
    for node in getattr(tree, "body", []):
        targets = node.targets if isinstance(node, ast.Assign) else [node.target] if isinstance(node, ast.AnnAssign) else []
        if any(isinstance(t, ast.Name) and t.id.endswith("_MODULES") for t in targets) \
                and isinstance(node.value, (ast.Tuple, ast.List, ast.Dict)):
            for elt in node.value.values if isinstance(node.value, ast.Dict) else node.value.elts:
                if isinstance(elt, ast.Constant) and isinstance(elt.value, str):
                    yield elt.value, node.lineno


def entry_point_edges() -> list[tuple[str, str, str]]:
    """(loader module, entry module, where) for the entry-point groups of pyproject.toml: the module
    that loads a group by name imports every module the group lists."""
    import tomllib

    groups = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"].get("entry-points", {})
    out = []
    for group, entries in groups.items():
        loaders = [module_name(p) for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py")
                   if f'"{group}"' in p.read_text(encoding="utf-8")]
        for loader in loaders:
            out += [(loader, value.split(":")[0], f"pyproject.toml [{group}] {name}") for name, value in entries.items()]
    return out


def import_graph(plugins: bool = True) -> tuple[dict[str, dict[str, list[str]]], set[str]]:
    """module -> {imported module of ours -> ["file:line", ...]}, and the set of our modules. Imports by
    name count: registry lists and, with `plugins`, the entry points a module loads by group."""
    files = {module_name(p): p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py")}
    graph: dict[str, dict[str, list[str]]] = {m: {} for m in files}

    def edge(module: str, target: str, where: str) -> None:
        if target in files and target != module:
            wheres = graph[module].setdefault(target, [])
            if where not in wheres:
                wheres.append(where)

    for module, path in files.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for (parent, name), line in _imports(tree, module, path.name == "__init__.py"):
            edge(module, name if name in files else parent, f"{path.relative_to(ROOT)}:{line}")
        for name, line in registry_lists(tree):
            edge(module, name, f"{path.relative_to(ROOT)}:{line} (registry)")
    if plugins:
        for loader, target, where in entry_point_edges():
            edge(loader, target, where)
    return graph, set(files)


def layering_violations(graph: dict[str, dict[str, list[str]]]) -> list[str]:
    out = []
    for module, targets in sorted(graph.items()):
        for target, wheres in sorted(targets.items()):
            if LAYER[target.split(".")[0]] > LAYER[module.split(".")[0]]:
                out += [f"{w}: {module} imports {target} (a higher layer)" for w in wheres]
    return out


def cycles(graph: dict[str, dict[str, list[str]]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    found: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:  # the graph is small: recursion depth is bounded by its size
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def _describe(graph, comp: list[str]) -> str:
    members = set(comp)
    edges = [f"    {w}: {m} -> {t}" for m in comp for t, ws in sorted(graph[m].items()) if t in members for w in ws]
    return "cycle between " + ", ".join(comp) + ":\n" + "\n".join(edges)


def test_no_import_cycles():
    graph, _ = import_graph()
    found = cycles(graph)
    assert not found, "\n".join(_describe(graph, c) for c in found)


def test_imports_follow_the_layering():
    # entry points are the one way a lower layer reaches a higher one: by group, never by name
    graph, _ = import_graph(plugins=False)
    bad = layering_violations(graph)
    assert not bad, "\n".join(bad)


def test_the_checker_sees_function_level_imports_and_skips_type_checking(tmp_path):
    tree = ast.parse("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import export.step\n"
                     "def f():\n    from export import onnx\n    importlib.import_module('export.step')\n")
    found = list(_imports(tree, "compress.x", False))
    assert (("export.step", "export.step"), 3) not in found
    assert (("export", "export.onnx"), 5) in found and (("export.step", "export.step"), 6) in found


def test_the_checker_finds_a_planted_cycle_and_violation():
    graph = {"compress.a": {"compress.b": ["compress/a.py:1"]}, "compress.b": {"compress.a": ["compress/b.py:2"]},
             "evalsuite.x": {"export.y": ["evalsuite/x.py:3"]}, "export.y": {}}
    assert cycles(graph) == [["compress.a", "compress.b"]]
    assert layering_violations(graph) == ["evalsuite/x.py:3: evalsuite.x imports export.y (a higher layer)"]


def test_the_checker_counts_registry_lists_and_entry_points_as_imports():
    tree = ast.parse('METHOD_MODULES: tuple[str, ...] = ("compress.quantization.rtn",)\nOTHER = ("x.y",)\n'
                     'STEP_MODULES = {"prune": "compress.pruning.step"}\n')
    assert list(registry_lists(tree)) == [("compress.quantization.rtn", 1), ("compress.pruning.step", 3)]
    edges = {(loader, target) for loader, target, _ in entry_point_edges()}
    assert ("compress.catalog", "export.step") in edges and ("evalsuite.backends", "export.ort_runner") in edges
    graph, _ = import_graph()
    assert "compress.quantization.step" in graph["compress.catalog"]  # BUILTIN_STEP_MODULES

"""The package's import graph (every import statement, module-level or inside a function, and those under
``if TYPE_CHECKING:`` too) has no cycle, and every import runs down the layers of DESIGN.md §2: a module imports
only from its own layer or below.

A registry's lazy factory reference (``"scene_kd.x.y:attr"``, scene_kd/registry.py) counts as an import of that
module for the layer rule: an entry may only name an implementation at or below the registering module's layer.
It is left out of the cycle check: the registering module (e.g. distill/config.py) lists the implementations
that themselves import its config classes, and the reference is resolved on the first ``create`` call, after
both modules are fully imported, never at import time.

One refinement of DESIGN.md's table: ``field`` (the FeatureField format) sits with ``feature_store`` in layer 5,
not 7, because the lift and distill stages write fields; it imports nothing above layer 5."""

from __future__ import annotations

import ast
import re
from pathlib import Path

PKG = Path(__file__).resolve().parents[1] / "scene_kd"
LAZY = re.compile(r"scene_kd(\.\w+)+:\w+")
"""A ``"package.module:attr"`` string: a registry's lazy factory (scene_kd/registry.py)."""


def module_name(path: Path) -> str:
    rel = path.relative_to(PKG.parent).with_suffix("")
    parts = list(rel.parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph(*, type_checking: bool = True, lazy: bool = True) -> dict[str, set[str]]:
    modules = {module_name(p): p for p in PKG.rglob("*.py")}
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for mod, path in modules.items():
        package = mod if path.name == "__init__.py" else mod.rsplit(".", 1)[0]
        tree = ast.parse(path.read_text())
        type_only = set() if type_checking else {
            id(n) for block in ast.walk(tree) if isinstance(block, ast.If)
            and getattr(block.test, "id", getattr(block.test, "attr", "")) == "TYPE_CHECKING" for n in ast.walk(block)}
        for node in ast.walk(tree):
            if id(node) in type_only:
                continue
            names: list[str] = []
            if lazy and isinstance(node, ast.Constant) and isinstance(node.value, str) and LAZY.fullmatch(node.value):
                names = [node.value.split(":")[0]]  # a registry's lazy factory reference: an import on first use
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
                names = [base] + [f"{base}.{a.name}" for a in node.names]
            for name in names:
                while name and name not in modules:
                    name = name.rsplit(".", 1)[0] if "." in name else ""
                if name and name != mod and not mod.startswith(name + "."):  # a package's own __init__ is not an edge
                    graph[mod].add(name)
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> list[str] | None:
        state[m] = 1
        stack.append(m)
        for n in sorted(graph[m]):
            if state.get(n) == 1:
                return stack[stack.index(n):] + [n]
            if n not in state and (c := visit(n)):
                return c
        stack.pop()
        state[m] = 2
        return None

    for m in sorted(graph):
        if m not in state and (c := visit(m)):
            return c
    return None


def test_no_import_cycles():
    cycle = find_cycle(import_graph(lazy=False))
    assert cycle is None, " -> ".join(cycle)


def test_the_checker_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


LAYERS: dict[str, int] = {
    "errors": 1, "geometry": 1, "progress": 1, "runio": 1, "rundir": 1, "registry": 1,
    "scene": 2, "render": 3, "teachers": 4, "lift": 5, "feature_store": 5, "field": 5, "distill": 6,
    "query": 7, "eval": 7, "stages": 8, "pipeline": 8, "config": 8,
    "cli": 10, "commands": 10, "apps": 10, "demo": 10, "report": 10,
}
"""DESIGN.md §2's layers, bottom up (``scene_kd.scene.synthetic`` is layer 9: generators use render/)."""


def layer(module: str) -> int:
    if module == "scene_kd":
        return 0
    if module.startswith("scene_kd.scene.synthetic"):
        return 9
    return LAYERS[module.split(".")[1]]


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
    return sorted(f"{a} ({layer(a)}) -> {b} ({layer(b)})" for a in graph for b in graph[a] if layer(b) > layer(a))


def test_every_module_has_a_layer():
    missing = [m for m in import_graph() if m != "scene_kd" and not m.startswith("scene_kd.scene.synthetic")
               and m.split(".")[1] not in LAYERS]
    assert not missing, f"give these a layer in LAYERS (and DESIGN.md): {missing}"


def test_imports_run_down_the_layers():
    bad = upward_imports(import_graph())
    assert not bad, "imports from a higher layer:\n" + "\n".join(bad)


def test_lazy_factory_references_are_edges():
    graph = import_graph()
    assert "scene_kd.teachers.clip_sam" in graph["scene_kd.teachers.config"]
    assert "scene_kd.distill.students" in graph["scene_kd.distill.config"]


def test_the_checker_finds_an_upward_import():
    assert upward_imports({"scene_kd.scene.io": {"scene_kd.eval.metrics"}, "scene_kd.eval.metrics": set()}) == [
        "scene_kd.scene.io (2) -> scene_kd.eval.metrics (7)"]

"""The project's import graph (core/ and tabs/) has no cycle, and the tag-text module stays a leaf.

Every `import x` and `from x import y` counts wherever it is written, inside functions too: a lazy
import hides a cycle from Python but not from the reader. `from core.a import b` is an edge to the
module core.a.b when that is a module, else to core.a; a package's `__init__.py` is the package module.
"""
from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PACKAGES = ("core", "tabs")
TAG_TEXT = "core.captions.tags"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def project_modules() -> dict[str, Path]:
    return {module_name(path): path for package in PACKAGES for path in sorted((REPO / package).rglob("*.py"))}


def imported_names(path: Path, module: str) -> list[list[str]]:
    """Every module name the file imports (`from x import y` gives both x.y and x; the caller keeps
    the one that is a project module)."""
    package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
    names = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            names += [[alias.name] for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: `.` is this module's package, each further dot one package up
                base = ".".join(package[:len(package) - node.level + 1] + ([base] if base else []))
            names += [[f"{base}.{alias.name}", base] for alias in node.names]
    return names


def import_graph() -> dict[str, set[str]]:
    """{project module: the project modules it imports}."""
    modules = project_modules()
    graph = {}
    for module, path in modules.items():
        targets = set()
        for candidates in imported_names(path, module):
            found = next((name for name in candidates if name in modules), None)
            if found and found != module:
                targets.add(found)
        graph[module] = targets
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle as a path [a, b, ..., a], or None (depth-first search, modules in sorted order)."""
    state: dict[str, str] = {}  # "open" while on the current path, "done" when fully explored
    path: list[str] = []

    def visit(module: str) -> list[str] | None:
        state[module] = "open"
        path.append(module)
        for target in sorted(graph[module]):
            if state.get(target) == "open":
                return path[path.index(target):] + [target]
            if target not in state and (cycle := visit(target)):
                return cycle
        state[module] = "done"
        path.pop()
        return None

    for module in sorted(graph):
        if module not in state and (cycle := visit(module)):
            return cycle
    return None


def test_the_walk_sees_every_kind_of_import(tmp_path):
    source = tmp_path / "b.py"
    source.write_text("import core.x\nfrom core.y import z\nfrom . import w\n\n\n"
                      "def lazy():\n    from ..v import u\n", encoding="utf-8")
    assert imported_names(source, "core.a.b") == [
        ["core.x"], ["core.y.z", "core.y"], ["core.a.w", "core.a"], ["core.v.u", "core.v"]]
    graph = import_graph()
    assert "core.captions.tags" in graph["core.captions.rules"]
    assert "core.config" in graph["core.captions.taggers.wd14"]  # `from core.config import TagConfig`
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_core_and_tabs_have_no_import_cycle():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_tag_text_imports_nothing_of_the_project():
    path = project_modules()[TAG_TEXT]
    imported = {name for candidates in imported_names(path, TAG_TEXT) for name in candidates}
    project = sorted(name for name in imported if name.split(".")[0] in PACKAGES)
    assert not project, f"{TAG_TEXT} must stay a leaf (standard library only); it imports {project}"

"""The code layout of docs/design.md §11, checked from the code's imports: no import cycle among
``broker/``, ``gateway/`` and ``benchmarks/``, and imports that run one way (``cli`` -> ``api`` ->
``live`` -> ``gateway`` top level -> ``broker``).

Nothing here imports the project: each file is parsed with :mod:`ast`. Every ``import`` counts,
at the top of a module or inside a function (a lazy import still depends on its target), except
under ``if TYPE_CHECKING:`` (it never runs). Relative imports are resolved from the importing
module's package; the benchmarks run as scripts with ``benchmarks/`` on ``sys.path``, so their
bare ``from common import ...`` is ``benchmarks/common.py``.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.paths import ROOT

PACKAGES = ("broker", "gateway", "benchmarks")
SCRIPT_DIRS = ("benchmarks",)  # folders whose files import each other by bare module name

# (which modules, the imports they must not make, why)
LAYERS: list[tuple[str, tuple[str, ...], str]] = [
    ("gateway/live/", ("gateway.api", "gateway.cli"), "the engine never imports the HTTP layer or the CLI"),
    ("gateway/api/", ("gateway.cli",), "the HTTP layer never imports the CLI"),
    ("gateway/*.py", ("gateway.api", "gateway.live", "gateway.cli"), "the shared modules import no layer"),
    ("broker/", ("gateway",), "the publisher library never imports the gateway"),
]


@dataclass(frozen=True)
class Import:
    source: str
    target: str
    path: Path
    line: int

    def where(self, root: Path) -> str:
        return f"{self.path.relative_to(root)}:{self.line}"


def module_name(root: Path, path: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def find_modules(root: Path, packages: tuple[str, ...] = PACKAGES) -> dict[str, Path]:
    return {
        module_name(root, path): path
        for package in packages
        for path in sorted((root / package).rglob("*.py"))
        if "__pycache__" not in path.parts
    }


def _type_checking_only(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def import_nodes(tree: ast.AST) -> Iterator[ast.Import | ast.ImportFrom]:
    """Every import statement, wherever it is, but not those under ``if TYPE_CHECKING:``."""
    stack = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, ast.If) and _type_checking_only(node):
            stack.extend(node.orelse)
            continue
        if isinstance(node, ast.Import | ast.ImportFrom):
            yield node
        stack.extend(ast.iter_child_nodes(node))


class Resolver:
    """Names in import statements to the project's modules (None: stdlib or third party)."""

    def __init__(self, root: Path, modules: dict[str, Path], script_dirs: tuple[str, ...]) -> None:
        self.root, self.modules, self.script_dirs = root, modules, script_dirs

    def absolute(self, importer: str, path: Path, name: str) -> str | None:
        """``name`` as written after ``import``/``from``: a script folder's own files first."""
        top = path.relative_to(self.root).parts[0]
        candidates = [(top, name)] if top in self.script_dirs else []
        for folder, dotted in [*candidates, ("", name)]:
            parts = dotted.split(".")
            for end in range(len(parts), 0, -1):  # the longest prefix that is a module
                prefix = ".".join([*([folder] if folder else []), *parts[:end]])
                if prefix in self.modules:
                    return prefix
        return None

    def relative(self, importer: str, path: Path, level: int, name: str | None) -> str | None:
        package = importer.split(".") if path.name == "__init__.py" else importer.split(".")[:-1]
        base = package[: len(package) - (level - 1)] if level > 1 else package
        dotted = ".".join([*base, *([name] if name else [])])
        return dotted if dotted in self.modules else None

    def targets(self, importer: str, path: Path, node: ast.Import | ast.ImportFrom) -> Iterator[str]:
        if isinstance(node, ast.Import):
            for alias in node.names:
                if (found := self.absolute(importer, path, alias.name)) is not None:
                    yield found
            return
        if node.level:
            module = self.relative(importer, path, node.level, node.module)
        else:
            module = self.absolute(importer, path, node.module or "")
        if module is None:
            return
        for alias in node.names:  # ``from package import submodule`` imports the submodule
            yield sub if (sub := f"{module}.{alias.name}") in self.modules else module


def import_graph(
    root: Path, packages: tuple[str, ...] = PACKAGES, script_dirs: tuple[str, ...] = SCRIPT_DIRS
) -> dict[str, list[Import]]:
    modules = find_modules(root, packages)
    resolver = Resolver(root, modules, script_dirs)
    graph: dict[str, list[Import]] = {}
    for name, path in modules.items():
        edges: dict[str, Import] = {}
        for node in import_nodes(ast.parse(path.read_text(), str(path))):
            for target in resolver.targets(name, path, node):
                if target != name:
                    edges.setdefault(target, Import(name, target, path, node.lineno))
        graph[name] = sorted(edges.values(), key=lambda i: i.line)
    return graph


def cycles(graph: dict[str, list[Import]]) -> list[list[Import]]:
    """One cycle (its imports, in order) per strongly connected component of more than one module."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[set[str]] = []

    def visit(node: str) -> None:  # Tarjan
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for edge in graph.get(node, []):
            if edge.target not in index:
                visit(edge.target)
                low[node] = min(low[node], low[edge.target])
            elif edge.target in on_stack:
                low[node] = min(low[node], index[edge.target])
        if low[node] == index[node]:
            component = set()
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.add(member)
                if member == node:
                    break
            if len(component) > 1:
                components.append(component)

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return [_one_cycle(graph, component) for component in components]


def _one_cycle(graph: dict[str, list[Import]], component: set[str]) -> list[Import]:
    """The shortest way from the component's first module back to itself, inside the component."""
    start = min(component)
    paths: dict[str, list[Import]] = {start: []}
    queue = [start]
    while queue:
        node = queue.pop(0)
        for edge in graph[node]:
            if edge.target == start:
                return [*paths[node], edge]
            if edge.target in component and edge.target not in paths:
                paths[edge.target] = [*paths[node], edge]
                queue.append(edge.target)
    raise AssertionError(f"no cycle through {start} in {sorted(component)}")  # not a component


def describe(cycle: list[Import], root: Path) -> str:
    chain = " -> ".join([cycle[0].source, *(edge.target for edge in cycle)])
    where = "; ".join(f"{edge.where(root)} imports {edge.target}" for edge in cycle)
    return f"{chain} ({where})"


def _in_layer(root: Path, path: Path, layer: str) -> bool:
    rel = path.relative_to(root).as_posix()
    if layer.endswith("/*.py"):  # the folder's own modules, not its sub-packages
        folder = layer[: -len("*.py")]
        return rel.startswith(folder) and "/" not in rel[len(folder) :] and not rel.endswith("/__main__.py")
    return rel.startswith(layer)


def layer_violations(
    root: Path, graph: dict[str, list[Import]], layer: str, banned: tuple[str, ...]
) -> list[str]:
    found = []
    for edges in graph.values():
        for edge in edges:
            if _in_layer(root, edge.path, layer) and any(
                edge.target == b or edge.target.startswith(b + ".") for b in banned
            ):
                found.append(f"{edge.where(root)}: {edge.source} imports {edge.target}")
    return found


# --- the project -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def graph() -> dict[str, list[Import]]:
    return import_graph(ROOT)


def test_there_is_no_import_cycle(graph: dict[str, list[Import]]) -> None:
    found = [describe(cycle, ROOT) for cycle in cycles(graph)]
    assert not found, "import cycles:\n" + "\n".join(found)


@pytest.mark.parametrize(("layer", "banned", "why"), LAYERS, ids=[layer for layer, _, _ in LAYERS])
def test_imports_run_one_way(
    graph: dict[str, list[Import]], layer: str, banned: tuple[str, ...], why: str
) -> None:
    found = layer_violations(ROOT, graph, layer, banned)
    assert not found, f"{why}:\n" + "\n".join(found)


def test_the_graph_sees_every_kind_of_import(graph: dict[str, list[Import]]) -> None:
    """The checks above pass on an empty graph too: this one says the graph is the real one."""
    targets = {name: {edge.target for edge in edges} for name, edges in graph.items()}
    assert {"broker", "gateway", "gateway.api", "gateway.live", "gateway.cli"} <= set(graph)
    assert any(t.startswith("gateway.cli") for t in targets["gateway.__main__"]), "from .cli import main"
    assert "broker.codec" in targets["broker.handles"], "from .codec import LinePacker"
    assert "benchmarks.harness" in targets["benchmarks.publish"], (
        "from harness import ... (a script's import)"
    )
    assert "benchmarks.baselines.naive_publisher" in targets["benchmarks.e2e_publishers"]
    assert "gateway.cli.redis_server" in targets["benchmarks.publish"], "an absolute import of the project"
    assert all(edge.target in graph for edges in graph.values() for edge in edges), (
        "only the project's modules"
    )


# --- the checker, on a small tree with each fault made on purpose -------------------------------


def _tree(root: Path, files: dict[str, str]) -> None:
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def test_the_checker_finds_cycles_and_imports_against_the_layers(tmp_path: Path) -> None:
    _tree(
        tmp_path,
        {
            "broker/__init__.py": "",
            "broker/a.py": "from . import b\n",
            "broker/b.py": "import os\n\n\ndef late():\n    from .a import x\n",  # a lazy import counts
            "broker/c.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from broker import d\n",
            "broker/d.py": "from .c import y\nfrom gateway.ids import z\n",  # no cycle: c only type-checks d
            "gateway/__init__.py": "",
            "gateway/__main__.py": "from .cli import main\n",  # allowed: it is not a shared module
            "gateway/ids.py": "from gateway.live import ring\n",
            "gateway/live/__init__.py": "",
            "gateway/live/ring.py": "from ..api.app import create\n",
            "gateway/api/__init__.py": "",
            "gateway/api/app.py": "from gateway.cli import main\n",
            "gateway/cli/__init__.py": "def main(): ...\n",
            "benchmarks/one.py": "from two import f\n",
            "benchmarks/two.py": "def f():\n    import one\n",
            "benchmarks/three.py": "import json\nimport redis\nfrom baselines.naive import N\n",
            "benchmarks/baselines/naive.py": "N = 1\n",
        },
    )
    graph = import_graph(tmp_path)
    found = sorted(describe(cycle, tmp_path) for cycle in cycles(graph))
    assert found == [
        "benchmarks.one -> benchmarks.two -> benchmarks.one "
        "(benchmarks/one.py:1 imports benchmarks.two; benchmarks/two.py:2 imports benchmarks.one)",
        "broker.a -> broker.b -> broker.a (broker/a.py:1 imports broker.b; broker/b.py:5 imports broker.a)",
    ]
    assert {edge.target for edge in graph["benchmarks.three"]} == {"benchmarks.baselines.naive"}
    violations = {layer: layer_violations(tmp_path, graph, layer, banned) for layer, banned, _ in LAYERS}
    assert violations == {
        "gateway/live/": ["gateway/live/ring.py:1: gateway.live.ring imports gateway.api.app"],
        "gateway/api/": ["gateway/api/app.py:1: gateway.api.app imports gateway.cli"],
        "gateway/*.py": ["gateway/ids.py:1: gateway.ids imports gateway.live.ring"],
        "broker/": ["broker/d.py:2: broker.d imports gateway.ids"],
    }

"""The package layout a newcomer relies on (docs/architecture.md): no module outside a package, imports that run
one way (down the layers, never up or sideways), no import cycle, no class too long to read as one."""

from __future__ import annotations

import ast
from collections.abc import Iterator

from tests.helpers.paths import REPO

PACKAGE = REPO / "dp_train"
LAYERS = [
    {"utils"},
    {"shards"},
    {"runtime"},
    {"model", "losses", "data", "synth", "convert"},
    {"evaluation"},
    {"train", "inference"},
    {"planning"},
    {"cli"},
    {"__main__"},
]
"""Lowest first: a package imports only packages of lower layers (docs/architecture.md draws them)."""
MAX_CLASS_LINES = 250


def modules() -> Iterator[tuple[str, ast.Module]]:
    """Every module of dp_train, by dotted name, parsed."""
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(REPO).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        yield name, ast.parse(path.read_text(), filename=str(path))


def imported(tree: ast.Module) -> set[str]:
    """The dp_train modules a module imports anywhere (top level or inside a function)."""
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("dp_train"):
            names.add(node.module)
        elif isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names if alias.name.startswith("dp_train")}
    return names


def package_of(module: str) -> str:
    """`dp_train.data.stream` -> `data`."""
    return module.split(".")[1] if "." in module else ""


def layer_of(package: str) -> int:
    """The layer index of a package (fails for a package the layout does not place)."""
    found = [index for index, layer in enumerate(LAYERS) if package in layer]
    assert found, f"dp_train.{package} is in no layer: place it in LAYERS and docs/architecture.md"
    return found[0]


def test_dp_train_holds_packages_only():
    loose = sorted(p.name for p in PACKAGE.glob("*.py") if p.name not in ("__init__.py", "__main__.py"))
    assert not loose, f"modules outside a package: {loose}"


def test_imports_run_down_the_layers():
    wrong = []
    for name, tree in modules():
        own = package_of(name)
        for target in imported(tree):
            other = package_of(target)
            if other and other != own and layer_of(other) >= layer_of(own):
                wrong.append(f"{name} imports {target}")
    assert not wrong, "imports up or sideways: " + "; ".join(wrong)


def test_no_import_cycle():
    graph = {name: {t for t in imported(tree)} for name, tree in modules()}
    state: dict[str, int] = {}

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for target in graph.get(node, ()):
            if state.get(target) == 1:
                raise AssertionError("import cycle: " + " -> ".join(path[path.index(target):] + [target]))
            if target in graph and target not in state:
                visit(target, path + [target])
        state[node] = 2

    for start in graph:
        if start not in state:
            visit(start, [start])


def test_no_class_is_too_long_to_read_as_one():
    long = [f"{name}.{node.name} ({node.end_lineno - node.lineno + 1} lines)"
            for name, tree in modules() for node in tree.body
            if isinstance(node, ast.ClassDef) and node.end_lineno - node.lineno + 1 > MAX_CLASS_LINES]
    assert not long, f"classes over {MAX_CLASS_LINES} lines: {long}"

"""The layer rule and the absence of import circles (ARCHITECTURE.md), checked on the source.

Every ``import corridor...`` in ``src/corridor`` counts, at module level, inside
functions and under ``TYPE_CHECKING`` alike: a lazy or typing-only import is still a
dependency a reader has to follow.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "corridor"

# ARCHITECTURE.md, top to bottom: a layer may import only itself and the layers above it.
LAYERS = ("link", "distill", "kms", "hybrid", "mobility", "net", "inventory", "web", "cli")
# Modules at the top of the package (errors, logs, randomness) come before every layer;
# ``web`` and ``cli`` are both faces and may import each other's helpers only one way.
BASE = "base"


def _module_name(path: Path) -> str:
    parts = path.relative_to(SRC.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _layer(module: str) -> str:
    if module == "corridor.__main__":
        return "cli"  # ``python -m corridor`` is the command line
    parts = module.split(".")
    if len(parts) > 1 and parts[1] in LAYERS:
        return parts[1]
    return BASE


def _rank(layer: str) -> int:
    return -1 if layer == BASE else LAYERS.index(layer)


def _imports(path: Path, module: str) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - node.level + 1]
                prefix = ".".join(base + ([node.module] if node.module else []))
            else:
                prefix = node.module or ""
            found.add(prefix)
            found.update(f"{prefix}.{alias.name}" for alias in node.names)
    return {name for name in found if name == "corridor" or name.startswith("corridor.")}


def _graph() -> dict[str, set[str]]:
    modules = {_module_name(path): path for path in SRC.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for module, path in modules.items():
        targets = set()
        for name in _imports(path, module):
            # ``from corridor.kms import store`` names a module; ``from corridor.kms.store
            # import X`` names a module and a symbol: keep the longest module prefix.
            while name not in modules and "." in name:
                name = name.rpartition(".")[0]
            if name in modules and name != module:
                targets.add(name)
        graph[module] = targets
    return graph


GRAPH = _graph()


def test_the_source_tree_is_found() -> None:
    assert "corridor.kms.store" in GRAPH and "corridor.link.simulator" in GRAPH


@pytest.mark.parametrize("module", sorted(GRAPH))
def test_a_layer_imports_only_the_layers_above_it(module: str) -> None:
    layer = _layer(module)
    wrong = sorted(target for target in GRAPH[module]
                   if _rank(_layer(target)) > _rank(layer)
                   and not (layer in ("web", "cli") and _layer(target) in ("web", "cli")))
    assert not wrong, f"{module} ({layer}) imports layers below it: {wrong}"


def test_no_import_circles() -> None:
    # Package ``__init__`` modules re-export their children by design; a child importing
    # its own package's ``__init__`` is not a circle of modules.
    graph = {module: {t for t in targets if not module.startswith(t + ".")}
             for module, targets in GRAPH.items()}
    cycles: list[list[str]] = []
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(module: str) -> None:
        state[module] = 1
        stack.append(module)
        for target in sorted(graph[module]):
            if state.get(target) == 1:
                cycles.append([*stack[stack.index(target):], target])
            elif target not in state:
                visit(target)
        stack.pop()
        state[module] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module)
    assert not cycles, "import circles:\n" + "\n".join(" -> ".join(c) for c in cycles)

"""The package reads as the pipeline: each layer imports only the layers below it, and no module reads another
module's private names."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import dnas_prune

PACKAGE = Path(dnas_prune.__file__).parent
# Bottom to top. A module may import its own package (subpackage) and any lower layer; layers of one rank are
# beside each other and do not import each other.
LAYERS = [("errors",), ("models",), ("device", "io"), ("train",), ("search",), ("finalize",), ("report",),
          ("stages", "config"), ("pipeline",), ("cli",)]
RANK = {part: rank for rank, parts in enumerate(LAYERS) for part in parts}
MODULES = sorted(p for p in PACKAGE.rglob("*.py") if p.relative_to(PACKAGE).as_posix() not in ("__init__.py", "__main__.py"))


def part_of(path: Path) -> str:
    return path.relative_to(PACKAGE).parts[0].removesuffix(".py")


def imported_parts(path: Path) -> set[str]:
    """The top-level parts of dnas_prune (``search``, ``io``, ...) that ``path`` imports from."""
    package = path.relative_to(PACKAGE).parent.parts
    parts = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level:
            base = package[: len(package) - (node.level - 1)]
            target = [*base, *(node.module.split(".") if node.module else [])]
            names = target or [alias.name for alias in node.names]
            parts.update([names[0]] if target else names)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            module = node.module if isinstance(node, ast.ImportFrom) else None
            for name in [module] if module else [alias.name for alias in node.names]:
                if name and name.startswith("dnas_prune."):
                    parts.add(name.split(".")[1])
    return parts


@pytest.mark.parametrize("path", MODULES, ids=lambda p: p.relative_to(PACKAGE).as_posix())
def test_no_module_imports_a_layer_above_its_own(path: Path) -> None:
    own = part_of(path)
    upward = {part for part in imported_parts(path) - {own} if part not in RANK or RANK[part] >= RANK[own]}
    assert not upward, f"{path.relative_to(PACKAGE)} imports {sorted(upward)} (layer {own})"


@pytest.mark.parametrize("path", MODULES, ids=lambda p: p.relative_to(PACKAGE).as_posix())
def test_no_module_reads_another_modules_private_names(path: Path) -> None:
    """``x._name`` only for a name this module defines itself (on ``self``, ``cls`` or its own objects); the
    internals of other libraries (``torch``, ``argparse``) are their business."""
    tree = ast.parse(path.read_text())
    own, external = set(), set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            external.update((a.asname or a.name).split(".")[0] for a in node.names if not a.name.startswith("dnas_prune"))
        elif isinstance(node, ast.ImportFrom) and not node.level and not (node.module or "").startswith("dnas_prune"):
            external.update(a.asname or a.name for a in node.names)
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            own.add(node.name)
        elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
            own.add(node.attr)
        elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            own.add(node.id)
        elif isinstance(node, ast.keyword) and node.arg:
            own.add(node.arg)
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__"):
            root = node.value
            while isinstance(root, ast.Attribute):
                root = root.value
            if node.attr not in own and not (isinstance(root, ast.Name) and root.id in external):
                found.append(f"line {node.lineno}: .{node.attr}")
        elif isinstance(node, ast.ImportFrom):
            found += [f"line {node.lineno}: import {a.name}" for a in node.names if a.name.startswith("_")]
    assert not found, found


def test_the_layers_cover_the_package() -> None:
    assert {part_of(p) for p in MODULES} <= set(RANK)

"""Tests of the package as installed: its exports, and the error when the core is not built."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np

import mmap_ninja


def test_exports():
    for name in mmap_ninja.__all__:
        assert hasattr(mmap_ninja, name), name
    assert mmap_ninja.__version__.count(".") == 2


def test_importing_without_the_compiled_core_says_how_to_build_it(tmp_path):
    source = Path(mmap_ninja.__file__).parent
    shutil.copytree(source, tmp_path / "mmap_ninja", ignore=shutil.ignore_patterns("*.so", "*.pyd", "__pycache__"))
    # -S: no site hooks, so that an editable install cannot supply the core from elsewhere
    numpy_site = str(Path(np.__file__).parent.parent)
    code = f"import sys; sys.path[:0] = [{str(tmp_path)!r}, {numpy_site!r}]; import mmap_ninja"
    proc = subprocess.run([sys.executable, "-S", "-c", code], cwd=tmp_path, capture_output=True, text=True)
    assert proc.returncode != 0
    assert "mmap_ninja._core is not built" in proc.stderr and "pip install ." in proc.stderr


def test_importing_the_package_does_not_import_torch():
    code = "import sys, mmap_ninja, mmap_ninja.cli; print('torch' in sys.modules)"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0 and proc.stdout.strip() == "False"


def import_graph():
    """``{module: modules of this package it imports}``, at module level or inside functions,
    read from the source of every module of the package."""
    import ast

    root = Path(mmap_ninja.__file__).parent
    graph = {}
    for path in root.rglob("*.py"):
        relative = path.relative_to(root.parent).with_suffix("")
        name = ".".join(relative.parts[:-1] if relative.name == "__init__" else relative.parts)
        package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
        imported = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                base = package
                for _ in range(node.level - 1):
                    base = base.rsplit(".", 1)[0]
                target = (base + ("." + node.module if node.module else "")) if node.level else (node.module or "")
                modules = [f"{target}.{alias.name}" for alias in node.names]
                imported.update(modules)
                if not any((root.parent / Path(*module.split("."))).with_suffix(".py").exists() or
                           (root.parent / Path(*module.split("."))).with_suffix(".pyx").exists() or
                           (root.parent / Path(*module.split("."))).is_dir() for module in modules):
                    imported.add(target)  # names of a module, not modules of a package
            elif isinstance(node, ast.Import):
                imported.update(alias.name for alias in node.names)
        graph[name] = imported
    return {name: {m for m in imported if m in graph and m != name} for name, imported in graph.items()}


def test_the_command_line_is_in_no_import_circle():
    """Nothing the command line imports imports it back, and ``mmap_ninja.benchmark`` (kept for
    its import path) only forwards to ``mmap_ninja.cli.bench``."""
    graph = import_graph()
    cli = {name for name in graph if name == "mmap_ninja.cli" or name.startswith("mmap_ninja.cli.")}
    assert "mmap_ninja.cli.bench" in cli and len(cli) >= 4

    def reaches(start, goal, seen=()):
        return any(nxt == goal or (nxt not in seen and reaches(nxt, goal, seen + (nxt,))) for nxt in graph[start])

    outside = {m for name in cli for m in graph[name]} - cli
    assert not [m for m in outside if any(reaches(m, c) for c in cli)]
    assert graph["mmap_ninja.benchmark"] <= cli | {"mmap_ninja.cli"}
    from mmap_ninja.benchmark import generate_images
    from mmap_ninja.cli.bench import generate_images as same

    assert generate_images is same


def test_no_module_imports_one_that_imports_it_back():
    """No import circle anywhere in the package, counting imports made inside functions."""
    graph = import_graph()
    state = {}

    def circle_from(module, path):
        state[module] = "open"
        for imported in sorted(graph[module]):
            if state.get(imported) == "open":
                return path[path.index(imported):] + [imported]
            if imported not in state:
                found = circle_from(imported, path + [imported])
                if found:
                    return found
        state[module] = "done"
        return None

    for module in sorted(graph):
        if module not in state:
            circle = circle_from(module, [module])
            assert circle is None, " -> ".join(circle)
    assert {"mmap_ninja.generic", "mmap_ninja.sharded", "mmap_ninja._format.kinds", "mmap_ninja.ragged"} <= set(graph)


def _is_public(module: str) -> bool:
    return not any(part.startswith("_") for part in module.split(".")[1:])


def test_no_private_name_of_a_public_module_is_used_elsewhere():
    """A public module's private names (``_Name``) are its own: no other module of the package
    imports them (``from .ragged import _X``) or reaches for them (``ragged._X``)."""
    import ast

    root = Path(mmap_ninja.__file__).parent
    modules = {}
    for path in root.rglob("*.py"):
        relative = path.relative_to(root.parent).with_suffix("")
        modules[".".join(relative.parts[:-1] if relative.name == "__init__" else relative.parts)] = path
    compiled = {".".join(path.relative_to(root.parent).with_suffix("").parts) for path in root.rglob("*.pyx")}
    found = []
    for name, path in sorted(modules.items()):
        package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
        tree = ast.parse(path.read_text())
        aliases = {}
        for node in ast.walk(tree):
            if not isinstance(node, ast.ImportFrom):
                continue
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            for alias in node.names:
                if f"{target}.{alias.name}" in compiled:
                    continue
                if f"{target}.{alias.name}" in modules:
                    aliases[alias.asname or alias.name] = f"{target}.{alias.name}"
                elif alias.name.startswith("_") and not alias.name.startswith("__") and target in modules \
                        and _is_public(target) and target != name:
                    found.append(f"{name}: from {target} import {alias.name}")
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in aliases:
                target = aliases[node.value.id]
                if node.attr.startswith("_") and not node.attr.startswith("__") and _is_public(target) \
                        and target != name:
                    found.append(f"{name}: {target}.{node.attr}")
    assert found == []


def test_the_format_and_storage_layers_import_no_map_object():
    """``mmap_ninja._format`` (what each kind is on disk, the registry) and ``mmap_ninja._storage``
    (commits, locks, array files) import nothing of the object layer or the integrations: the
    objects are registered with the registry by their own modules."""
    graph = import_graph()
    lower = {name for name in graph if name.startswith(("mmap_ninja._format", "mmap_ninja._storage"))}
    assert {"mmap_ninja._format.kinds", "mmap_ninja._format.ragged", "mmap_ninja._storage"} <= lower
    allowed = lower | {"mmap_ninja", "mmap_ninja._meta", "mmap_ninja._keys", "mmap_ninja._iteration", "mmap_ninja.base",
                       "mmap_ninja.parallel"}

    def reach(module, seen):
        for nxt in graph[module]:
            if nxt not in seen:
                seen.add(nxt)
                reach(nxt, seen)
        return seen

    outside = {(name, m) for name in lower for m in reach(name, set()) if m not in allowed}
    assert outside == set()
    from mmap_ninja._format.kinds import KINDS

    assert all(kind.opener is not None and kind.builder is not None for kind in KINDS.values())


def test_kinds_are_dispatched_by_the_registry_not_by_their_names():
    """Outside the format layer (``mmap_ninja._format``: the registry and each kind's own
    module), code asks the registry what a kind does (``KINDS[name].rows``, ``.text``,
    ``.sharded_reader``, ...) rather than comparing kind names: at most a handful of
    comparisons such as ``kind == "ragged"`` remain."""
    import ast

    from mmap_ninja._format.kinds import KINDS
    from mmap_ninja.sharded import TYPE

    names = set(KINDS) | {TYPE, "strings"}
    root = Path(mmap_ninja.__file__).parent
    found = []
    for path in sorted(root.rglob("*.py")):
        if "_format" in path.relative_to(root).parts:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.Compare):
                continue
            operands = [node.left, *node.comparators]
            for operand in operands:
                values = operand.elts if isinstance(operand, (ast.Tuple, ast.List, ast.Set)) else [operand]
                if any(isinstance(v, ast.Constant) and v.value in names for v in values):
                    found.append(f"{path.relative_to(root)}:{node.lineno}")
    assert len(found) <= 3, found

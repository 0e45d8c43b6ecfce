"""The bundle boundary: ShapesWorld plugs in through the registry; the library never names it.

Checked on the source text with the ast module (an independent reading, not the registry itself):
no module outside ``instructengine/shapes/`` imports ``instructengine.shapes``, names it in a string,
or holds a string equal to one of the names the bundle registers (a branch on a bundle's component
name); and ``shapes/`` imports only public names of the library.
"""

from __future__ import annotations

import ast
from pathlib import Path

import instructengine
from instructengine.shapes.bundle import COMPONENTS

ROOT = Path(instructengine.__file__).parent
LIBRARY = [p for p in ROOT.rglob("*.py") if "shapes" not in p.relative_to(ROOT).parts[:1]]
BUNDLE = list((ROOT / "shapes").rglob("*.py"))
BUNDLE_NAMES = {name for names in COMPONENTS.values() for name in names}


def _imports(tree: ast.AST) -> list[tuple[str, list[str]]]:
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(a.name, []) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.append((node.module, [a.name for a in node.names]))
    return out


def _docstrings(tree: ast.AST) -> set[int]:
    ids = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                ids.add(id(first.value))
    return ids


def test_the_fixtures_see_the_whole_package():
    assert len(LIBRARY) > 60 and len(BUNDLE) > 10
    assert {"shapes_model", "shapes_oracle", "shapesbench", "shapes"} <= BUNDLE_NAMES


def test_no_library_module_imports_or_names_the_bundle():
    offenders = []
    for path in LIBRARY:
        tree = ast.parse(path.read_text())
        for module, _ in _imports(tree):
            if module == "instructengine.shapes" or module.startswith("instructengine.shapes."):
                offenders.append(f"{path.relative_to(ROOT)} imports {module}")
        docs = _docstrings(tree)
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docs:
                if "instructengine.shapes" in node.value:
                    offenders.append(f"{path.relative_to(ROOT)} names {node.value!r}")
                elif node.value in BUNDLE_NAMES:
                    offenders.append(f"{path.relative_to(ROOT)} holds the bundle's component name {node.value!r}")
    assert offenders == []


def test_the_bundle_uses_only_public_library_names():
    private = []
    for path in BUNDLE:
        for module, names in _imports(ast.parse(path.read_text())):
            if not module.startswith("instructengine.") or module.startswith("instructengine.shapes"):
                continue
            if any(part.startswith("_") for part in module.split(".")):
                private.append(f"{path.name}: {module}")
            private += [f"{path.name}: {module}.{n}" for n in names if n.startswith("_")]
    assert private == []


def test_the_bundle_is_registered_through_its_entry_point():
    from importlib.metadata import entry_points

    from instructengine import registry

    eps = {ep.name: ep.value for ep in entry_points(group=registry.ENTRY_POINT_GROUP)}
    assert eps.get("shapes") == "instructengine.shapes.bundle:register"
    for kind, names in COMPONENTS.items():
        assert set(names) <= set(registry.available(kind)), kind
    # every registered target resolves (a typo in the bundle table would fail only at use)
    for kind, names in COMPONENTS.items():
        for name in names:
            assert registry.resolve(kind, name) is not None

"""The layers of docs/ARCHITECTURE.md, checked on the import statements of every module
(also those inside functions): ops/ and ir/ import nothing from frontend/, backends/ or
runtime/, and frontend/ imports no backend."""
import ast
import os

import pytest

PKG = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "flowjit")
FORBIDDEN = {
    "ir": ("frontend", "backends", "runtime", "compat", "ops", "passes"),
    "ops": ("frontend", "backends", "runtime", "compat"),
    "passes": ("frontend", "backends", "runtime", "compat"),
    "backends": ("frontend", "compat"),
    "runtime": ("frontend", "compat"),
    "frontend": ("backends", "compat"),
    "keras": ("backends", "compat", "runtime", "passes"),
    "distributed": ("backends", "compat", "keras"),
}


def imported_layers(path, layer):
    """flowjit subpackages imported by the module at `path` (in flowjit/<layer>/...)."""
    tree = ast.parse(open(path).read(), path)
    rel_parts = os.path.relpath(path, PKG).split(os.sep)[:-1]       # package of the module
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = rel_parts[:len(rel_parts) - (node.level - 1)]
                mod = (node.module or "").split(".") if node.module else []
                target = base + [m for m in mod if m]
                names = [".".join(["flowjit"] + target + ([a.name] if not target else []))
                         for a in node.names]
            else:
                names = [node.module]
        else:
            continue
        for name in names:
            parts = name.split(".")
            if parts[0] == "flowjit" and len(parts) > 1:
                found.append((parts[1], node.lineno))
    return found


def modules(layer):
    for root, _, files in os.walk(os.path.join(PKG, layer)):
        for f in files:
            if f.endswith(".py"):
                yield os.path.join(root, f)


@pytest.mark.parametrize("layer", sorted(FORBIDDEN))
def test_lower_layers_do_not_import_higher_ones(layer):
    bad = [f"{os.path.relpath(path, PKG)}:{line} imports flowjit.{target}"
           for path in modules(layer) for target, line in imported_layers(path, layer)
           if target in FORBIDDEN[layer]]
    assert not bad, "\n".join(bad)

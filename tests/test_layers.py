"""The layers' import direction, read from the source: cli -> api -> measure -> explore -> patching ->
runtime -> host -> model, each importing only its own layer or lower ones (errors.py is the
leaf every layer may use). A wrong arrow fails here, before it becomes a tangle."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "numaemu"
# Lowest first. A module may import from its own rank or a lower one.
ORDER = ("errors", "model", "host", "runtime", "patching", "explore", "measure", "api", "cli")
RANK = {name: i for i, name in enumerate(ORDER)}
TOP = {"__init__", "__main__"}  # the package's face: may import anything


def layer_of(module: str) -> str | None:
    """'numaemu.host.clock' -> 'host'; None for the package itself and its top modules."""
    parts = module.split(".")
    if parts[0] != "numaemu" or len(parts) < 2 or parts[1] in TOP:
        return None
    return parts[1]


def imports_of(path: Path, module: str) -> list[tuple[int, str]]:
    """(line, absolute module) of every numaemu import in `path`, relative ones resolved."""
    tree = ast.parse(path.read_text(), str(path))
    package = module.rsplit(".", 1)[0] if path.name != "__init__.py" else module
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names if a.name.startswith("numaemu")]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.startswith("numaemu"):
                # `from numaemu import model` imports numaemu.model: judge each name.
                names = [f"{target}.{a.name}" for a in node.names] if layer_of(target) is None else [target]
                out += [(node.lineno, n) for n in names]
    return out


def violations(root: Path = PACKAGE) -> list[str]:
    bad = []
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root.parent).with_suffix("")
        module = ".".join(rel.parts).removesuffix(".__init__")
        here = layer_of(module)
        if here is None:
            continue
        assert here in RANK, f"{module}: layer '{here}' is not in ORDER; place it there"
        for line, target in imports_of(path, module):
            there = layer_of(target)
            if there is None or there not in RANK:
                if target not in ("numaemu", "numaemu.__version__"):
                    bad.append(f"{path.relative_to(root.parent)}:{line}: {module} imports {target} (the package's top, above every layer)")
                continue
            if RANK[there] > RANK[here]:
                bad.append(f"{path.relative_to(root.parent)}:{line}: {here} imports {there} ({target}): {there} is above {here}")
    return bad


def test_every_import_points_down_the_layers():
    assert violations() == []


def test_a_planted_wrong_import_is_caught(tmp_path):
    """The checker itself: a model module importing the host layer is named, with its line."""
    pkg = tmp_path / "numaemu"
    (pkg / "model").mkdir(parents=True)
    (pkg / "host").mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "model" / "__init__.py").write_text("")
    (pkg / "host" / "__init__.py").write_text("")
    (pkg / "host" / "clock.py").write_text("import time\n")
    (pkg / "model" / "cache.py").write_text("import numpy\n\nfrom numaemu.host.clock import spin\n")
    (pkg / "model" / "engine.py").write_text("from . import cache\nfrom ..host import clock\n")
    found = violations(pkg)
    assert found == [
        "numaemu/model/cache.py:3: model imports host (numaemu.host.clock): host is above model",
        "numaemu/model/engine.py:2: model imports host (numaemu.host): host is above model",
    ]


@pytest.mark.parametrize("layer", ORDER[1:])
def test_every_layer_exists_and_says_what_it_is(layer):
    init = PACKAGE / layer / "__init__.py"
    assert init.exists() and ast.get_docstring(ast.parse(init.read_text())), f"numaemu/{layer}/ needs an __init__.py with a docstring"

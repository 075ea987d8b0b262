"""The model zoo's place in the import graph: it imports nothing above it, and what the engine and
the losses need from model outputs lives in neutral modules, so no import cycle runs through the zoo."""
from __future__ import annotations

import ast
from pathlib import Path

import imseg

SRC = Path(imseg.__file__).parent
# What the zoo may import from imseg: itself, and the neutral modules below everything. imseg.pretrained
# (the writer behind SegmentationModel.save_pretrained) reads only imseg.meta, never the engine or the zoo.
ZOO_MAY_IMPORT = ("imseg.models", "imseg.preprocessing", "imseg.outputs", "imseg.uncertainty", "imseg.catalogue",
                  "imseg.pretrained")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path) -> set[str]:
    """Every imseg module ``path`` imports, at module level or inside functions."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            # ``from imseg.models import deeplab`` imports the submodule imseg.models.deeplab.
            found |= {node.module, *(f"{node.module}.{a.name}" for a in node.names)}
    return {name for name in found if name.split(".")[0] == "imseg" and _is_module(name)}


def _is_module(name: str) -> bool:
    path = SRC.parent.joinpath(*name.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def _zoo() -> dict[str, set[str]]:
    return {_module_name(p): imports_of(p) for p in sorted((SRC / "models").glob("*.py"))}


def test_the_zoo_imports_nothing_above_it() -> None:
    for module, imported in _zoo().items():
        above = sorted(name for name in imported if not name.startswith(ZOO_MAY_IMPORT))
        assert not above, f"{module} imports {above}"


def test_outputs_and_uncertainty_are_neutral() -> None:
    assert imports_of(SRC / "outputs.py") == set()
    assert imports_of(SRC / "uncertainty.py") == {"imseg.outputs"}
    for user in ("losses.py", "engine/inference.py", "engine/predict.py"):
        zoo = sorted(name for name in imports_of(SRC / user) if name.startswith("imseg.models"))
        assert not zoo, f"{user} imports {zoo}: model outputs and MC dropout live in imseg.outputs / imseg.uncertainty"


def test_no_import_cycle_inside_the_zoo() -> None:
    zoo = _zoo()
    graph = {module: {n for n in imported if n in zoo and n != module} for module, imported in zoo.items()}
    done: set[str] = set()

    def visit(module: str, path: tuple[str, ...]) -> None:
        assert module not in path, "import cycle: " + " -> ".join((*path[path.index(module):], module))
        if module in done:
            return
        for child in graph.get(module, ()):
            visit(child, (*path, module))
        done.add(module)

    for module in graph:
        visit(module, ())

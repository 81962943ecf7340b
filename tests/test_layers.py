"""The package's layers: imports only point down (ARCHITECTURE.md), inside functions too, and modules stay small."""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "pipeline"
# bottom to top; a module may import its own package and anything in a lower layer
LAYERS = [
    {"pipeline.errors"},
    {"pipeline.io"},
    {"pipeline.figures"},
    {"pipeline.data", "pipeline.models"},
    {"pipeline.inference", "pipeline.tracking"},
    {"pipeline.evaluation", "pipeline.bundle"},
    {"pipeline.training"},
    {"pipeline.commands"},
    {"pipeline.cli"},
    {"pipeline.__main__", "pipeline"},
]


def _unit(module: str) -> str:
    """The layer unit of a dotted module name: pipeline.data.manifest -> pipeline.data."""
    parts = module.split(".")
    return ".".join(parts[:2]) if len(parts) > 1 else parts[0]


def _layer(unit: str) -> int:
    return next(i for i, layer in enumerate(LAYERS) if unit in layer)


def _modules():
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE.parent).with_suffix("")
        parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
        yield ".".join(parts), path


def _imports(module: str, path: Path):
    """Every pipeline module that ``module`` imports, anywhere in the file (functions included)."""
    is_package = path.name == "__init__.py"
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = module.split(".")[: len(module.split(".")) - node.level + (1 if is_package else 0)]
                base = ".".join(parent + ([base] if base else []))
            names = [base]
        else:
            continue
        yield from (n for n in names if n == "pipeline" or n.startswith("pipeline."))


def test_every_unit_has_a_layer():
    units = {_unit(m) for m, _ in _modules()}
    assert units <= set().union(*LAYERS), units - set().union(*LAYERS)


def test_imports_only_point_down():
    upward = []
    for module, path in _modules():
        own = _unit(module)
        for imported in _imports(module, path):
            target = _unit(imported)
            if target != own and _layer(target) >= _layer(own):
                upward.append(f"{module} imports {imported} (layer {_layer(target)} >= {_layer(own)})")
    assert not upward, "\n".join(upward)


def test_modules_stay_small():
    long = [f"{p.relative_to(PACKAGE.parent)}: {n} lines" for _, p in _modules()
            if (n := len(p.read_text().splitlines())) > 320]
    assert not long, "\n".join(long)

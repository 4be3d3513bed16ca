"""The layers of src/cxr14 read top-down, and no module imports itself back.

Bottom to top (a module may import its own layer's package and any layer below it):

    foundation   config, labels, io, errors, model_names, tracking (bookkeeping: only training and stages log)
    data, models the cache and the loader; the architectures (neither imports the other)
    checkpoint   training/checkpoint.py, the checkpoint file format (written by training, read by inference)
    inference    choose the device, load a trained model safely, score cache pixels
    evaluation   pure metrics, statistics, efficiency, Grad-CAM, embeddings
    training     the engine, losses, sampling, schedule (validates with inference + evaluation.metrics)
    reporting    figures, comparisons, the HTML/xlsx report, model cards
    deploy       use a trained model: read new images, predict, export (TorchScript/ONNX), MLflow models
    stages       one module per pipeline stage: open cache, load checkpoint, call libraries, write, log
    cli          argument parsing shared by pipeline/*.py (the scripts themselves sit on top) and the
                 `cxr14` console script (cxr14.__main__)

Every `import` counts, including those inside functions (a deferred import hides a circle from
Python but not from this test).
"""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = SRC / "cxr14"

# (layer name, module prefixes), bottom first. The longest matching prefix decides a module's layer.
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    (
        "foundation",
        ("cxr14", "cxr14.config", "cxr14.labels", "cxr14.io", "cxr14.errors", "cxr14.tracking", "cxr14.model_names"),
    ),
    ("data", ("cxr14.data",)),
    ("models", ("cxr14.models",)),
    ("checkpoint", ("cxr14.training.checkpoint",)),
    ("inference", ("cxr14.inference",)),
    ("evaluation", ("cxr14.evaluation",)),
    ("training", ("cxr14.training",)),
    ("reporting", ("cxr14.reporting",)),
    ("deploy", ("cxr14.deploy",)),
    ("stages", ("cxr14.stages",)),
    ("cli", ("cxr14.cli", "cxr14.__main__", "cxr14.warm")),
]
# Layers at the same height that must not import each other.
PEERS = {frozenset({"data", "models"})}
# Bookkeeping: only these layers write to MLflow (deploy: MLflow models and the Model Registry).
ONLY_IMPORTED_BY = {"cxr14.tracking": {"training", "deploy", "stages", "cli"}}


def module_name(path: Path) -> str:
    parts = path.relative_to(SRC).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def all_modules() -> dict[str, Path]:
    return {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def imports_of(name: str, path: Path, modules: dict[str, Path]) -> list[tuple[str, int]]:
    """(imported cxr14 module, line) for every import in the file, wherever it is."""
    found = []
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            found += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            for alias in node.names:
                candidate = f"{base}.{alias.name}"
                found.append((candidate if candidate in modules else base, node.lineno))
    return [(target, line) for target, line in found if target == "cxr14" or target.startswith("cxr14.")]


def layer_of(module: str) -> tuple[int, str]:
    best = None
    for rank, (layer, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            if module == prefix or module.startswith(prefix + ".") and prefix != "cxr14":
                if best is None or len(prefix) > best[0]:
                    best = (len(prefix), rank, layer)
    assert best is not None, f"{module} is in no layer: add it to LAYERS in tests/test_layers.py"
    return best[1], best[2]


def import_graph() -> dict[str, list[tuple[str, int]]]:
    modules = all_modules()
    return {name: imports_of(name, path, modules) for name, path in modules.items()}


def test_every_module_has_a_layer():
    for module in all_modules():
        layer_of(module)


def test_imports_point_down():
    offending = []
    for importer, targets in import_graph().items():
        rank, layer = layer_of(importer)
        for target, line in targets:
            target_rank, target_layer = layer_of(target)
            where = f"{importer} (line {line}) imports {target}: {layer} -> {target_layer}"
            if target_layer != layer and frozenset({layer, target_layer}) in PEERS:
                offending.append(f"{where}, peers that must not import each other")
            elif target_rank > rank:
                offending.append(f"{where}, an upward import")
            allowed = ONLY_IMPORTED_BY.get(target)
            if allowed is not None and layer not in allowed and importer != target:
                offending.append(f"{where}, only {sorted(allowed)} may import {target}")
    offending = list(dict.fromkeys(offending))  # one line per import statement
    assert not offending, "imports against the layer order (see tests/test_layers.py):\n" + "\n".join(offending)


def test_no_import_circle():
    graph = {
        module: sorted({target for target, _ in targets if target != module})
        for module, targets in import_graph().items()
    }
    lines = {(module, target): line for module, targets in import_graph().items() for target, line in targets}
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done
    path: list[str] = []
    circles = []

    def visit(module: str) -> None:
        state[module] = 1
        path.append(module)
        for target in graph.get(module, []):
            if state.get(target) == 1:
                cycle = path[path.index(target) :] + [target]
                circles.append(
                    " -> ".join(f"{a} (line {lines[(a, b)]})" for a, b in zip(cycle, cycle[1:])) + f" -> {target}"
                )
            elif target not in state:
                visit(target)
        path.pop()
        state[module] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module)
    assert not circles, "import circles:\n" + "\n".join(circles)


def test_pipeline_is_imported_by_no_library():
    offending = []
    for importer, path in all_modules().items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            names = (
                [alias.name for alias in node.names]
                if isinstance(node, ast.Import)
                else [node.module or ""]
                if isinstance(node, ast.ImportFrom)
                else []
            )
            offending += [
                f"{importer} (line {node.lineno}) imports {name}"
                for name in names
                if name == "pipeline" or name.startswith("pipeline.")
            ]
    assert not offending, "src/cxr14 must not import the pipeline scripts:\n" + "\n".join(offending)

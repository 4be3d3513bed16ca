"""dvc.yaml declares exactly the library files and params keys each stage reads.

DVC re-runs a stage only when a declared dependency changes, so a file or key missing from
`deps:`/`params:` leaves stale outputs that `dvc status` calls up to date, and an unread one
causes needless re-runs. These tests derive both lists from the code and compare.

Files (`test_stage_deps_match_import_closure`)
    From each stage's script (the `pipeline/<x>.py` in its `cmd`) the transitive closure of
    project modules is computed with `ast`: every `import`/`from ... import` anywhere in a
    module, including lazy imports inside functions (not those under `if TYPE_CHECKING:`,
    which never run), `from pkg import name` where `name` is a submodule, relative imports and
    `importlib.import_module("cxr14...")` with a literal name. Importing `cxr14.a.b` executes
    `cxr14/__init__.py` and `cxr14/a/__init__.py`, so package `__init__` files are part of the
    closure. Rule for them (the same everywhere): an `__init__.py` must be declared unless it is
    *inert* - only a docstring and constant assignments such as `__version__ = "0.1.0"` - and
    no module imports a name from it (then nothing it holds can change a stage's result).
    Non-Python files a module reads from the package (`importlib.resources`) are invisible to
    `ast`, so they are listed in RESOURCES below; `test_resource_reads_are_tabled` fails when
    a module starts reading package data or a data file appears under src/ without an entry.
    A module the script imports from its own folder (pipeline/_checkout.py) is needed too.
    Every file so found must be declared (a declared directory covers the files under it),
    and every declared `src/`/`pipeline/` path must be needed: a file outside the closure, or
    a directory holding no needed file, fails too.

Params (`test_stage_params_match_config_reads`)
    Static value-flow analysis of the Config object, conservative wherever it cannot follow
    (a runtime recorder would see only the branches one fixture takes, never e.g. `data.nih.*`
    on the phantom; a search for field names anywhere in the closure drowns in false hits such
    as `model.train()` or `text.split`). The key schema comes from the dataclasses in
    cxr14.config. Config objects originate at `load_config(...)` (anywhere in the closure) and
    are followed through every function of the stage's modules:
      * `cfg.train`, `cfg.data.phantom` are sections; `cfg.evaluate.batch_size` reads that key;
      * aliases are followed (`settings = cfg.evaluate`, `train = cfg.train_for(model)`;
        `train_for` reads `train.overrides` and returns the `train` section, so
        `train.freeze_backbone` reads `train.freeze_backbone`); `split.resolved_method()` reads
        `split.method`; `getattr(section, "literal")` reads that key;
      * a section passed to a project function flows into the matching parameter and is
        followed there, annotated or not (`make_splits(metadata, cfg.split, ...)`);
      * any other use - passed to a third-party or unresolvable callable
        (`dataclasses.asdict(train)`, a class, a method of another object), returned, stored in
        an attribute or container, compared - counts as reading the whole section.
    config.py itself is not analysed (loading validates every key, which decides pass/fail,
    not outputs); its API is the small table CONFIG_SOURCES/CONFIG_METHODS/SECTION_METHODS.
    A stage's `params:` must cover every key read (a listed section covers its keys), and each
    entry must be read: a never-read entry fails, and so does a listed section of which only
    some keys are read (list those keys instead), since either re-runs the stage needlessly.
    PROVENANCE_READS names the one exemption: train@ saves the whole resolved config beside
    its checkpoint and logs it to MLflow (`config_to_dict` in training/engine.py). That copy
    is a record, not an input to the weights; declaring every key would retrain every model
    when e.g. `explain.tsne_points` changes. `config_to_dict` anywhere else reads everything.
    Files are module-grained (DVC hashes whole files and any line of an imported module may
    run); params are function-grained (a key matters only if code the stage runs reads it).
"""

from __future__ import annotations

import ast
import dataclasses
import re
import typing
from collections import deque
from functools import cache
from pathlib import Path

import pytest
import yaml

from cxr14 import config as config_module
from cxr14.training.code import TRAINING_CODE

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src"
PACKAGE = "cxr14"
SCRIPT = re.compile(r"\bpipeline/[\w/]+\.py\b")

# Package data read at run time, by the module that reads it: module -> (package imported by
# name, e.g. through importlib.resources.files, and the files read).
RESOURCES: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "cxr14.data.official_split": (("cxr14.data.resources",), ("src/cxr14/data/resources/test_list.txt.gz",)),
    # The MLflow model's code file (models from code), logged beside the model.
    "cxr14.deploy.mlflow_model": ((), ("src/cxr14/deploy/pyfunc_model.py",)),
    # The warm-start client stats the package's files (which server may run the stage), reads none.
    "cxr14.warm": ((), ()),
    # The resume key hashes the training code (test_resume_key_hashes_the_code_train_declares).
    "cxr14.training.code": ((), tuple(f"src/cxr14/{path}" for path in TRAINING_CODE)),
}
# Source text that betrays a read of package data or of a file next to the code.
RESOURCE_HINTS = re.compile(
    r"importlib\.resources|importlib_resources|pkgutil\.get_data|pkg_resources|__file__"
    r"|\bresources\b"
)

# How config objects arise and what the Config API reads (config.py itself is not analysed:
# loading validates every key, which decides pass/fail but no output).
CONFIG_SOURCES = {"load_config", "config_from_dict"}  # calls returning the whole Config
CONFIG_METHODS = {"train_for": (("train.overrides",), "train")}  # Config method -> (keys read, section returned)
SECTION_METHODS = {"resolved_method": "method"}  # section method -> the key it reads
# (module, call) whose reads are a provenance record, not an input (see the docstring).
PROVENANCE_READS = {("cxr14.training.engine", "config_to_dict")}


# ----------------------------------------------------------------------------- modules


def module_file(name: str) -> Path | None:
    base = SRC.joinpath(*name.split("."))
    if (base / "__init__.py").is_file():
        return base / "__init__.py"
    if base.with_suffix(".py").is_file():
        return base.with_suffix(".py")
    return None


def is_package(name: str) -> bool:
    return (SRC.joinpath(*name.split(".")) / "__init__.py").is_file()


def rel(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


@cache
def parse(path: Path) -> ast.Module:
    return ast.parse(path.read_text(encoding="utf-8"), filename=str(path))


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _from_base(node: ast.ImportFrom, module: str | None, package: bool) -> str:
    """The absolute module of `from <base> import ...` (relative imports resolved)."""
    if not node.level:
        return node.module or ""
    assert module is not None, "relative import in a pipeline script"
    parts = module.split(".") if package else module.split(".")[:-1]
    parts = parts[: len(parts) - (node.level - 1)]
    return ".".join(parts + ([node.module] if node.module else []))


class _Imports(ast.NodeVisitor):
    """Every module an import statement anywhere in a file may execute."""

    def __init__(self, module: str | None, package: bool) -> None:
        self.module, self.package = module, package
        self.modules: list[str] = []  # imported modules (their parents are added later)
        self.named: list[str] = []  # packages a non-submodule name is imported from

    def visit_If(self, node: ast.If) -> None:
        if _is_type_checking(node.test):  # never executed at run time
            for child in node.orelse:
                self.visit(child)
            return
        self.generic_visit(node)

    def visit_Import(self, node: ast.Import) -> None:
        self.modules += [alias.name for alias in node.names]

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        base = _from_base(node, self.module, self.package)
        self.modules.append(base)
        for alias in node.names:
            candidate = f"{base}.{alias.name}"
            if alias.name != "*" and module_file(candidate) is not None:
                self.modules.append(candidate)
            else:
                self.named.append(base)

    def visit_Call(self, node: ast.Call) -> None:
        func = node.func
        name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
        if name == "import_module" and node.args and isinstance(node.args[0], ast.Constant):
            self.modules.append(str(node.args[0].value))
        self.generic_visit(node)


@cache
def file_imports(path: Path, module: str | None) -> tuple[tuple[str, ...], tuple[str, ...]]:
    visitor = _Imports(module, module is not None and is_package(module))
    visitor.visit(parse(path))
    return tuple(visitor.modules), tuple(visitor.named)


def _with_parents(name: str) -> list[str]:
    parts = name.split(".")
    return [".".join(parts[: i + 1]) for i in range(len(parts))]


@cache
def closure(script: str) -> tuple[dict[str, str], frozenset[str]]:
    """Project modules `script` may execute -> the module that imports them ("" = the script),
    and the packages some module imports a plain name from."""
    parent: dict[str, str] = {}
    named: set[str] = set()
    queue: deque[tuple[Path, str | None]] = deque([(ROOT / script, None)])
    while queue:
        path, module = queue.popleft()
        modules, names = file_imports(path, module)
        extra = RESOURCES.get(module, ((), ()))[0] if module else ()
        named.update(names)
        for imported in (*modules, *extra):
            if imported.split(".")[0] != PACKAGE:
                continue
            for name in _with_parents(imported):
                found = module_file(name)
                if found is None or name in parent:
                    continue
                parent[name] = module or ""
                queue.append((found, name))
    return parent, frozenset(named)


def chain(script: str, module: str) -> str:
    parent, _ = closure(script)
    links = [module]
    while parent[links[-1]]:
        links.append(parent[links[-1]])
    return " -> ".join([script, *reversed(links)])


def _constant(node: ast.expr | None) -> bool:
    return isinstance(node, ast.Constant) or (
        isinstance(node, (ast.Tuple, ast.List)) and all(_constant(item) for item in node.elts)
    )


def is_inert(path: Path) -> bool:
    """Only a docstring and constant assignments (`__version__ = "0.1.0"`)."""
    for position, node in enumerate(parse(path).body):
        if position == 0 and isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant):
            continue
        if not (isinstance(node, (ast.Assign, ast.AnnAssign)) and _constant(node.value)):
            return False
    return True


def needed_files(script: str) -> dict[str, str]:
    """Repository files the stage's code reads -> why (the import chain)."""
    parent, named = closure(script)
    needed = {script: script}
    for imported in file_imports(ROOT / script, None)[0]:  # a module beside the script (pipeline/_checkout.py)
        sibling = (ROOT / script).parent / f"{imported.split('.')[0]}.py"
        if sibling.is_file():
            needed[rel(sibling)] = f"{script} -> {imported}"
    for module in parent:
        path = module_file(module)
        assert path is not None
        if path.name == "__init__.py" and is_inert(path) and module not in named:
            continue
        why = chain(script, module)
        needed[rel(path)] = why
        for resource in RESOURCES.get(module, ((), ()))[1]:
            needed[resource] = f"{why} (reads it as package data)"
    return needed


# ----------------------------------------------------------------------------- dvc.yaml


def load_yaml(name: str) -> dict:
    with (ROOT / name).open(encoding="utf-8") as handle:
        return yaml.safe_load(handle)


def _lookup(variables: dict, dotted: str):
    """`${item.model}`, `${train_seeds.0}`: DVC's dotted access into mappings and lists."""
    if dotted in variables:
        return variables[dotted]
    node = variables
    for part in dotted.split("."):
        node = node[int(part)] if isinstance(node, list) else node[part]
    return node


def _substitute(value, variables: dict):
    if isinstance(value, str):
        return re.sub(r"\$\{\s*([\w.]+)\s*\}", lambda match: str(_lookup(variables, match.group(1))), value)
    if isinstance(value, list):
        return [_substitute(item, variables) for item in value]
    if isinstance(value, dict):
        return {_substitute(key, variables): _substitute(item, variables) for key, item in value.items()}
    return value


def stages() -> dict[str, dict]:
    """Every stage of dvc.yaml; a foreach or matrix stage once, for its first item (deps and params
    do not vary by item, only paths such as models/${item})."""
    params = load_yaml("params.yaml")
    variables = {key: value for key, value in params.items() if not isinstance(value, dict)}
    expanded = {}
    for name, stage in load_yaml("dvc.yaml")["stages"].items():
        if "matrix" in stage:
            item = {}
            for key, values in stage["matrix"].items():
                if isinstance(values, str):
                    values = params[re.fullmatch(r"\$\{\s*([\w.]+)\s*\}", values).group(1)]
                item[key] = values[0]
            body = {key: value for key, value in stage.items() if key != "matrix"}
            expanded[f"{name}@{'-'.join(str(value) for value in item.values())}"] = _substitute(
                body, {**variables, "item": item}
            )
        elif "foreach" in stage:
            items = stage["foreach"]
            if isinstance(items, str):
                items = params[re.fullmatch(r"\$\{\s*([\w.]+)\s*\}", items).group(1)]
            item = next(iter(items))
            expanded[f"{name}@{item}"] = _substitute(stage["do"], {**variables, "item": item})
        else:
            expanded[name] = _substitute(stage, variables)
    return expanded


STAGES = stages()


def declared(entries: list) -> list[str]:
    return [next(iter(entry)) if isinstance(entry, dict) else str(entry) for entry in entries or []]


def stage_script(name: str) -> str:
    scripts = SCRIPT.findall(STAGES[name]["cmd"])
    assert len(scripts) == 1, f"stage {name}: expected one pipeline/<x>.py in its cmd, found {scripts}"
    return scripts[0]


def dependency_problems(name: str) -> list[str]:
    script = stage_script(name)
    needed = needed_files(script)
    deps = [dep.rstrip("/") for dep in declared(STAGES[name].get("deps"))]
    code_deps = [dep for dep in deps if dep.startswith(("src/", "pipeline/"))]

    def covered(path: str) -> bool:
        return any(path == dep or path.startswith(dep + "/") for dep in code_deps)

    problems = [
        f"stage {name}: {path} is imported (via {why}) but not in deps"
        if "package data" not in why
        else f"stage {name}: {path} is read (via {why}) but not in deps"
        for path, why in sorted(needed.items())
        if not covered(path)
    ]
    problems += [f"stage {name}: {dep} is listed twice in deps" for dep in sorted(set(deps)) if deps.count(dep) > 1]
    for dep in code_deps:
        if not (ROOT / dep).exists():
            problems.append(f"stage {name}: {dep} is in deps but does not exist")
        elif (ROOT / dep).is_dir():
            if not any(path.startswith(dep + "/") for path in needed):
                problems.append(f"stage {name}: directory {dep} is in deps but {script} imports nothing under it")
        elif dep not in needed:
            problems.append(f"stage {name}: {dep} is in deps but {script} never imports it (needless re-runs)")
    return problems


# ----------------------------------------------------------------------------- params


@dataclasses.dataclass(frozen=True)
class Schema:
    sections: frozenset[str]  # dotted sections of params.yaml, "" = the root
    leaves: tuple[str, ...]  # dotted leaf keys (train.overrides, a mapping, is one leaf)


@cache
def schema() -> Schema:
    sections: set[str] = set()
    leaves: list[str] = []

    def walk(cls: type, prefix: str) -> None:
        sections.add(prefix)
        hints = typing.get_type_hints(cls)
        for field in dataclasses.fields(cls):
            key = _join(prefix, field.name)
            if dataclasses.is_dataclass(hints[field.name]):
                walk(hints[field.name], key)
            else:
                leaves.append(key)

    walk(config_module.Config, "")
    return Schema(frozenset(sections), tuple(leaves))


def _join(section: str, name: str) -> str:
    return f"{section}.{name}" if section else name


def leaves_under(key: str) -> list[str]:
    return [leaf for leaf in schema().leaves if key == "" or leaf == key or leaf.startswith(key + ".")]


@dataclasses.dataclass(frozen=True)
class ModuleInfo:
    name: str  # dotted module, or the script's path
    tree: ast.Module
    defs: dict[str, ast.AST]  # top-level functions and classes
    bindings: dict[str, tuple[str, str | None]]  # imported name -> (module, attribute; None = the module)


@cache
def module_info(name: str) -> ModuleInfo:
    script = name.endswith(".py")
    tree = parse(ROOT / name if script else module_file(name))
    defs = {
        node.name: node for node in tree.body if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))
    }
    bindings: dict[str, tuple[str, str | None]] = {}
    for node in ast.walk(tree):  # lazy imports inside functions too
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.asname:
                    bindings[alias.asname] = (alias.name, None)
                else:
                    bindings[alias.name.split(".")[0]] = (alias.name.split(".")[0], None)
        elif isinstance(node, ast.ImportFrom):
            base = _from_base(node, None if script else name, not script and is_package(name))
            for alias in node.names:
                candidate = f"{base}.{alias.name}"
                bindings[alias.asname or alias.name] = (
                    (candidate, None) if module_file(candidate) is not None else (base, alias.name)
                )
    return ModuleInfo(name, tree, defs, bindings)


def resolve(module: str, attribute: str, depth: int = 0) -> tuple[str, ast.AST] | None:
    """The project definition `module.attribute` names, following re-exports."""
    if module.split(".")[0] != PACKAGE or module_file(module) is None or depth > 10:
        return None
    info = module_info(module)
    if attribute in info.defs:
        return module, info.defs[attribute]
    bound = info.bindings.get(attribute)
    return resolve(bound[0], bound[1], depth + 1) if bound and bound[1] else None


def _module_of(info: ModuleInfo, expr: ast.expr) -> str | None:
    if isinstance(expr, ast.Name):
        bound = info.bindings.get(expr.id)
        return bound[0] if bound and bound[1] is None else None
    if isinstance(expr, ast.Attribute):
        base = _module_of(info, expr.value)
        if base and module_file(f"{base}.{expr.attr}") is not None:
            return f"{base}.{expr.attr}"
    return None


def registry_callees(info: ModuleInfo, func: ast.expr) -> list[tuple[str, ast.AST]]:
    """`REGISTRY[key].name(...)` where REGISTRY is a module-level dict literal of imported modules
    (cxr14.data.sources.SOURCES): every module's `name`, since any of them may be called."""
    if not (
        isinstance(func, ast.Attribute)
        and isinstance(func.value, ast.Subscript)
        and isinstance(func.value.value, ast.Name)
    ):
        return []
    registry = func.value.value.id
    for node in info.tree.body:
        target = (
            node.target
            if isinstance(node, ast.AnnAssign)
            else (node.targets[0] if isinstance(node, ast.Assign) and len(node.targets) == 1 else None)
        )
        if isinstance(target, ast.Name) and target.id == registry and isinstance(node.value, ast.Dict):
            modules = [_module_of(info, value) for value in node.value.values]
            if not modules or None in modules:
                return []
            found = [resolve(module, func.attr) for module in modules]
            return [item for item in found if item is not None] if None not in found else []
    return []


def callee(info: ModuleInfo, func: ast.expr) -> tuple[str, ast.AST] | None:
    if isinstance(func, ast.Name):
        if func.id in info.defs:
            return info.name, info.defs[func.id]
        bound = info.bindings.get(func.id)
        return resolve(*bound) if bound and bound[1] else None
    if isinstance(func, ast.Attribute):
        module = _module_of(info, func.value)
        return resolve(module, func.attr) if module else None
    return None


def _parameter(function: ast.FunctionDef, call: ast.Call, value: ast.expr, keyword: str | None) -> str | None:
    """The callee parameter `value` binds to, or None when it cannot be told."""
    positional = [arg.arg for arg in function.args.posonlyargs + function.args.args]
    if keyword is not None:
        return keyword if keyword in positional + [arg.arg for arg in function.args.kwonlyargs] else None
    for index, arg in enumerate(call.args):
        if isinstance(arg, ast.Starred):
            return None
        if arg is value:
            return positional[index] if index < len(positional) else None
    return None


def _called_name(call: ast.Call) -> str | None:
    func = call.func
    return func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else None


@dataclasses.dataclass(frozen=True)
class Flow:
    reads: dict[str, str]  # leaf key -> where it is read
    calls: tuple[tuple[str, str, str, str], ...]  # (module, function, parameter, section) config flows into


@cache
def analyse(module: str, unit: str, typed: frozenset[tuple[str, str]]) -> Flow:
    """Config reads of one top-level definition ("" = module-level code), given which of its
    parameters hold which config section."""
    info, shape = module_info(module), schema()
    node = (
        info.defs[unit]
        if unit
        else ast.Module(
            body=[statement for statement in info.tree.body if statement not in info.defs.values()], type_ignores=[]
        )
    )
    where = f"{module}:{unit}" if unit else module
    parents = {child: parent for parent in ast.walk(node) for child in ast.iter_child_nodes(parent)}
    env = dict(typed)

    def section_of(expr: ast.AST) -> str | None:
        if isinstance(expr, ast.Name):
            return env.get(expr.id)
        if isinstance(expr, ast.Attribute):
            base = section_of(expr.value)
            if base is not None and _join(base, expr.attr) in shape.sections:
                return _join(base, expr.attr)
        if isinstance(expr, ast.Call):
            if isinstance(expr.func, ast.Name) and expr.func.id in CONFIG_SOURCES:
                return ""
            if (
                isinstance(expr.func, ast.Attribute)
                and section_of(expr.func.value) == ""
                and expr.func.attr in CONFIG_METHODS
            ):
                return CONFIG_METHODS[expr.func.attr][1]
        return None

    changed = True
    while changed:  # aliases: settings = cfg.evaluate; train = cfg.train_for(m)
        changed = False
        for sub in ast.walk(node):
            if isinstance(sub, ast.Assign):
                targets, value = sub.targets, sub.value
            elif isinstance(sub, (ast.AnnAssign, ast.NamedExpr)) and sub.value is not None:
                targets, value = [sub.target], sub.value
            else:
                continue
            section = section_of(value)
            for target in targets:
                if section is None or not isinstance(target, ast.Name) or env.get(target.id) == section:
                    continue
                assert target.id not in env, (
                    f"{where}: {target.id} holds config sections {env[target.id]!r} "
                    f"and {section!r}; the params analysis cannot follow that"
                )
                env[target.id] = section
                changed = True

    reads: dict[str, str] = {}
    calls: list[tuple[str, str, str, str]] = []

    def read(key: str, how: str) -> None:
        for leaf in leaves_under(key):
            reads.setdefault(leaf, f"{how} in {where}")

    for sub in ast.walk(node):
        section = None if isinstance(getattr(sub, "ctx", None), (ast.Store, ast.Del)) else section_of(sub)
        if section is None:
            continue
        parent = parents.get(sub)
        label = _join("cfg", section) if section else "cfg"
        if isinstance(parent, ast.Attribute) and parent.value is sub:
            key = _join(section, parent.attr)
            if key in shape.sections:
                continue  # a sub-section: its own use is classified
            if key in shape.leaves:
                read(key, f".{parent.attr}")
            elif section == "" and parent.attr in CONFIG_METHODS:
                for key in CONFIG_METHODS[parent.attr][0]:
                    read(key, f"{parent.attr}()")
            elif parent.attr in SECTION_METHODS:
                read(_join(section, SECTION_METHODS[parent.attr]), f"{parent.attr}()")
            else:
                read(section, f"{label}.{parent.attr}")
            continue
        if (
            isinstance(parent, (ast.Assign, ast.AnnAssign, ast.NamedExpr))
            and parent.value is sub
            and all(
                isinstance(target, ast.Name) for target in getattr(parent, "targets", [getattr(parent, "target", None)])
            )
        ):
            continue  # an alias, followed above
        call, keyword = (parents.get(parent), parent.arg) if isinstance(parent, ast.keyword) else (parent, None)
        if isinstance(call, ast.Call) and call.func is not sub:
            name = _called_name(call)
            if (module, name) in PROVENANCE_READS:
                continue
            if (
                name == "getattr"
                and len(call.args) >= 2
                and call.args[0] is sub
                and isinstance(call.args[1], ast.Constant)
            ):
                read(_join(section, str(call.args[1].value)), f"getattr({label}, {call.args[1].value!r})")
                continue
            target = callee(info, call.func)
            targets = [target] if target is not None else registry_callees(info, call.func)
            params = [
                (found, _parameter(found[1], call, sub, keyword))
                for found in targets
                if found[0] != "cxr14.config" and isinstance(found[1], (ast.FunctionDef, ast.AsyncFunctionDef))
            ]
            if params and len(params) == len(targets) and all(param is not None for _, param in params):
                calls.extend((found[0], found[1].name, param, section) for found, param in params)
                continue
            read(section, f"{label} passed to {ast.unparse(call.func)}()")
            continue
        read(section, f"{label} used whole ({type(parent).__name__})")
    return Flow(reads, tuple(calls))


def params_read(script: str) -> dict[str, str]:
    """Dotted params keys the stage's code reads -> where."""
    parent, _ = closure(script)
    modules = [script, *(module for module in parent if module != "cxr14.config")]
    queue = deque((module, unit, frozenset()) for module in modules for unit in ["", *module_info(module).defs])
    seen = set()
    reads: dict[str, str] = {}
    while queue:
        item = queue.popleft()
        if item in seen:
            continue
        seen.add(item)
        flow = analyse(*item)
        for key, where in flow.reads.items():
            reads.setdefault(key, where)
        queue.extend((module, unit, frozenset({(param, section)})) for module, unit, param, section in flow.calls)
    return reads


def params_problems(name: str) -> list[str]:
    read = params_read(stage_script(name))
    listed = [str(entry) for entry in STAGES[name].get("params") or []]
    problems = [
        f"stage {name}: {entry} is listed twice in params" for entry in sorted(set(listed)) if listed.count(entry) > 1
    ]
    for key, why in sorted(read.items()):
        if not any(key == entry or key.startswith(entry + ".") for entry in listed):
            problems.append(f"stage {name}: params key {key} is read ({why}) but not in params")
    for entry in listed:
        under = leaves_under(entry)
        if not under:
            problems.append(f"stage {name}: params entry {entry} is not a key of params.yaml")
            continue
        unread = [leaf for leaf in under if leaf not in read]
        if len(unread) == len(under):
            problems.append(f"stage {name}: params entry {entry} is never read by its code (needless re-runs)")
        elif unread:
            problems.append(
                f"stage {name}: params entry {entry} covers unread keys {unread}; "
                f"list only what is read: {[leaf for leaf in under if leaf in read]}"
            )
    return problems


# ----------------------------------------------------------------------------- tests


@pytest.mark.parametrize("name", sorted(STAGES))
def test_stage_deps_match_import_closure(name):
    problems = dependency_problems(name)
    if problems:
        pytest.fail("\n".join(problems), pytrace=False)


@pytest.mark.parametrize("name", sorted(STAGES))
def test_stage_params_match_config_reads(name):
    problems = params_problems(name)
    if problems:
        pytest.fail("\n".join(problems), pytrace=False)


def test_resume_key_hashes_the_code_train_declares():
    """cxr14.training.code hashes exactly the package code train@ declares: DVC re-runs the stage
    when one of those files changes, and its persisted last.pt must then not be resumed; a file
    hashed but not declared would refuse resumes DVC never asks for (and be an undeclared read)."""
    for name in (name for name in STAGES if name.startswith("train@")):
        package_deps = {dep.rstrip("/") for dep in declared(STAGES[name]["deps"]) if dep.startswith("src/cxr14/")}
        assert package_deps == {f"src/cxr14/{path}" for path in TRAINING_CODE}, name


def test_resource_reads_are_tabled():
    modules = {
        path.relative_to(SRC).with_suffix("").as_posix().replace("/", ".").removesuffix(".__init__")
        for path in (SRC / PACKAGE).rglob("*.py")
    }
    untabled = [
        module
        for module in sorted(modules)
        if module not in RESOURCES
        and RESOURCE_HINTS.search(re.sub(r'""".*?"""', "", module_file(module).read_text(encoding="utf-8"), flags=re.S))
    ]
    assert not untabled, f"{untabled} may read package data: list what they read in RESOURCES"
    tabled = {path for _, files in RESOURCES.values() for path in files}
    data_files = {
        rel(path)
        for path in (SRC / PACKAGE).rglob("*")
        if path.is_file() and path.suffix not in (".py", ".pyc") and "__pycache__" not in path.parts
    }
    assert data_files <= tabled, f"package data not in RESOURCES: {sorted(data_files - tabled)}"


def test_analysis_sees_what_the_code_does():
    """The checker itself: lazy imports, package __init__ files, resources, config value flow."""
    fetch = needed_files("pipeline/fetch.py")
    assert "src/cxr14/data/phantom.py" in fetch  # through the SOURCES registry
    assert "src/cxr14/data/__init__.py" not in fetch  # docstring only
    # SOURCES[cfg.data.source].fetch(cfg, ...): cfg flows into every registered source's fetch.
    assert {"seed", "data.phantom.n_patients", "data.nih.path"} <= set(params_read("pipeline/fetch.py"))
    assert "data.missing_images" not in params_read("pipeline/fetch.py")
    train = needed_files("pipeline/train.py")
    assert "src/cxr14/models/__init__.py" in train  # registers every model
    assert "src/cxr14/io.py" in train
    assert "src/cxr14/data/resources/test_list.txt.gz" in needed_files("pipeline/split.py")
    evaluate = params_read("pipeline/evaluate.py")
    assert {"evaluate.bootstrap_resamples", "train.device", "seed"} <= set(evaluate)
    assert not any(key.startswith(("explain.", "profile.", "data.")) for key in evaluate)
    # cfg.split flows into make_splits' unannotated `split_cfg`; resolved_method() reads split.method.
    assert set(leaves_under("split")) <= set(params_read("pipeline/split.py"))
    # train = cfg.train_for(model); train.freeze_backbone: that key and the overrides, not all of train.
    assert {"train.freeze_backbone", "train.overrides"} <= set(params_read("pipeline/profile_model.py"))
    assert "train.lr" not in params_read("pipeline/profile_model.py")
    # dataclasses.asdict(train) reads every train key.
    assert set(leaves_under("train")) <= set(params_read("pipeline/train.py"))
    # `model.train()` and `text.split(...)` are not config reads.
    assert not any(key.startswith(("train.", "split.")) for key in params_read("pipeline/report.py"))


def test_lock_names_exactly_the_pipelines_stages():
    """The committed dvc.lock covers every stage and no other: DVC leaves a renamed or removed
    stage's entry behind (`train@cnn` outlived the seed matrix), which reads as part of the pipeline."""
    from dvc.repo import Repo

    with Repo(str(ROOT)) as repo:
        names = {stage.addressing for stage in repo.index.stages}
    locked = set(load_yaml("dvc.lock")["stages"])
    assert not locked - names, f"dvc.lock holds entries of stages dvc.yaml no longer has: {sorted(locked - names)}"
    assert not names - locked, f"stages never run into dvc.lock (run dvc repro): {sorted(names - locked)}"

"""The layer contract of docs/DESIGN (shared/DESIGN.md, "Dependencies point down only"), read
from the source with `ast`: no import cycles among bort_core, bort_gluon, bort_torch and parity;
inside bort_core no module imports a higher layer, and bort_core modules import one another at
the top, never inside a function; no source module over 500 lines."""
import ast
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PACKAGES = ("bort_core", "bort_gluon", "bort_torch", "parity")
MAX_LINES = 500

# bort_core's layers from the ground up (DESIGN.md's list; layer 4 there is the backend and then
# the loops written over it, here 4 and 5; `resume` is the pretraining loop's checkpoints). A
# module is in the layer of the longest name listed that is it or a package holding it.
LAYERS = {
    1: ("bort_core", "bort_core.io", "bort_core.deps", "bort_core.names", "bort_core.configs",
        "bort_core.metrics", "bort_core.tokenizer"),
    2: ("bort_core.arch", "bort_core.checkpoint", "bort_core.model_params", "bort_core.convert",
        "bort_core.hf", "bort_core.data"),
    3: ("bort_core.optim", "bort_core.losses"),
    4: ("bort_core.backend",),
    5: ("bort_core.pretrain", "bort_core.resume", "bort_core.finetune", "bort_core.agora",
        "bort_core.extraction_plan", "bort_core.extraction", "bort_core.reproduce"),
    6: ("bort_core.recipe", "bort_core.commands", "bort_core.cli"),
}


def module_name(path):
    parts = os.path.relpath(path, ROOT)[:-len(".py")].split(os.sep)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def source_files():
    for package in PACKAGES:
        for folder, _, names in os.walk(os.path.join(ROOT, package)):
            for name in sorted(names):
                if name.endswith(".py"):
                    yield os.path.join(folder, name)


FILES = {module_name(path): path for path in source_files()}


def imports(module):
    """[(imported module, line, inside a function)] of `module`'s imports of our packages; `from
    package import name` counts as importing `package.name` where that is a module."""
    path = FILES[module]
    package = module if path.endswith("__init__.py") else module.rpartition(".")[0]
    found = []

    def visit(node, in_function):
        for child in ast.iter_child_nodes(node):
            inside = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef))
            targets = []
            if isinstance(child, ast.Import):
                targets = [alias.name for alias in child.names]
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:
                    anchor = package.split(".")[:len(package.split(".")) - child.level + 1]
                    base = ".".join(anchor + ([base] if base else []))
                targets = [base + "." + a.name if base + "." + a.name in FILES else base
                           for a in child.names]
            for target in targets:
                if target.split(".")[0] in PACKAGES:
                    while target not in FILES and "." in target:
                        target = target.rpartition(".")[0]
                    found.append((target, child.lineno, inside))
            visit(child, inside)

    with open(path) as f:
        visit(ast.parse(f.read(), path), False)
    return found


GRAPH = {module: imports(module) for module in FILES}


def layer(module):
    matches = [(len(prefix), number) for number, prefixes in LAYERS.items() for prefix in prefixes
               if module == prefix or (prefix != "bort_core" and module.startswith(prefix + "."))]
    return max(matches)[1] if matches else None


def cycles(graph):
    """The strongly connected components with more than one module (or a self-import)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def connect(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1 or v in graph[v]:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            connect(v)
    return found


def test_the_walk_sees_every_package():
    for package in PACKAGES:
        assert package in FILES


def test_no_import_cycles():
    # (`python -m bort_core.cli` imports itself under its importable name: not a cycle)
    assert cycles({m: {t for t, _, _ in found if t != m} for m, found in GRAPH.items()}) == []


def test_every_bort_core_module_has_a_layer():
    assert [m for m in FILES if m.startswith("bort_core") and layer(m) is None] == []


def test_bort_core_imports_point_down():
    upward = ["%s:%d (layer %s) imports %s (layer %s)" % (m, line, layer(m), t, layer(t))
              for m, found in GRAPH.items() if m.split(".")[0] == "bort_core"
              for t, line, _ in found
              if t.split(".")[0] != "bort_core"
              or None not in (layer(m), layer(t)) and layer(t) > layer(m)]
    assert upward == []


def test_framework_packages_import_only_down():
    allowed = {"bort_gluon": {"bort_core", "bort_gluon"}, "bort_torch": {"bort_core", "bort_torch"}}
    wrong = ["%s:%d imports %s" % (m, line, t) for m, found in GRAPH.items()
             for t, line, _ in found
             if m.split(".")[0] in allowed and t.split(".")[0] not in allowed[m.split(".")[0]]]
    assert wrong == []


def test_bort_core_imports_its_own_modules_at_the_top():
    local = ["%s:%d imports %s inside a function" % (m, line, t) for m, found in GRAPH.items()
             if m.split(".")[0] == "bort_core" for t, line, inside in found if inside]
    assert local == []


@pytest.mark.parametrize("module", sorted(FILES))
def test_no_module_over_500_lines(module):
    with open(FILES[module]) as f:
        count = sum(1 for _ in f)
    assert count <= MAX_LINES, "%s has %d lines (at most %d)" % (FILES[module], count, MAX_LINES)

"""fnn's imports point one way: read with ``ast``, no module is imported to check this.

The layers, bottom to top (a module may import from its own layer or the ones below):

0. primitives and utilities that import nothing above them: ``activations``, ``losses``,
   ``seqloss``; ``optim`` (optax by name), ``parallel`` (meshes), ``data`` and ``idx``
   (datasets), ``files`` and ``checkpoint`` (atomic files), ``plots`` (figures): anything
   above may use them.
1. ``layers``  2. ``models``, ``compose``
3. ``backprop`` and the checkers built on it: ``compare``, ``fd``, ``check``
4. ``train`` (the package ``fnn.train.*``)
5. users of the engine: ``many`` (the K-run namespace), ``diagnostics``
6. ``experiment`` (one ``fnn train`` run or sweep: ``experiment``, ``sweep``, ``runfolder``)
7. ``cli`` (argparse: ``cli``, ``cli_*``, or the package ``fnn.cli.*``)
8. ``fnn`` itself (``fnn/__init__.py`` re-exports the public names)

Besides the direction: no cycle among modules, no import inside a function (except the
heavy optional ``matplotlib``, ``rich``, ``sklearn`` and ``hypothesis``), no private name (``_x``) imported from another
fnn module. Known exceptions in files being rewritten elsewhere are listed below, each
naming its owner; the lists should be empty after the round's merges.
"""

from __future__ import annotations

import ast
import os

ROOT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "fnn")
LAYERS = {
    "activations": 0,
    "losses": 0,
    "optim": 0,
    "parallel": 0,
    "data": 0,
    "checkpoint": 0,
    "plots": 0,
    "files": 0,
    "idx": 0,
    "seqloss": 0,
    "layers": 1,
    "models": 2,
    "compose": 2,
    "recipes": 2,
    "backprop": 3,
    "compare": 3,
    "fd": 3,
    "check": 3,
    "check_rules": 3,
    "check_layers": 3,
    "jacobian": 3,
    "rule_report": 3,
    "draws": 3,
    "train": 4,
    "many": 5,
    "diagnostics": 5,
    "experiment": 6,
    "runner": 6,
    "sweep": 6,
    "runfolder": 6,
    "cli": 7,
    "fnn": 8,
}
OPTIONAL_HEAVY = (
    "matplotlib",
    "rich",
    "sklearn",
    "hypothesis",
)  # optional extras, imported when used

# Known violations in modules other helpers are rewriting this round (owner in the comment).
# Each entry is (importer, imported) for an edge, or (module, detail) for the other rules.
ALLOWED_UPWARD = {
    # the package root is imported for __version__ only (application layer, issue 19)
    ("fnn.cli", "fnn"),
    ("fnn.experiment", "fnn"),
}
ALLOWED_CYCLES: set = set()
ALLOWED_LOCAL_IMPORTS: set = set()
ALLOWED_PRIVATE: set = set()


def _modules() -> dict[str, str]:
    out = {}
    for folder, _, files in os.walk(ROOT):
        for f in files:
            if f.endswith(".py"):
                rel = os.path.relpath(os.path.join(folder, f), os.path.dirname(ROOT))
                name = rel[:-3].replace(os.sep, ".")
                out[name.removesuffix(".__init__")] = os.path.join(folder, f)
    return out


MODULES = _modules()


def _layer(module: str) -> int:
    if module == "fnn":
        return LAYERS["fnn"]
    top = module.split(".")[1]
    if top.startswith("cli"):
        return LAYERS["cli"]
    return LAYERS[top]


def _imports(module: str):
    """``(imported module, names, inside a function, line)`` for every fnn import."""
    with open(MODULES[module]) as f:
        tree = ast.parse(f.read())
    parents = {}
    for node in ast.walk(tree):
        for child in ast.iter_child_nodes(node):
            parents[child] = node

    def in_function(node):
        while node in parents:
            node = parents[node]
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
                return True
        return False

    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, (), in_function(node), node.lineno
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = tuple(a.name for a in node.names)
            if node.module == "fnn" or node.module.startswith("fnn."):
                # `from fnn import losses` imports the module fnn.losses; other names come
                # from the package's namespace.
                subs = [n for n in names if f"{node.module}.{n}" in MODULES]
                for n in subs:
                    yield f"{node.module}.{n}", (), in_function(node), node.lineno
                rest = tuple(n for n in names if n not in subs)
                if rest:
                    yield node.module, rest, in_function(node), node.lineno
            else:
                yield node.module, names, in_function(node), node.lineno


def _graph() -> dict[str, set[str]]:
    return {m: {t for t, _, _, _ in _imports(m) if t in MODULES and t != m} for m in MODULES}


def _cycles(graph) -> list[frozenset]:
    """The strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = set()
            while True:
                w = stack.pop()
                on.discard(w)
                comp.add(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(frozenset(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_every_module_has_a_layer():
    assert all(isinstance(_layer(m), int) for m in MODULES)


def test_no_import_cycles():
    # A package's own submodules import each other freely below its __init__; a cycle
    # through the __init__ of fnn.train (or fnn.cli) would show here as one.
    found = {c for c in _cycles(_graph()) if c not in ALLOWED_CYCLES}
    assert not found, f"import cycles: {[sorted(c) for c in found]}"


def test_imports_point_down():
    upward = set()
    for m, targets in _graph().items():
        for t in targets:
            if _layer(t) > _layer(m):
                upward.add((m, t))
    new = sorted(upward - ALLOWED_UPWARD)
    assert not new, f"upward imports (importer, imported): {new}"


def test_no_imports_inside_functions():
    found = []
    for m in MODULES:
        for target, _, local, line in _imports(m):
            if local and target.split(".")[0] == "fnn" and m not in ALLOWED_LOCAL_IMPORTS:
                found.append(f"{m}:{line} imports {target}")
            if local and target.split(".")[0] not in ("fnn", *OPTIONAL_HEAVY):
                if m not in ALLOWED_LOCAL_IMPORTS:
                    found.append(f"{m}:{line} imports {target}")
    assert not found, found


def test_no_private_names_across_modules():
    found = []
    for m in MODULES:
        for target, names, _, line in _imports(m):
            if target.split(".")[0] != "fnn" or target == m:
                continue
            private = [n for n in names if n.startswith("_") and not n.startswith("__")]
            if private and m not in ALLOWED_PRIVATE:
                found.append(f"{m}:{line} imports {private} from {target}")
    assert not found, found


def test_the_checker_sees_a_planted_cycle_and_an_upward_edge():
    graph = {"fnn.a": {"fnn.b"}, "fnn.b": {"fnn.c"}, "fnn.c": {"fnn.a"}, "fnn.d": set()}
    assert _cycles(graph) == [frozenset({"fnn.a", "fnn.b", "fnn.c"})]
    assert _layer("fnn.train.step") == LAYERS["train"] < _layer("fnn.cli_train")

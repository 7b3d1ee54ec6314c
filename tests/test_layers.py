"""The layer contract of the package, checked on every import between geopose files.

An edge is any way one file makes Python run another: ``import`` and ``from ... import``
statements anywhere in the file (inside functions too), relative imports, and
``importlib.import_module("geopose...")`` / ``__import__`` calls. Package ``__init__.py`` files
are files like the others:

- ``from geopose.models import x`` runs ``geopose/models/__init__.py``, and
  ``geopose/models/x.py`` too when ``x`` is a submodule;
- ``import geopose.a.b`` (or ``from geopose.a.b import y``) runs ``geopose/a/b.py`` and, first,
  ``geopose/a/__init__.py``, except from a file inside ``geopose.a`` (whose ``__init__`` has
  already started by then);
- an ``import_module`` call whose argument is not a literal string reaches every geopose
  module that the file names in a string.

A file may import its own package and any package of a lower layer; never a higher one, never
another package of its own layer (sideways), and no two files may reach each other round a
loop of edges, lazy ones included.
"""

from __future__ import annotations

import ast
import sys
from collections.abc import Iterator
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "geopose"

LAYERS: list[set[str]] = [
    {"errors"},  # the exceptions every layer raises
    {"types"},  # the types that cross layers (model output, ...) and one-rule helpers
    {"schema"},  # the config schema (Opt, Section, Kinds, Registry) and the recipe files
    {"", "logs", "runtime"},  # the package root, quiet-by-default logging, process settings
    {"geometry"},  # the conventions' maths
    {"io"},  # files: rasters, tables, submissions, atomic writes, downloads
    {"transforms"},  # augmentation: pure functions of a types.Sample (the data set applies them)
    {"data", "models", "metrics", "synth", "validate", "rectify"},
    {"config"},  # the configuration as a whole: every section, overrides, resolve_config
    {"training", "inference", "viz"},
    {"demo"},
    {"cli"},
]


def _modules() -> dict[str, Path]:
    """Dotted module name -> file, packages (``geopose.models``) by their ``__init__.py``."""
    out = {}
    for path in SRC.rglob("*.py"):
        parts = path.relative_to(SRC).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(["geopose", *parts])] = path
    return out


MODULES = _modules()
FILE_OF = {name: str(path.relative_to(SRC)) for name, path in MODULES.items()}


def _is_package(module: str) -> bool:
    return MODULES[module].name == "__init__.py"


def _runs(importer: str, target: str) -> set[str]:
    """The geopose modules that importing ``target`` from ``importer`` runs: the target (or its
    nearest existing parent) and the ``__init__`` of every package above it that the importer
    is not inside."""
    parts = target.split(".")
    while parts and ".".join(parts) not in MODULES:
        parts.pop()  # an attribute, not a module
    if not parts:
        return set()
    out = {".".join(parts)}
    own = importer if _is_package(importer) else importer.rsplit(".", 1)[0]
    for i in range(2, len(parts)):
        package = ".".join(parts[:i])
        if not (own == package or own.startswith(package + ".")):
            out.add(package)
    return out


def _absolute(module: str, node: ast.ImportFrom) -> str:
    """The absolute module name of a (possibly relative) ``from`` import in ``module``."""
    if node.level == 0:
        return node.module or ""
    base = module.split(".") if _is_package(module) else module.split(".")[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join([*base, node.module] if node.module else base)


def _import_module_call(node: ast.AST) -> ast.Call | None:
    if not isinstance(node, ast.Call) or not node.args:
        return None
    func = node.func
    name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
    return node if name in ("import_module", "__import__") else None


def _targets(module: str, tree: ast.AST) -> Iterator[str]:
    """Every geopose module name that ``module``'s code imports, as written."""
    strings = None
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = _absolute(module, node)
            yield base
            yield from (f"{base}.{a.name}" for a in node.names if a.name != "*")
        elif (call := _import_module_call(node)) is not None:
            arg = call.args[0]
            if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
                yield arg.value
            else:  # a computed name: any geopose module the file spells out may be it
                if strings is None:
                    strings = [
                        n.value
                        for n in ast.walk(tree)
                        if isinstance(n, ast.Constant) and isinstance(n.value, str)
                    ]
                yield from (s for s in strings if s in MODULES)


def _graph() -> dict[str, set[str]]:
    """Module -> the geopose modules that importing it runs directly (see the docstring)."""
    graph: dict[str, set[str]] = {}
    for module, path in MODULES.items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        deps: set[str] = set()
        for target in _targets(module, tree):
            if target == "geopose" or target.startswith("geopose."):
                deps |= _runs(module, target)
        graph[module] = deps - {module}
    return graph


def _unit(module: str) -> str:
    """``geopose.io.rasters`` -> ``io``; ``geopose`` -> ``""``; ``geopose.demo`` -> ``demo``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def _layer(unit: str) -> int:
    for i, layer in enumerate(LAYERS):
        if unit in layer:
            return i
    raise AssertionError(f"package geopose.{unit} is in no layer: add it to LAYERS")


def _knots(graph: dict[str, set[str]]) -> list[set[str]]:
    """The strongly connected sets of more than one module (Tarjan): each file of a set
    reaches every other one and itself."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    sets: list[set[str]] = []

    def connect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            members = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                members.add(w)
                if w == v:
                    break
            if len(members) > 1:
                sets.append(members)

    for v in sorted(graph):
        if v not in index:
            connect(v)
    return sorted(sets, key=min)


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One shortest loop per knot (:func:`_knots`), as the modules round it."""
    return [_loop(graph, members) for members in _knots(graph)]


def _loop(graph: dict[str, set[str]], members: set[str]) -> list[str]:
    """A shortest loop through the smallest module of a strongly connected set."""
    start = min(members)
    paths = {start: [start]}
    frontier = [start]
    while frontier:
        nxt = []
        for v in frontier:
            for w in sorted(graph[v] & members):
                if w == start:
                    return [*paths[v], start]
                if w not in paths:
                    paths[w] = [*paths[v], w]
                    nxt.append(w)
        frontier = nxt
    raise AssertionError(f"no loop through {start}")  # pragma: no cover - members loop


def test_every_package_has_a_layer():
    for module in MODULES:
        _layer(_unit(module))


def test_imports_go_downward_only():
    bad = []
    for module, deps in sorted(_graph().items()):
        for dep in sorted(deps):
            src, dst = _unit(module), _unit(dep)
            if src != dst and _layer(dst) >= _layer(src):
                kind = "sideways" if _layer(dst) == _layer(src) else "upward"
                bad.append(f"{FILE_OF[module]}: {kind} import of geopose.{dst} ({FILE_OF[dep]})")
    assert not bad, "\n".join(bad)


def test_no_import_cycles_between_files():
    """No file reaches itself again round a loop of imports: not through a package's
    ``__init__``, not lazily inside a function, not by an ``import_module`` string."""
    graph = _graph()
    lines = []
    for knot in _knots(graph):
        loop = " -> ".join(FILE_OF[m] for m in _loop(graph, knot))
        lines.append(
            f"{loop}  (knot of {len(knot)}: {', '.join(sorted(FILE_OF[m] for m in knot))})"
        )
    assert not lines, "import cycles:\n" + "\n".join(lines)


def test_the_graph_sees_every_kind_of_edge(tmp_path, monkeypatch):
    """The edge rules themselves, on a small made-up package."""
    files = {
        "__init__.py": "",
        "a/__init__.py": "from geopose.a import x\n",
        "a/x.py": "def f():\n    from geopose.b.y import g\n",
        "a/z.py": "from . import x\nfrom .x import f\n",
        "b/__init__.py": "import importlib\nimportlib.import_module('geopose.c')\n",
        "b/y.py": "",
        "c.py": "import importlib\nNAMES = {'k': 'geopose.a.z'}\n"
        "def h(k):\n    return importlib.import_module(NAMES[k])\n",
    }
    for rel, text in files.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(text)
    this = sys.modules[__name__]
    monkeypatch.setattr(this, "SRC", tmp_path)
    monkeypatch.setattr(this, "MODULES", _modules())
    graph = _graph()
    assert graph["geopose.a"] == {"geopose.a.x"}  # from a package: the __init__ is its own
    assert graph["geopose.a.x"] == {"geopose.b", "geopose.b.y"}  # lazy, and b's __init__
    assert graph["geopose.a.z"] == {"geopose.a", "geopose.a.x"}  # relative imports
    assert graph["geopose.b"] == {"geopose.c"}  # an import_module string
    assert graph["geopose.c"] == {"geopose.a", "geopose.a.z"}  # a computed import_module name
    assert _knots(graph) == [{"geopose.a", "geopose.a.x", "geopose.a.z", "geopose.b", "geopose.c"}]
    assert _cycles(graph) == [["geopose.a", "geopose.a.x", "geopose.b", "geopose.c", "geopose.a"]]

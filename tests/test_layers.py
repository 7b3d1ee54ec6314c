"""The layer contract of the package, checked on every import statement (lazy ones included).

A module may import its own package and any package of a lower layer; never a higher one, and
never another package of its own layer (sideways). A sideways import that exists would be
listed in KNOWN and must go (issue 16; the list is empty now); the test fails on any new one,
and on a KNOWN entry that has disappeared (so the list only shrinks).
"""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "geopose"

LAYERS: list[set[str]] = [
    {"errors"},  # the exceptions every layer raises
    {"types"},  # the types that cross layers (model output, ...) and one-rule helpers
    {"", "logs", "runtime"},  # the package root, quiet-by-default logging, process settings
    {"geometry"},  # the conventions' maths
    {"io"},  # files: rasters, tables, submissions, atomic writes, downloads
    {"transforms"},  # augmentation: pure functions of a types.Sample (the data set applies them)
    {"data", "models", "metrics", "synth", "validate", "rectify"},
    {"config"},  # the training configuration (reads the models' schemas)
    {"training", "inference", "viz"},
    {"demo"},
    {"cli"},
]
KNOWN: set[tuple[str, str]] = set()


def _package(module: str) -> str:
    """``geopose.io.rasters`` -> ``io``; ``geopose`` -> ``""``; ``geopose.demo`` -> ``demo``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def _layer(package: str) -> int:
    for i, layer in enumerate(LAYERS):
        if package in layer:
            return i
    raise AssertionError(f"package geopose.{package} is in no layer: add it to LAYERS")


def _imports() -> set[tuple[str, str, str]]:
    """(importing file, its package, imported package) for every geopose import."""
    out = set()
    for path in SRC.rglob("*.py"):
        rel = path.relative_to(SRC).with_suffix("")
        module = ".".join(["geopose", *rel.parts]).removesuffix(".__init__")
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            else:
                continue
            for name in names:
                if name == "geopose" or name.startswith("geopose."):
                    out.add((str(path.relative_to(SRC)), _package(module), _package(name)))
    return out


def test_every_package_has_a_layer():
    packages = {p.name for p in SRC.iterdir() if p.is_dir() and (p / "__init__.py").is_file()}
    packages |= {p.stem for p in SRC.glob("*.py") if p.stem != "__init__"}
    for package in packages:
        _layer(package)


def test_imports_go_downward_only():
    bad = []
    seen_known = set()
    for path, src, dst in sorted(_imports()):
        if src == dst:
            continue
        if (src, dst) in KNOWN:
            seen_known.add((src, dst))
            continue
        if _layer(dst) >= _layer(src):
            kind = "sideways" if _layer(dst) == _layer(src) else "upward"
            bad.append(f"{path}: {kind} import of geopose.{dst} from geopose.{src}")
    assert not bad, "\n".join(bad)
    assert seen_known == KNOWN, f"gone from the code, drop from KNOWN: {KNOWN - seen_known}"


def _module_graph() -> dict[str, set[str]]:
    """Module -> the geopose modules it imports (lazy imports included); package ``__init__``
    modules are left out, as they only gather their package's names."""
    modules = {}
    for path in SRC.rglob("*.py"):
        if path.name != "__init__.py":
            rel = path.relative_to(SRC).with_suffix("")
            modules[".".join(["geopose", *rel.parts])] = path
    graph: dict[str, set[str]] = {}
    for module, path in modules.items():
        names = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module)
                names.update(f"{node.module}.{a.name}" for a in node.names)
            elif isinstance(node, ast.Import):
                names.update(a.name for a in node.names)
        graph[module] = {n for n in names if n in modules and n != module}
    return graph


def test_no_import_cycles_between_modules():
    """No two modules import each other, directly or round a loop, not even lazily inside a
    function (data/cache.py <-> data/sources.py was one: issue 16)."""
    graph = _module_graph()
    state: dict[str, int] = {}  # 1 on the current path, 2 done
    cycles = []

    def visit(module: str, path: list[str]) -> None:
        state[module] = 1
        for dep in sorted(graph[module]):
            if state.get(dep) == 1:
                cycles.append(" -> ".join([*path[path.index(dep) :], dep]))
            elif dep not in state:
                visit(dep, [*path, dep])
        state[module] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    assert not cycles, "\n".join(cycles)

"""The package's shape, as a newcomer relies on it: layers, no cycles, light imports.

``docs/architecture.md`` draws the layers; these tests keep the drawing true.
Imports are read from the source with :mod:`ast`, function-level imports
included (a cycle hidden in a function body is still a cycle: it decides
what a module may be imported before), ``if TYPE_CHECKING:`` blocks
excluded (they never run).
"""

from __future__ import annotations

import ast
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = "tessera_vz"

#: Which layers each layer may import. Core is the floor; the reader and the
#: indexer stand side by side on it; outputs (catalog, files) on both; the
#: viewer and the commands on top. Test servers may import anything, and no
#: product module imports them.
ALLOWED: dict[str, set[str]] = {
    "core": {"core"},
    "reader": {"core", "reader"},
    "indexer": {"core", "indexer"},
    "outputs": {"core", "reader", "indexer", "outputs"},
    "top": {"core", "reader", "indexer", "outputs", "top"},
    "testing": {"core", "reader", "indexer", "outputs", "top", "testing"},
}

#: Modules whose first import may load numpy/xarray/zarr/Icechunk/obstore:
#: none of these faces may.
LIGHT = ("tessera_vz", "tessera_vz.reader", "tessera_vz.reader.errors", "tessera_vz.core.errors",
         "tessera_vz.core.lazy", "tessera_vz.indexer", "tessera_vz.cli")  # fmt: skip
HEAVY = ("numpy", "xarray", "zarr", "icechunk", "pyarrow", "dask", "obstore", "aiohttp", "pyproj",
         "virtualizarr", "rasterio", "shapely")  # fmt: skip

#: The size above which a product module holds more than one job.
MAX_LINES = 450


def layer(module: str) -> str:
    parts = module.split(".")
    sub = parts[1] if len(parts) > 1 else ""
    if sub in ("", "core"):
        return "core"
    if sub in ("reader", "indexer", "testing"):
        return sub
    if sub in ("catalog", "export", "pointfiles", "vectorfiles", "verify", "maps"):
        return "outputs"
    return "top"


def modules() -> dict[str, Path]:
    found = {}
    for path in sorted((SRC / PACKAGE).rglob("*.py")):
        parts = list(path.relative_to(SRC).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


def _runtime_nodes(tree: ast.AST) -> Iterator[ast.AST]:
    """Every node that can run: skips ``if TYPE_CHECKING:`` bodies."""
    stack = [tree]
    while stack:
        node = stack.pop()
        yield node
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                stack.extend(child.orelse)
                continue
            stack.append(child)


def imports(module: str, path: Path, known: set[str]) -> set[str]:
    """The package modules ``module`` imports, resolved to the deepest module named."""
    is_package = path.name == "__init__.py"
    base = module.split(".") if is_package else module.split(".")[:-1]
    found: set[str] = set()
    for node in _runtime_nodes(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parent = base[: len(base) - node.level + 1]
                origin = ".".join([*parent, *filter(None, [node.module])])
            else:
                origin = node.module or ""
            targets = [f"{origin}.{a.name}" if f"{origin}.{a.name}" in known else origin
                       for a in node.names]  # fmt: skip
        else:
            continue
        for target in targets:
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target and target != module:
                found.add(target)
    return found


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    found = modules()
    return {m: imports(m, p, set(found)) for m, p in found.items()}


def test_no_import_cycle(graph: dict[str, set[str]]) -> None:
    """Tarjan's strongly connected components: every one must be a single module."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []
    sys.setrecursionlimit(max(10_000, sys.getrecursionlimit()))

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
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
            if len(component) > 1:
                cycles.append(sorted(component))

    for v in graph:
        if v not in index:
            visit(v)
    assert cycles == []


def test_layers_import_only_below(graph: dict[str, set[str]]) -> None:
    wrong = sorted(
        f"{m} ({layer(m)}) imports {t} ({layer(t)})"
        for m, targets in graph.items()
        for t in targets
        if layer(t) not in ALLOWED[layer(m)]
    )
    assert wrong == []


def test_product_modules_hold_one_job() -> None:
    big = {
        m: n
        for m, p in modules().items()
        if layer(m) != "testing" and (n := len(p.read_text().splitlines())) > MAX_LINES
    }
    assert big == {}


@pytest.mark.parametrize("face", LIGHT)
def test_public_faces_import_nothing_heavy(face: str) -> None:
    """Importing an exception class or asking ``--help`` must not load the data stack."""
    code = f"import sys, {face}; print([m for m in {HEAVY!r} if m in sys.modules])"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


def test_lazy_faces_resolve_every_public_name() -> None:
    """Each name a lazy face lists resolves to the object its home module defines."""
    import tessera_vz.core.errors as errors
    import tessera_vz.reader as reader

    for name in reader.__all__:
        assert getattr(reader, name) is not None
    assert reader.TesseraError is errors.TesseraError
    assert set(errors.__all__) <= set(reader.__all__)
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        _ = reader.nope

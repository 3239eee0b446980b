"""The package layout: imports flow one way (no circle, no module importing its own ancestor package),
every module stays short enough to hold one job, the public API is plain attributes of the package,
and generation and padding are written once."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "safeneuron_plugins"
#: installed package name -> source folder (integrations/ ships as safeneuron_plugins.integrations)
SOURCES = {"safeneuron_plugins": PACKAGE, "safeneuron_plugins.integrations": ROOT / "integrations"}
MAX_LINES = 350


def _modules() -> dict[str, tuple[Path, bool]]:
    """Every module of the package: dotted name -> (file, is a package's __init__)."""
    found = {}
    for prefix, folder in SOURCES.items():
        for path in sorted(folder.rglob("*.py")):
            parts = path.relative_to(folder).with_suffix("").parts
            is_package = parts[-1] == "__init__"
            found[".".join((prefix, *(parts[:-1] if is_package else parts)))] = (path, is_package)
    return found


def import_graph(modules: dict[str, tuple[Path, bool]]) -> dict[str, set[str]]:
    """Module -> the package modules it imports, anywhere in its text (top level, inside functions,
    under TYPE_CHECKING): ``from X import name`` counts as importing X.name when that is a module, else X."""
    graph = {}
    for name, (path, is_package) in modules.items():
        package = name if is_package else name.rpartition(".")[0]
        targets = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                targets.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")[: len(package.split(".")) - node.level + 1]
                    source = ".".join(base + ([node.module] if node.module else []))
                else:
                    source = node.module or ""
                for alias in node.names:
                    sub = f"{source}.{alias.name}"
                    targets.add(sub if sub in modules else source)
        graph[name] = {t for t in targets if t in modules and t != name}
    return graph


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan's algorithm)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
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
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def upward_imports(graph: dict[str, set[str]], modules: dict[str, tuple[Path, bool]]) -> list[tuple[str, str]]:
    """(module, ancestor package) where a module imports a name from its own ancestor package's __init__."""
    return sorted((name, target) for name, targets in graph.items() for target in targets
                  if modules[target][1] and name.startswith(target + "."))


def test_the_checks_find_a_circle_and_an_upward_import():
    """The graph checks themselves, on a made-up package: a <-> b through a function-local import, and
    c importing from its package root."""
    import textwrap

    def fake(tmp: Path) -> dict[str, tuple[Path, bool]]:
        files = {"__init__.py": "from .c import f\n", "a.py": "from .b import g\n",
                 "b.py": "def g():\n    from .a import h\n", "c.py": "from . import VERSION\n", "d.py": "import os\n"}
        for rel, text in files.items():
            (tmp / rel).write_text(textwrap.dedent(text))
        return {("pkg" if rel == "__init__.py" else f"pkg.{rel[:-3]}"): (tmp / rel, rel == "__init__.py")
                for rel in files}

    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        modules = fake(Path(tmp))
        graph = import_graph(modules)
    assert sorted(map(tuple, circles(graph))) == [("pkg", "pkg.c"), ("pkg.a", "pkg.b")]
    assert upward_imports(graph, modules) == [("pkg.c", "pkg")]


def test_imports_flow_one_way():
    modules = _modules()
    graph = import_graph(modules)
    assert len(graph) > 60  # the whole package was read
    assert not circles(graph), f"import circles: {circles(graph)}"
    assert not upward_imports(graph, modules), (
        f"modules importing from their own ancestor package's __init__: {upward_imports(graph, modules)}")


def test_no_module_is_over_350_lines():
    long = {str(path.relative_to(ROOT)): n for path, _ in _modules().values()
            if (n := len(path.read_text(encoding="utf-8").splitlines())) > MAX_LINES}
    assert not long, f"over {MAX_LINES} lines (split each into modules of one job): {long}"


def test_the_package_api_is_plain_attributes_whatever_was_imported_first():
    """`from safeneuron_plugins import identify` is the function even after every submodule was imported
    (the identification steps live in a subpackage of another name), and the package is a plain module."""
    out = subprocess.run([sys.executable, "-c", """
import importlib, pkgutil, types
import safeneuron_plugins
for info in pkgutil.walk_packages(safeneuron_plugins.__path__, "safeneuron_plugins."):
    if not info.name.startswith(("safeneuron_plugins.integrations.", "safeneuron_plugins.data")) and \\
            not info.name.endswith("__main__"):
        importlib.import_module(info.name)
from safeneuron_plugins import NeuronMask, SafeNeuronError, SafeNeuronOptions, __version__, identify
from safeneuron_plugins.identification.pipeline import identify as inner
assert type(safeneuron_plugins) is types.ModuleType
assert isinstance(identify, types.FunctionType) and identify is inner
print(__version__)
"""], capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    assert re.fullmatch(r"\d+\.\d+\.\d+", out.stdout.strip())


def test_the_three_wings_exist():
    for wing in ("identification", "freeze", "evaluate"):
        assert (PACKAGE / wing / "__init__.py").is_file()
    assert (PACKAGE / "distributed.py").is_file() and (PACKAGE / "prune.py").is_file()


def test_generation_and_padding_are_written_once():
    """One greedy decoding call (evaluate/generation.py) and one padding routine (identification/batching.py)."""
    generate = re.compile(r"\.generate\(")
    pad = re.compile(r"torch\.full\(|padding\s*=\s*(True|\"longest\"|'longest')")
    files = [path for path, _ in _modules().values() if path.is_relative_to(PACKAGE)]
    where_generate = [str(p.relative_to(PACKAGE)) for p in files if generate.search(p.read_text(encoding="utf-8"))]
    where_pad = [str(p.relative_to(PACKAGE)) for p in files if pad.search(p.read_text(encoding="utf-8"))]
    assert where_generate == ["evaluate/generation.py"]
    assert where_pad == ["identification/batching.py"]

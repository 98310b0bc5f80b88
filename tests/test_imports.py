"""detseg's packages import one way: each may import its own layer and the layers below, never
one above. Parsed from the source (every ``import`` / ``from ... import``, also those inside
functions), so a lazy import cannot hide a loop."""
import ast
import os

from tests.conftest import ROOT

# Bottom to top. A package may import its own layer and any lower one.
LAYERS = [
    {"utils", "comm", "outputs", "yaml_tree", "config_upgrade", "config", "structures", "visualize"},
    {"ops"},
    {"modeling"},
    {"data"},
    {"engine", "evaluation"},
    {"weights"},
    {"api", "export", "explain"},
    {"__init__"},
]
LAYER = {name: i for i, names in enumerate(LAYERS) for name in names}


def _detseg_imports(path: str, module: str):
    """(line, imported detseg module) for every import of a detseg module in one file."""
    package = module.rsplit(".", 1)[0] if not path.endswith("__init__.py") else module
    for node in ast.walk(ast.parse(open(path, encoding="utf-8").read(), path)):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            names = [f"{target}.{a.name}" for a in node.names] if node.level and not node.module else [target]
            for name in names:
                if name.startswith("detseg"):
                    yield node.lineno, name
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("detseg"):
                    yield node.lineno, alias.name


def _top(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def upward_imports(root: str) -> list[str]:
    bad = []
    for folder, _, files in os.walk(os.path.join(root, "detseg")):
        for f in files:
            if not f.endswith(".py"):
                continue
            path = os.path.join(folder, f)
            module = os.path.relpath(path, root)[:-3].replace(os.sep, ".")
            module = module.removesuffix(".__init__")
            here = _top(module) if module != "detseg" else "__init__"
            for line, target in _detseg_imports(path, module):
                there = _top(target)
                if there not in LAYER or here not in LAYER:
                    bad.append(f"{module}:{line}: {target} (a package not in LAYERS)")
                elif LAYER[there] > LAYER[here]:
                    bad.append(f"{module}:{line} imports {target}: {here} (layer {LAYER[here]}) "
                               f"sits below {there} (layer {LAYER[there]})")
    return bad


def test_no_package_imports_a_layer_above_it():
    bad = upward_imports(ROOT)
    assert not bad, "upward imports:\n" + "\n".join(bad)


def test_the_check_catches_an_upward_import(tmp_path):
    ops = tmp_path / "detseg" / "ops"
    ops.mkdir(parents=True)
    (tmp_path / "detseg" / "__init__.py").write_text("")
    (ops / "__init__.py").write_text("")
    (ops / "bad.py").write_text("def f():\n    from ..data.shapes import generate\n")
    (ops / "good.py").write_text("from ..utils import default_cache_dir\nfrom . import bad\n")
    bad = upward_imports(str(tmp_path))
    assert len(bad) == 1 and "detseg.ops.bad:2 imports detseg.data.shapes" in bad[0]


def _module_of(root: str, name: str) -> str | None:
    """The detseg module file ``name`` refers to (``a.b.c`` may be module ``a.b`` and its attribute
    ``c``), or None when no such module exists."""
    while name:
        base = os.path.join(root, *name.split("."))
        if os.path.isfile(base + ".py") or os.path.isfile(os.path.join(base, "__init__.py")):
            return name
        name = name.rpartition(".")[0]
    return None


def import_graph(root: str) -> dict[str, set[str]]:
    """{module: detseg modules it imports} over every import statement, function-level ones too.
    A package's ``__init__`` counts as the package; importing ``a.b.c`` also runs ``a`` and
    ``a.b``, but those parents are not edges: Python finishes a parent before its child only when
    the parent does not import the child, which is the cycle this looks for elsewhere."""
    graph: dict[str, set[str]] = {}
    for folder, _, files in os.walk(os.path.join(root, "detseg")):
        for f in files:
            if not f.endswith(".py"):
                continue
            path = os.path.join(folder, f)
            module = os.path.relpath(path, root)[:-3].replace(os.sep, ".").removesuffix(".__init__")
            edges = graph.setdefault(module, set())
            for _, target in _detseg_imports(path, module):
                found = _module_of(root, target)
                if found and found != module:
                    edges.add(found)
    return graph


def import_cycles(root: str) -> list[list[str]]:
    """Strongly connected groups of more than one module in ``import_graph`` (Tarjan's)."""
    graph = import_graph(root)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                out.append(sorted(group))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_no_import_cycle_among_detseg_modules():
    cycles = import_cycles(ROOT)
    assert not cycles, "import cycles (each line: modules that import each other round):\n" + \
        "\n".join(" <-> ".join(c) for c in cycles)


def test_the_cycle_check_catches_a_function_level_cycle(tmp_path):
    pkg = tmp_path / "detseg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from .b import g\n")
    (pkg / "b.py").write_text("def g():\n    from . import a\n")
    (pkg / "c.py").write_text("from .a import g\n")
    assert import_cycles(str(tmp_path)) == [["detseg.a", "detseg.b"]]

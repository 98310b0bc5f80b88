"""detseg's packages import one way: each may import its own layer and the layers below, never
one above. Parsed from the source (every ``import`` / ``from ... import``, also those inside
functions), so a lazy import cannot hide a loop."""
import ast
import os

from tests.conftest import ROOT

# Bottom to top. A package may import its own layer and any lower one.
LAYERS = [
    {"utils", "outputs", "config", "structures", "visualize"},
    {"ops"},
    {"modeling"},
    {"data"},
    {"engine", "evaluation"},
    {"weights"},
    {"api", "export", "exported"},
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

"""The import rules of DESIGN.md: who may import whom, and what `import kernelflow` loads."""

from __future__ import annotations

import ast
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1] / "kernelflow"

# subpackage -> kernelflow subpackages it may import at module level ("errors" and "_version" always).
ALLOWED = {
    "graph": set(),
    "nn": {"graph"},
    "kernels": {"graph"},
    "compiler": {"graph", "kernels"},
    "protocol": set(),
    "runtime_server": {"graph", "kernels", "compiler", "protocol"},
    "client": {"graph", "nn", "protocol"},
    "widgets": {"client", "graph"},
    "extension": {"client", "widgets", "graph"},
}
ALWAYS = {"errors", "_version"}
# Third-party modules a subpackage must never import at module level.
FORBIDDEN_TOP = {
    "graph": {"cupy", "tornado", "IPython", "ipywidgets", "pickle"},
    "nn": {"cupy", "tornado", "IPython", "ipywidgets", "pickle"},
    "kernels": {"cupy", "tornado", "IPython", "ipywidgets", "pickle"},
    "compiler": {"cupy", "numba", "tornado", "IPython", "ipywidgets", "pickle"},
    "protocol": {"cupy", "tornado", "IPython", "ipywidgets", "pickle"},
    "runtime_server": {"cupy", "IPython", "ipywidgets", "pickle"},
    "client": {"cupy", "tornado", "IPython", "ipywidgets", "pickle"},
}


def _module_level_imports(path: pathlib.Path) -> list[tuple[str, int]]:
    """(absolute module name, line) of imports outside function bodies."""
    tree = ast.parse(path.read_text())
    rel = path.relative_to(ROOT.parent).with_suffix("")
    pkg_parts = list(rel.parts[:-1]) if rel.name != "__init__" else list(rel.parts[:-1])
    out = []

    def visit(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            fn = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            if isinstance(child, ast.Import) and not in_function:
                out.extend((a.name, child.lineno) for a in child.names)
            elif isinstance(child, ast.ImportFrom) and not in_function:
                if child.level:
                    base = pkg_parts[: len(pkg_parts) - child.level + 1]
                    mod = ".".join(base + ([child.module] if child.module else []))
                    if not child.module:
                        out.extend((f"{mod}.{a.name}", child.lineno) for a in child.names)
                        continue
                else:
                    mod = child.module or ""
                out.append((mod, child.lineno))
            elif not isinstance(child, ast.If) or not _is_type_checking(child):
                visit(child, fn)

    visit(tree, False)
    return out


def _is_type_checking(node: ast.If) -> bool:
    return isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING"


def test_subpackages_import_only_what_design_allows():
    bad = []
    for sub, allowed in ALLOWED.items():
        for path in sorted((ROOT / sub).rglob("*.py")) if (ROOT / sub).is_dir() else []:
            for mod, line in _module_level_imports(path):
                parts = mod.split(".")
                if parts[0] == "kernelflow" and len(parts) > 1:
                    target = parts[1]
                    if target not in allowed | ALWAYS | {sub}:
                        bad.append(f"{path.relative_to(ROOT.parent)}:{line} imports {mod}")
                if parts[0] in FORBIDDEN_TOP.get(sub, ()):
                    bad.append(f"{path.relative_to(ROOT.parent)}:{line} imports {mod} at module level")
    assert not bad, "\n".join(bad)


def test_import_kernelflow_loads_no_optional_heavy_modules():
    code = ("import sys, kernelflow as kf; rt = kf.connect('inproc'); g = rt.graph('x'); "
            "g.run(g.constant(1.0) + 1.0); "
            "print(','.join(m for m in ('tornado', 'cupy', 'IPython', 'ipywidgets', 'numba') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_no_pickle_or_eval_in_package():
    offenders = []
    for path in ROOT.rglob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                names = [a.name for a in node.names] + [getattr(node, "module", None) or ""]
                if any(n.split(".")[0] in ("pickle", "cPickle", "dill", "cloudpickle") for n in names):
                    offenders.append(f"{path}:{node.lineno} imports pickle")
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in ("eval", "exec"):
                offenders.append(f"{path}:{node.lineno} calls {node.func.id}")
    assert not offenders, "\n".join(offenders)

"""The import rules of DESIGN.md: who may import whom (imports inside functions included), and what a
thin client and `import kernelflow` load."""

from __future__ import annotations

import ast
import pathlib
import subprocess
import sys
import textwrap

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1] / "kernelflow"

# subpackage -> kernelflow subpackages it may import (anywhere in a module; "errors" and "_version" always).
ALLOWED = {
    "graph": set(),
    "nn": {"graph"},
    "kernels": {"graph"},
    "compiler": {"graph", "kernels"},
    "protocol": set(),
    "interop": {"graph", "protocol"},
    "runtime_server": {"graph", "kernels", "compiler", "protocol"},
    "client": {"graph", "nn", "protocol"},
    "widgets": {"client", "graph", "nn", "protocol"},
    "extension": {"client", "widgets", "graph", "protocol"},
}
ALWAYS = {"errors", "_version"}
# Imports that break the table above on purpose, each only inside a function (lazily).
LAZY_EXCEPTIONS = {
    ("client/inproc.py", "runtime_server"),   # kf.connect("inproc"): the one way into the server
    ("client/graph.py", "widgets"),           # g.inspect()
    ("client/job.py", "widgets"),             # job.monitor()
    ("client/graph.py", "interop"),           # g.export_onnx(), g.to_tensorboard()
    ("runtime_server/training/jobs.py", "interop"),  # the GraphDef and run metadata of a job's event file
}
# Inside the server: layer -> the runtime_server modules/subpackages it may import.
SERVER_LAYERS = {
    "engine": {"engine"},
    "persist": {"persist"},
    "training": {"training", "engine", "persist", "datasets", "graphs"},
    "serving": {"serving", "engine"},
    "distributed": {"distributed", "engine", "training", "datasets", "graphs", "persist", "methods"},
    "net": {"net", "methods", "service"},
}
# Third-party modules a subpackage must never import at module level.
FORBIDDEN_TOP = {
    "graph": {"cupy", "tornado", "IPython", "ipywidgets", "numba", "pickle"},
    "nn": {"cupy", "tornado", "IPython", "ipywidgets", "numba", "pickle"},
    "kernels": {"cupy", "tornado", "IPython", "ipywidgets", "numba", "pickle"},
    "compiler": {"cupy", "tornado", "IPython", "ipywidgets", "numba", "pickle"},
    "protocol": {"cupy", "tornado", "IPython", "ipywidgets", "numba", "pickle"},
    "runtime_server": {"cupy", "IPython", "ipywidgets", "numba", "pickle"},
    "client": {"cupy", "tornado", "IPython", "ipywidgets", "numba", "pickle"},
    "interop": {"cupy", "tornado", "IPython", "ipywidgets", "numba", "pickle", "onnx", "onnxruntime", "tensorboard",
                "tensorflow"},
}
TORNADO_ONLY_IN = ("runtime_server/net/", "runtime_server/serving/rest.py")


def _imports(path: pathlib.Path) -> list[tuple[str, int, bool]]:
    """(absolute module name, line, inside a function) of every import outside TYPE_CHECKING blocks."""
    tree = ast.parse(path.read_text())
    rel = path.relative_to(ROOT.parent).with_suffix("")
    pkg_parts = list(rel.parts[:-1])
    out: list[tuple[str, int, bool]] = []

    def visit(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            fn = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            if isinstance(child, ast.Import):
                out.extend((a.name, child.lineno, in_function) for a in child.names)
            elif isinstance(child, ast.ImportFrom):
                if child.level:
                    base = pkg_parts[: len(pkg_parts) - child.level + 1]
                    mod = ".".join(base + ([child.module] if child.module else []))
                    if not child.module:
                        out.extend((f"{mod}.{a.name}", child.lineno, in_function) for a in child.names)
                        continue
                else:
                    mod = child.module or ""
                out.append((mod, child.lineno, in_function))
            elif not isinstance(child, ast.If) or not _is_type_checking(child):
                visit(child, fn)

    visit(tree, False)
    return out


def _is_type_checking(node: ast.If) -> bool:
    return isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING"


def _files(sub: str) -> list[pathlib.Path]:
    return sorted((ROOT / sub).rglob("*.py")) if (ROOT / sub).is_dir() else [ROOT / f"{sub}.py"]


def test_subpackages_import_only_what_design_allows_lazy_imports_included():
    bad = []
    for sub, allowed in ALLOWED.items():
        for path in _files(sub):
            if not path.exists():
                continue
            rel = str(path.relative_to(ROOT))
            for mod, line, lazy in _imports(path):
                parts = mod.split(".")
                if parts[0] == "kernelflow" and len(parts) > 1:
                    target = parts[1]
                    ok = target in allowed | ALWAYS | {sub} or (lazy and (rel, target) in LAZY_EXCEPTIONS)
                    if not ok:
                        bad.append(f"{rel}:{line} imports {mod}{' (in a function)' if lazy else ''}")
                if parts[0] in FORBIDDEN_TOP.get(sub, ()) and not lazy:
                    bad.append(f"{rel}:{line} imports {mod} at module level")
    assert not bad, "\n".join(bad)


def test_lazy_exceptions_are_really_lazy_and_still_needed():
    for rel, target in LAZY_EXCEPTIONS:
        path = ROOT / rel
        if not path.exists():
            continue
        hits = [(line, lazy) for mod, line, lazy in _imports(path) if mod.startswith(f"kernelflow.{target}")]
        assert all(lazy for _, lazy in hits), f"{rel} imports {target} at module level: {hits}"


def test_server_layers_import_one_way():
    bad = []
    for layer, allowed in SERVER_LAYERS.items():
        d = ROOT / "runtime_server" / layer
        for path in sorted(d.rglob("*.py")) if d.is_dir() else []:
            for mod, line, _ in _imports(path):
                parts = mod.split(".")
                if parts[:2] == ["kernelflow", "runtime_server"] and len(parts) > 2 and parts[2] not in allowed:
                    bad.append(f"{path.relative_to(ROOT)}:{line} imports {mod}")
    assert not bad, "\n".join(bad)


def test_tornado_only_in_net_and_rest():
    bad = []
    for path in ROOT.rglob("*.py"):
        rel = str(path.relative_to(ROOT))
        if rel.startswith(TORNADO_ONLY_IN):
            continue
        bad += [f"{rel}:{line}" for mod, line, _ in _imports(path) if mod.split(".")[0] == "tornado"]
    assert not bad, "\n".join(bad)


def test_import_kernelflow_loads_no_optional_heavy_modules():
    code = ("import sys, kernelflow as kf; rt = kf.connect('inproc'); g = rt.graph('x'); "
            "g.run(g.constant(1.0) + 1.0); "
            "print(','.join(m for m in ('tornado', 'cupy', 'IPython', 'ipywidgets', 'numba') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_thin_client_loads_no_server_or_kernel_code(tmp_path):
    """kf.connect(url), a run, a model export, and kf.load_model(path, runtime=remote) in a fresh
    process: nothing of runtime_server or kernels is imported on the client side."""
    from tests.support.server import ServerProcess

    server = ServerProcess(tmp_path, "--state-dir", str(tmp_path / "state")).wait_listening()
    try:
        _thin_client_check(server)
    finally:
        server.stop()


def _thin_client_check(server) -> None:
    with server.connect() as rt:
        g = rt.graph("thin")
        x = g.placeholder((None, 3), "float32", name="x")
        w = g.variable(np.arange(6, dtype=np.float32).reshape(3, 2), name="w")
        g.export("thin", inputs={"x": x}, outputs={"y": x @ w})
    model_dir = server.runtime_dir.parent / "state" / "models" / "thin"
    code = textwrap.dedent(f"""
        import sys, numpy as np, kernelflow as kf
        rt = kf.connect({server.url!r}, token={server.token!r})
        g = rt.graph("thin")
        out = g.run("w")
        m = kf.load_model({str(model_dir)!r}, runtime=rt)
        y = m.predict({{"x": np.ones((2, 3), np.float32)}})["y"]
        assert y.tolist() == [[6.0, 9.0], [6.0, 9.0]], y
        server_side = ("kernelflow.kernels", "kernelflow.runtime_server", "kernelflow.compiler")
        print(",".join(sorted(k for k in sys.modules if k.startswith(server_side))))
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
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


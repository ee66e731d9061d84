"""Fixtures of the notebook tests: isolated Jupyter dirs, and a real runtime server that the
notebook's kernel reaches the way a kernel from `kernelflow install-kernel` does."""

from __future__ import annotations

import pathlib
from collections.abc import Callable, Iterator

import pytest


@pytest.fixture
def jupyter_env(tmp_path, monkeypatch) -> pathlib.Path:
    """Jupyter and IPython dirs of this test only (kernels inherit them); returns their parent."""
    for var, sub in (("IPYTHONDIR", "ipython"), ("JUPYTER_RUNTIME_DIR", "runtime"), ("JUPYTER_DATA_DIR", "data"),
                     ("JUPYTER_CONFIG_DIR", "config")):
        (tmp_path / sub).mkdir()
        monkeypatch.setenv(var, str(tmp_path / sub))
    return tmp_path


@pytest.fixture
def notebook_server(jupyter_env, monkeypatch) -> Iterator[object]:
    """A real `kernelflow serve` whose URL and token file kernels started now inherit
    (``KERNELFLOW_URL``, ``KERNELFLOW_TOKEN_FILE``), so ``kf.connect()`` reaches it with no code."""
    from tests.support.server import ServerProcess

    srv = ServerProcess(jupyter_env).wait_listening()
    token_file = jupyter_env / "token"
    token_file.write_text(srv.token)
    monkeypatch.setenv("KERNELFLOW_URL", srv.url)
    monkeypatch.setenv("KERNELFLOW_TOKEN_FILE", str(token_file))
    monkeypatch.delenv("KERNELFLOW_TOKEN", raising=False)
    yield srv
    srv.stop()


@pytest.fixture
def run_notebook(jupyter_env) -> Callable[..., object]:
    """``run_notebook(path, timeout)``: the notebook executed by nbclient on a real python3 kernel
    (widget state stored in its metadata); raises on a cell error."""
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")

    def run(path: pathlib.Path, timeout: int = 180) -> object:
        nb = nbformat.read(path, as_version=4)
        nbclient.NotebookClient(nb, timeout=timeout, kernel_name="python3", store_widget_state=True,
                                resources={"metadata": {"path": str(jupyter_env)}}).execute()
        return nb

    return run

"""Shared harness of the real-browser tests: a JupyterLab (with isolated Jupyter dirs) against a
real runtime server subprocess, and the polling helper for its REST API."""

from __future__ import annotations

import contextlib
import json
import os
import pathlib
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator

import pytest

CHROMIUM = "/usr/bin/chromium"
TOKEN = "kf-browser-test"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def require_browser() -> None:
    """Skip unless Debian's chromium, playwright and jupyterlab are installed."""
    if not os.path.exists(CHROMIUM):
        pytest.skip("no /usr/bin/chromium (apt-get install chromium)")
    pytest.importorskip("playwright")
    pytest.importorskip("jupyterlab")


def get_json(url: str) -> list | None:
    """The JSON at ``url``, or None when the server is not up or answers an error (callers poll
    with a deadline: a busy JupyterLab may answer 500 or time out once)."""
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return json.loads(r.read())
    except (urllib.error.URLError, TimeoutError, ValueError):
        return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def lab_process(tmp: pathlib.Path, root_dir: pathlib.Path, env: dict | None = None,
                start_timeout_s: float = 90.0) -> Iterator[str]:
    """JupyterLab on 127.0.0.1 serving ``root_dir``, with Jupyter dirs isolated under ``tmp``
    (no news pop-up, notebooks start their default kernel); yields its base URL.

    Its log (the kernels' stderr too) goes to ``tmp/lab.log``. Also used by bench/inspector_elk.py.
    """
    env = {**(env if env is not None else os.environ)}
    for var in ("IPYTHONDIR", "JUPYTER_RUNTIME_DIR", "JUPYTER_DATA_DIR", "JUPYTER_CONFIG_DIR",
                "JUPYTERLAB_SETTINGS_DIR", "JUPYTERLAB_WORKSPACES_DIR"):
        d = tmp / var.lower()
        d.mkdir()
        env[var] = str(d)
    # windowingMode none: every cell stays in the DOM (tests read outputs far down a long notebook)
    for ext, name, body in (("notebook-extension", "tracker",
                             '{"autoStartDefaultKernel": true, "windowingMode": "none"}'),
                            ("apputils-extension", "notification", '{"fetchNews": "false"}')):
        d = tmp / "jupyterlab_settings_dir" / "@jupyterlab" / ext
        d.mkdir(parents=True)
        (d / f"{name}.jupyterlab-settings").write_text(body)
    port = _free_port()
    log_path = tmp / "lab.log"
    with log_path.open("w") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "jupyter", "lab", "--no-browser", "--ip=127.0.0.1", f"--port={port}",
             "--ServerApp.port_retries=0", f"--IdentityProvider.token={TOKEN}", f"--ServerApp.root_dir={root_dir}",
             "--ServerApp.allow_root=True", "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate"],
            env=env, stdout=subprocess.DEVNULL, stderr=log)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + start_timeout_s
        while get_json(f"{base}/api/kernels?token={TOKEN}") is None:
            if time.monotonic() > deadline or proc.poll() is not None:
                raise RuntimeError(f"jupyter lab did not start: {log_path.read_text()[-4000:]}")
            time.sleep(0.3)  # polling a server another process starts, with a deadline
        yield base
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()


@contextlib.contextmanager
def jupyterlab(tmp_path: pathlib.Path, nb_dir: pathlib.Path) -> Iterator[tuple[str, object]]:
    """JupyterLab serving ``nb_dir`` whose kernels reach a fresh runtime server; yields (base url, server)."""
    from tests.support.server import ServerProcess

    srv = ServerProcess(tmp_path).wait_listening()
    try:
        (tmp_path / "token").write_text(srv.token)
        env = {**os.environ, "KERNELFLOW_URL": srv.url, "KERNELFLOW_TOKEN_FILE": str(tmp_path / "token")}
        env.pop("KERNELFLOW_TOKEN", None)
        with lab_process(tmp_path, nb_dir, env, start_timeout_s=60) as base:
            yield base, srv
    finally:
        srv.stop()


def run_all(page, lab: str, notebook: str) -> None:
    """Open ``notebook`` in JupyterLab (``page``: a Playwright page; ``lab``: its base URL) and run
    all its cells once its kernel is connected."""
    page.goto(f"{lab}/lab/tree/{notebook}?token={TOKEN}")
    page.wait_for_selector(".jp-Notebook .jp-Cell", timeout=60_000)
    deadline = time.monotonic() + 60
    while True:  # "Run All" before the kernel is connected silently runs nothing
        kernels = get_json(f"{lab}/api/kernels?token={TOKEN}") or []
        if kernels and kernels[0]["execution_state"] == "idle" and kernels[0]["connections"] >= 1:
            break
        if page.locator(".jp-Dialog .jp-mod-accept").count():
            page.locator(".jp-Dialog .jp-mod-accept").first.click()
        assert time.monotonic() < deadline, kernels
        time.sleep(0.3)  # polling JupyterLab's REST API, with a deadline
    page.locator(".lm-MenuBar-itemLabel:text-is('Run')").click()
    page.locator(".lm-Menu-itemLabel:text-is('Run All Cells')").click()

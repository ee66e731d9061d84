"""Kernelspecs: install into a temporary prefix, list, start one on a real ipykernel, uninstall."""

from __future__ import annotations

import json
import os
import sys

import pytest

from kernelflow.errors import InvalidArgumentError, NotFoundError
from kernelflow.extension.kernelspec import install_kernel, list_kernels, uninstall_kernel

pytest.importorskip("jupyter_client")


@pytest.fixture
def jupyter_dirs(tmp_path, monkeypatch):
    """Keep every Jupyter/IPython directory inside tmp_path."""
    for var, sub in (("IPYTHONDIR", "ipython"), ("JUPYTER_RUNTIME_DIR", "runtime"), ("JUPYTER_DATA_DIR", "data"),
                     ("JUPYTER_CONFIG_DIR", "config")):
        (tmp_path / sub).mkdir()
        monkeypatch.setenv(var, str(tmp_path / sub))
    monkeypatch.delenv("JUPYTER_PATH", raising=False)
    return tmp_path


def test_install_kernel_writes_spec_without_token(jupyter_dirs):
    token_file = jupyter_dirs / "token"
    token_file.write_text("s3cret\n")
    prefix = jupyter_dirs / "prefix"
    path = install_kernel("gpu-box", "kf://10.0.0.5:7070", token_file=str(token_file), display_name="GPU box",
                          prefix=str(prefix))
    assert path == str(prefix / "share" / "jupyter" / "kernels" / "gpu-box")
    spec = json.loads((prefix / "share/jupyter/kernels/gpu-box/kernel.json").read_text())
    assert spec["argv"] == [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}",
                            "--IPKernelApp.extensions=['kernelflow']"]
    assert spec["env"] == {"KERNELFLOW_URL": "kf://10.0.0.5:7070", "KERNELFLOW_TOKEN_FILE": str(token_file)}
    assert spec["display_name"] == "GPU box"
    assert "s3cret" not in json.dumps(spec)
    kernels = list_kernels(prefix=str(prefix))
    assert [(k["name"], k["url"], k["token_file"]) for k in kernels] == [
        ("gpu-box", "kf://10.0.0.5:7070", str(token_file))]
    assert uninstall_kernel("gpu-box", prefix=str(prefix)) == path
    assert not os.path.exists(path)
    assert list_kernels(prefix=str(prefix)) == []


def test_install_kernel_token_in_url_raises(jupyter_dirs):
    with pytest.raises(InvalidArgumentError, match="the url holds a token"):
        install_kernel("k", "kf://h:1/?token=abc", prefix=str(jupyter_dirs))


@pytest.mark.parametrize("kwargs, match", [
    ({"name": "bad name", "url": "kf://h:1"}, "name must use letters"),
    ({"name": "k", "url": "http://h:1"}, "url must be 'kf://host:port'"),
    ({"name": "k", "url": "kf://h:1", "token_file": "/nonexistent/token"}, "token file '/nonexistent/token'"),
    ({"name": "k", "url": "kf://h:1", "user": True, "prefix": "/tmp"}, "not both"),
])
def test_install_kernel_bad_args_raise(jupyter_dirs, kwargs, match):
    with pytest.raises(InvalidArgumentError, match=match):
        install_kernel(**kwargs)


def test_uninstall_kernel_unknown_raises_not_found(jupyter_dirs):
    with pytest.raises(NotFoundError, match="no kernelflow kernel named 'nope'"):
        uninstall_kernel("nope", prefix=str(jupyter_dirs))


def test_cli_install_list_uninstall(jupyter_dirs, capsys):
    import argparse

    from kernelflow.extension.kernelspec import add_kernel_commands

    parser = argparse.ArgumentParser()
    add_kernel_commands(parser.add_subparsers(dest="command", required=True))
    prefix = str(jupyter_dirs / "p")

    def run(*argv):
        args = parser.parse_args(argv)
        return args.fn(args)

    assert run("install-kernel", "--name", "box", "--url", "kf://h:7070", "--prefix", prefix) == 0
    assert "installed kernelspec 'box'" in capsys.readouterr().out
    assert run("kernels", "--prefix", prefix) == 0
    assert capsys.readouterr().out.startswith("box  kf://h:7070  'Python 3 (kernelflow box)'")
    assert run("uninstall-kernel", "box", "--prefix", prefix) == 0
    assert run("uninstall-kernel", "box", "--prefix", prefix) == 1
    assert "no kernelflow kernel named 'box'" in capsys.readouterr().err
    assert run("install-kernel", "--name", "x", "--url", "kf://h:1/?token=t", "--prefix", prefix) == 2
    with pytest.raises(SystemExit):  # argparse: --user and --prefix exclude each other
        run("install-kernel", "--name", "x", "--url", "kf://h:1", "--user", "--prefix", prefix)


def _execute(kc, code: str, timeout: float = 60) -> dict:
    """Run ``code`` in the kernel; returns {"stdout", "stderr", "result", "status"}."""
    msg_id = kc.execute(code)
    out: dict = {"stdout": "", "stderr": "", "result": None}
    while True:
        msg = kc.get_iopub_msg(timeout=timeout)
        if msg["parent_header"].get("msg_id") != msg_id:
            continue
        kind, content = msg["msg_type"], msg["content"]
        if kind == "stream":
            out[content["name"]] += content["text"]
        elif kind == "execute_result":
            out["result"] = content["data"].get("text/plain")
        elif kind == "error":
            out["stderr"] += "\n".join(content["traceback"])
        elif kind == "status" and content["execution_state"] == "idle":
            break
    out["status"] = kc.get_shell_msg(timeout=timeout)["content"]["status"]
    return out


@pytest.mark.slow
def test_installed_kernel_connects_to_server_with_no_code(jupyter_dirs, tmp_path):
    pytest.importorskip("ipykernel")
    from jupyter_client.kernelspec import KernelSpecManager
    from jupyter_client.manager import KernelManager

    from tests.support.server import ServerProcess

    srv = ServerProcess(tmp_path).wait_listening()
    token_file = tmp_path / "token"
    token_file.write_text(srv.token)
    prefix = tmp_path / "prefix"
    install_kernel("kf-test", srv.url, token_file=str(token_file), prefix=str(prefix))
    ksm = KernelSpecManager(kernel_dirs=[str(prefix / "share/jupyter/kernels")])
    # start_new_kernel() does not hand kernel_spec_manager to the KernelManager: build it here.
    km = KernelManager(kernel_name="kf-test", kernel_spec_manager=ksm)
    km.start_kernel(cwd=str(tmp_path))
    kc = km.client()
    kc.start_channels()
    try:
        kc.wait_for_ready(timeout=60)
        r = _execute(kc, "'kernelflow' in get_ipython().extension_manager.loaded")
        assert r["result"] == "True", r
        r = _execute(kc, "import kernelflow as kf, os\ninfo = kf.connect().info()\n"
                         "(info['version'], kf.connect().url, 'KERNELFLOW_TOKEN' in os.environ)")
        assert r["status"] == "ok", r
        assert r["result"] == f"('{__import__('kernelflow').__version__}', '{srv.url}', False)"
        r = _execute(kc, "%kf graphs")
        assert r["status"] == "ok" and "graphs on " + srv.url in r["result"], r
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)
        srv.stop()
        uninstall_kernel("kf-test", prefix=str(prefix))
    assert list_kernels(prefix=str(prefix)) == []

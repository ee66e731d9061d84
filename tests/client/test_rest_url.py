"""The REST base URL is findable (issue #14 item 1): rt.info(), the runtime file, `kernelflow
status`, `%kf status` and rt.model(name).rest_url, on a server started with --port 0 (as the
local runtime is), whose REST port is any free one, not RPC + 1."""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.request

import numpy as np

import kernelflow as kf
from tests.support.server import ServerProcess


def test_rest_url_in_info_runtime_file_status_and_model_handle(tmp_path):
    srv = ServerProcess(tmp_path, "--state-dir", str(tmp_path / "state")).wait_listening()
    try:
        with srv.connect() as rt:
            info = rt.info()
            port = info["rest_port"]
            assert isinstance(port, int) and port > 0
            assert info["rest_url"] == f"http://127.0.0.1:{port}" == rt.rest_url
            files = list((tmp_path / "runtime").glob("kernelflow-*.json"))
            data = json.loads(files[0].read_text())
            assert data["rest_url"] == info["rest_url"] and data["prefix"] == sys.prefix
            # a model answers at the handle's URL, over plain HTTP
            g = rt.graph("rest")
            x = g.placeholder((None, 2), "float32", name="x")
            y = kf.multiply(x, 3.0, name="y")
            g.export("triple", inputs={"x": x}, outputs={"y": y})
            url = rt.model("triple").rest_url
            assert url == f"{info['rest_url']}/v1/models/triple"
            from tests.support.waiting import wait_for

            def predict():
                req = urllib.request.Request(url + ":predict", data=json.dumps({"instances": [[1.0, 2.0]]}).encode(),
                                             headers={"Content-Type": "application/json"})
                try:
                    with urllib.request.urlopen(req, timeout=10) as r:
                        return json.loads(r.read())
                except urllib.error.HTTPError as e:
                    if e.code in (404, 503):  # the manager picks the new version up
                        return None
                    raise

            answer = wait_for(predict, "the exported model over REST", 30)
            assert np.allclose(answer["predictions"], [[3.0, 6.0]])
        env = {**__import__("os").environ, "JUPYTER_RUNTIME_DIR": str(tmp_path / "runtime")}
        out = subprocess.run([sys.executable, "-m", "kernelflow", "status"], env=env, capture_output=True, text=True,
                             timeout=60)
        assert f"REST {info['rest_url']}" in out.stdout and sys.prefix in out.stdout, out.stdout
    finally:
        srv.stop()

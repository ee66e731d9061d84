"""The exported-model directory format, shared by the server (export, serving) and the client (``kf.load_model``).

A model directory (``<base>/<name>/<version>/``) holds::

    graph.msgpack          the inference subgraph's node dicts (kernelflow's codec); variable
                           nodes carry no ``initial`` attr: their values are in variables.safetensors
    variables.safetensors  the values of the variables the subgraph reads
    signature.json         {"signature_name", "method_name", "format", "graph", "inputs", "outputs"
                           [, "bound"]}; each input and output is {"name": node, "dtype": numpy name,
                           "shape": [int or null]}; "bound": placeholders fixed at export
    MODEL_COMPLETE         written last: a version without it is never loaded

Versions are increasing integers. A version is written into a hidden temp dir
(``.tmp-<version>-<hex>``), each file and the dir fsynced, and renamed into place, so a reader
sees it whole or not at all. Nothing read from a model dir is unpickled or evaluated: JSON,
msgpack (kernelflow's codec) and safetensors only.

Contents: MARKER, FORMAT, SIGNATURE_NAME, PREDICT_METHOD, NAME_RE, KEY_RE, TMP_PREFIX, check_model_name,
versions_on_disk, all_version_numbers, write_version, read_model_dir.
"""

from __future__ import annotations

import json
import logging
import os
import re
import secrets
import shutil
import threading
from pathlib import Path
from typing import Any

from safetensors.numpy import load_file, save_file

from ..errors import AlreadyExistsError, FailedPreconditionError, InvalidArgumentError, NotFoundError
from .codec import decode, encode
from .durable import fsync_dir

log = logging.getLogger("kernelflow.models")

TMP_PREFIX = ".tmp-"
MARKER = "MODEL_COMPLETE"
SIGNATURE_NAME = "serving_default"
PREDICT_METHOD = "tensorflow/serving/predict"
FORMAT = "kernelflow-model-1"
NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,127}")
KEY_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_.\-]{0,127}")


def check_model_name(name: Any) -> str:
    """``name`` if it is a safe model name (no path characters), else InvalidArgumentError."""
    if not isinstance(name, str) or not NAME_RE.fullmatch(name) or ".." in name:
        raise InvalidArgumentError(f"model name must match [A-Za-z0-9][A-Za-z0-9_.-]* (no '/', no '..'); "
                                   f"got {name!r}")
    return name


def versions_on_disk(model_dir: Path) -> list[int]:
    """Complete versions (those with the marker), ascending."""
    out = []
    try:
        entries = list(os.scandir(model_dir))
    except (FileNotFoundError, NotADirectoryError):
        return []
    for e in entries:
        if e.name.isdigit() and e.is_dir() and (Path(e.path) / MARKER).is_file():
            out.append(int(e.name))
    return sorted(out)


def all_version_numbers(model_dir: Path) -> list[int]:
    """Every numbered entry (complete or not, temp dirs aside), ascending."""
    try:
        return sorted(int(e.name) for e in os.scandir(model_dir) if e.name.isdigit())
    except FileNotFoundError:
        return []


_export_lock = threading.Lock()


def write_version(base: Path, name: str, version: int | None, dicts: list, arrays: dict, signature: dict) -> dict:
    """Write a model version: a temp dir, every file fsynced, the marker last, renamed into place, the
    model dir fsynced; returns ``{"name", "version", "path", "signature"}``.

    Raises:
        AlreadyExistsError: ``version`` exists already.
    """
    model_dir = base / name
    model_dir.mkdir(parents=True, exist_ok=True)
    with _export_lock:
        existing = all_version_numbers(model_dir)
        if version is None:
            version = (existing[-1] + 1) if existing else 1
        elif version in existing:
            raise AlreadyExistsError(f"model.export: model '{name}' has a version {version} already; "
                                     f"versions: {existing}")
        tmp = model_dir / f"{TMP_PREFIX}{version}-{secrets.token_hex(4)}"
        tmp.mkdir()
        try:
            with open(tmp / "graph.msgpack", "wb") as f:
                for fr in encode({"format": FORMAT, "nodes": dicts}):
                    f.write(fr)
            save_file(arrays, str(tmp / "variables.safetensors"), metadata={"format": FORMAT})
            (tmp / "signature.json").write_text(json.dumps(signature, indent=1))
            for p in tmp.iterdir():
                with open(p, "rb+") as f:
                    os.fsync(f.fileno())
            (tmp / MARKER).write_text(f"{FORMAT}\n")
            fsync_dir(tmp)
            os.replace(tmp, model_dir / str(version))
            fsync_dir(model_dir)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    log.info("exported model '%s' version %d (%d nodes, %d variables)", name, version, len(dicts), len(arrays))
    return {"name": name, "version": version, "path": str(model_dir / str(version)), "signature": signature}


def read_model_dir(path: Path) -> tuple[list[dict], dict]:
    """The node dicts (variables' ``initial`` filled in) and signature of a model version dir.

    Raises:
        NotFoundError: not a complete model version.
        FailedPreconditionError: damaged files.
    """
    if not (path / MARKER).is_file():
        raise NotFoundError(f"{path} is not a complete kernelflow model version (no {MARKER})")
    try:
        signature = json.loads((path / "signature.json").read_text())
        body = decode((path / "graph.msgpack").read_bytes())
        arrays = load_file(str(path / "variables.safetensors"))
        dicts = body["nodes"]
        for d in dicts:
            if d.get("op") == "variable":
                d["attrs"] = {**(d.get("attrs") or {}), "initial": arrays[d["name"]]}
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise FailedPreconditionError(f"model at {path} is damaged: {e}") from e
    return dicts, signature

"""Jupyter kernelspecs that open notebooks connected to a kernelflow runtime.

A kernelflow kernelspec is a plain ipykernel with the kernelflow IPython extension
preloaded and ``KERNELFLOW_URL`` (and ``KERNELFLOW_TOKEN_FILE``, a path, never the token
itself) in its environment, so ``kf.connect()`` in a notebook reaches the runtime with no
code. Written and removed through jupyter_client's ``KernelSpecManager``.

Contents: install_kernel, list_kernels, uninstall_kernel, add_kernel_commands (the CLI).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import tempfile
from typing import Any
from urllib.parse import parse_qs, urlsplit

from ..errors import InvalidArgumentError, NotFoundError

_NAME_RE = re.compile(r"^[A-Za-z0-9._-]+$")  # what jupyter_client accepts as a kernel name
_METADATA_KEY = "kernelflow"


def _spec_manager(prefix: str | None = None) -> Any:
    from jupyter_client.kernelspec import KernelSpecManager

    ksm = KernelSpecManager()
    if prefix is not None:
        # A prefix is not on the default search path unless $JUPYTER_PATH names it.
        extra = os.path.join(os.path.abspath(prefix), "share", "jupyter", "kernels")
        if extra not in ksm.kernel_dirs:
            ksm.kernel_dirs = [*ksm.kernel_dirs, extra]
    return ksm


def _check_url(url: str) -> str:
    if not isinstance(url, str) or not url.startswith(("kf://", "kfs://")):
        raise InvalidArgumentError(f"install-kernel: url must be 'kf://host:port' or 'kfs://host:port'; got {url!r}")
    if "token" in parse_qs(urlsplit(url).query):
        raise InvalidArgumentError("install-kernel: the url holds a token; a kernelspec is a world-readable file, so "
                                   "put the token in a file (mode 600) and pass --token-file instead")
    return url


def kernel_spec(url: str, token_file: str | None = None, display_name: str | None = None,
                name: str = "kernelflow") -> dict:
    """The ``kernel.json`` content of a kernelflow kernel (see `install_kernel` for the args)."""
    env = {"KERNELFLOW_URL": _check_url(url)}
    if token_file is not None:
        env["KERNELFLOW_TOKEN_FILE"] = token_file
    return {
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}",
                 "--IPKernelApp.extensions=['kernelflow']"],
        "display_name": display_name or f"Python 3 (kernelflow {name})",
        "language": "python",
        "env": env,
        "metadata": {_METADATA_KEY: {"url": url, "token_file": token_file}, "debugger": True},
    }


def install_kernel(name: str, url: str, token_file: str | None = None, display_name: str | None = None,
                   user: bool = False, prefix: str | None = None) -> str:
    """Write a kernelspec whose notebooks get ``kf.connect()`` connected to ``url``.

    Args:
        name: the kernel's name (letters, digits, ``._-``), e.g. ``"gpu-box"``.
        url: the runtime server, ``"kf://host:port"`` or ``"kfs://host:port"`` (no token in it).
        token_file: a file holding the server's token; its absolute path goes in the spec,
            the token does not.
        display_name: the name shown in the launcher (default ``"Python 3 (kernelflow NAME)"``).
        user: install for the current user only (``~/.local/share/jupyter``).
        prefix: install under ``PREFIX/share/jupyter/kernels`` (e.g. a virtualenv's ``sys.prefix``).
            Neither ``user`` nor ``prefix``: the system-wide directory, as ``jupyter kernelspec install``.

    Returns:
        The directory the kernelspec was written to.

    Raises:
        InvalidArgumentError: a bad name or url, a url with a token, both ``user`` and
            ``prefix``, or a token file that does not exist.

    Example:
        >>> install_kernel("gpu-box", "kf://10.0.0.5:7070", token_file="~/.kf-token", user=True)
    """
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise InvalidArgumentError(f"install-kernel: name must use letters, digits, '.', '_' or '-'; got {name!r}")
    if user and prefix is not None:
        raise InvalidArgumentError("install-kernel: give user=True or prefix, not both")
    if token_file is not None:
        token_file = os.path.abspath(os.path.expanduser(token_file))
        if not os.path.isfile(token_file):
            raise InvalidArgumentError(f"install-kernel: token file {token_file!r} does not exist")
    spec = kernel_spec(url, token_file, display_name, name)
    with tempfile.TemporaryDirectory(prefix="kf-kernelspec-") as tmp:
        with open(os.path.join(tmp, "kernel.json"), "w") as f:
            json.dump(spec, f, indent=1)
        return _spec_manager(prefix).install_kernel_spec(tmp, kernel_name=name, user=user, prefix=prefix)


def list_kernels(prefix: str | None = None) -> list[dict]:
    """The kernelflow kernelspecs Jupyter can see.

    Args:
        prefix: also look under ``PREFIX/share/jupyter/kernels``.

    Returns:
        One dict per kernel: ``name``, ``display_name``, ``url``, ``token_file``, ``resource_dir``.
    """
    out = []
    for name, entry in sorted(_spec_manager(prefix).get_all_specs().items()):
        spec = entry.get("spec", {})
        meta = (spec.get("metadata") or {}).get(_METADATA_KEY)
        if meta is None:
            continue
        out.append({"name": name, "display_name": spec.get("display_name", name),
                    "url": (spec.get("env") or {}).get("KERNELFLOW_URL", meta.get("url")),
                    "token_file": (spec.get("env") or {}).get("KERNELFLOW_TOKEN_FILE"),
                    "resource_dir": entry.get("resource_dir")})
    return out


def uninstall_kernel(name: str, prefix: str | None = None) -> str:
    """Remove the kernelflow kernelspec ``name``; returns the directory removed.

    Raises:
        NotFoundError: no kernelflow kernelspec has that name (other kernels are never removed).
    """
    found = {k["name"]: k for k in list_kernels(prefix)}
    if name not in found:
        known = ", ".join(sorted(found)) or "none"
        raise NotFoundError(f"uninstall-kernel: no kernelflow kernel named {name!r}; kernelflow kernels: {known}")
    return _spec_manager(prefix).remove_kernel_spec(name)


# --------------------------------------------------------------------------- CLI
def _cmd_install(args: argparse.Namespace) -> int:
    try:
        path = install_kernel(args.name, args.url, token_file=args.token_file, display_name=args.display_name,
                              user=args.user, prefix=args.prefix)
    except InvalidArgumentError as e:
        print(e.message, file=sys.stderr)
        return 2
    print(f"installed kernelspec {args.name!r} in {path}")
    return 0


def _cmd_list(args: argparse.Namespace) -> int:
    kernels = list_kernels(args.prefix)
    if not kernels:
        print("no kernelflow kernels installed")
        return 0
    width = max(len(k["name"]) for k in kernels)
    for k in kernels:
        token = f"  token file {k['token_file']}" if k["token_file"] else ""
        print(f"{k['name']:<{width}}  {k['url']}  {k['display_name']!r}{token}  ({k['resource_dir']})")
    return 0


def _cmd_uninstall(args: argparse.Namespace) -> int:
    try:
        path = uninstall_kernel(args.name, args.prefix)
    except NotFoundError as e:
        print(e.message, file=sys.stderr)
        return 1
    print(f"removed kernelspec {args.name!r} from {path}")
    return 0


def add_kernel_commands(subparsers: Any) -> None:
    """Add ``install-kernel``, ``kernels`` and ``uninstall-kernel`` to the ``kernelflow`` command."""
    p = subparsers.add_parser("install-kernel", help="install a Jupyter kernel connected to a runtime server")
    p.add_argument("--name", required=True, help="kernel name, e.g. gpu-box")
    p.add_argument("--url", required=True, help="runtime server, kf://host:port or kfs://host:port")
    p.add_argument("--token-file", help="file holding the server's token (its path goes in the spec)")
    p.add_argument("--display-name", help="name shown in the Jupyter launcher")
    where = p.add_mutually_exclusive_group()
    where.add_argument("--user", action="store_true", help="install for the current user only")
    where.add_argument("--prefix", help="install under PREFIX/share/jupyter/kernels (e.g. sys.prefix)")
    p.set_defaults(fn=_cmd_install)

    ls = subparsers.add_parser("kernels", help="list the installed kernelflow Jupyter kernels")
    ls.add_argument("--prefix", help="also look under PREFIX/share/jupyter/kernels")
    ls.set_defaults(fn=_cmd_list)

    rm = subparsers.add_parser("uninstall-kernel", help="remove a kernelflow Jupyter kernel")
    rm.add_argument("name", help="the kernel's name")
    rm.add_argument("--prefix", help="also look under PREFIX/share/jupyter/kernels")
    rm.set_defaults(fn=_cmd_uninstall)

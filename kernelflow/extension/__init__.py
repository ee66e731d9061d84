"""The kernelflow IPython extension (``%load_ext kernelflow``) and Jupyter kernelspecs.

``%load_ext kernelflow`` registers the ``%kf`` line magic (see `kernelflow.extension.magics`);
``kernelflow install-kernel`` writes a kernelspec with the extension preloaded (see
`kernelflow.extension.kernelspec`). IPython is imported only when the extension loads.

Contents: load_ipython_extension, unload_ipython_extension.
"""

from __future__ import annotations

from typing import Any

__all__ = ["load_ipython_extension", "unload_ipython_extension"]


def load_ipython_extension(ipython: Any) -> None:
    """Register the ``%kf`` magic in ``ipython`` (called by ``%load_ext kernelflow``)."""
    from .magics import KernelflowMagics

    ipython.register_magics(KernelflowMagics)


def unload_ipython_extension(ipython: Any) -> None:
    """Remove the ``%kf`` magic (called by ``%unload_ext kernelflow``)."""
    ipython.magics_manager.magics["line"].pop("kf", None)

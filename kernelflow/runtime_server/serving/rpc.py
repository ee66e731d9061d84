"""The ``model.*`` RPC methods: export a graph's inference subgraph, then serve it through the manager.

Contents: ModelMethods.
"""

from __future__ import annotations

from collections.abc import Callable

from ..engine.session import GraphSession
from .export import export_model
from .manager import ModelManager


class ModelMethods:
    """The ``model.*`` RPC methods: export a graph's inference subgraph, then serve it through ``manager``."""

    def __init__(self, session: Callable[[str], GraphSession], manager: ModelManager):
        self.session = session
        self.manager = manager

    def export(self, graph: str, name: str, inputs: dict, outputs: dict, version: int | None = None) -> dict:
        """Export a new version of model ``name``; it answers requests when this returns."""
        mgr = self.manager
        base_path = mgr.require_base("model.export")
        out = export_model(self.session(graph), base_path, name, inputs, outputs, version)
        mgr.poll(only=name, wait=True)  # served by the next request, not after the next watcher poll
        return out

    def list(self) -> list[dict]:
        """Every model and its versions' states."""
        return self.manager.list()

    def predict(self, name: str, version: int | None, inputs: dict, output_keys: list | None = None) -> dict:
        """Run a served version on ``inputs``."""
        return self.manager.predict(name, version, inputs, output_keys)

    def status(self, name: str, version: int | None = None) -> dict:
        """A version's state and signature."""
        mgr = self.manager
        with mgr.use(name, version) as sv:
            return {**mgr.status(name, version), "name": name, "version": sv.version,
                    "signature": mgr.loaded(sv)[0].signature}

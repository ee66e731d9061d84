"""The state dir: what the runtime writes so that nothing is lost across kill -9 and restart.

Layout (all under the root given to ``kernelflow serve --state-dir DIR``)::

    graphs/<name>/...        node definitions, appended and fsynced before an extend is acknowledged
    checkpoints/<graph>/...  variable checkpoints (safetensors: temp file, fsync, rename) + manifests
    datasets/<name>/...      dataset arrays, written once
    jobs/<id>/...            job spec, status and the append-only history of logged records
    tensorboard/<job>/...    TensorBoard event files

Nothing read from here is unpickled or evaluated: JSON, msgpack (kernelflow's codec) and
safetensors only.

Contents: StateDir (the interface the service, datasets and jobs use).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np


class StateDir:
    """Reads and writes the runtime's state under ``root``.

    Every write that a request acknowledges is durable (fsynced, renamed into place) before
    the method returns. Readers tolerate a torn last record (a crash mid-append).

    Args:
        root: the state directory (created if missing).
    """

    def __init__(self, root: str | Path):
        self.root = Path(root)

    # ----------------------------------------------------------------- graphs
    def append_graph_nodes(self, graph: str, seed: int, since: int, node_dicts: list[dict]) -> None:
        """Persist nodes ``since`` .. ``since + len(node_dicts)`` of ``graph`` (durable on return)."""
        raise NotImplementedError

    def delete_graph(self, graph: str) -> None:
        """Forget a graph: its nodes and checkpoints."""
        raise NotImplementedError

    def load_graphs(self) -> list[tuple[str, int, list[dict]]]:
        """Every persisted graph as (name, seed, node dicts in order)."""
        raise NotImplementedError

    # ----------------------------------------------------------------- checkpoints
    def write_checkpoint(self, graph: str, tag: str | None, arrays: dict[str, np.ndarray],
                         manifest: dict[str, Any], keep_last: int | None = None) -> dict[str, Any]:
        """Write a checkpoint of ``arrays`` (variable name -> host array); returns its manifest
        (with ``tag``, ``time``, ``step``... as given, plus file and checksum fields)."""
        raise NotImplementedError

    def list_checkpoints(self, graph: str) -> list[dict[str, Any]]:
        """Manifests of ``graph``'s checkpoints, oldest first."""
        raise NotImplementedError

    def read_checkpoint(self, graph: str, tag: str = "latest") -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """(arrays, manifest) of a checkpoint; for "latest", a damaged newest one is skipped with a
        warning and the previous one is used."""
        raise NotImplementedError

    # ----------------------------------------------------------------- datasets
    def write_dataset(self, name: str, arrays: dict[str, np.ndarray], meta: dict[str, Any]) -> None:
        """Persist a dataset once (durable on return)."""
        raise NotImplementedError

    def delete_dataset(self, name: str) -> None:
        raise NotImplementedError

    def load_datasets(self) -> list[tuple[str, dict[str, np.ndarray], dict[str, Any]]]:
        """Every persisted dataset as (name, arrays, meta)."""
        raise NotImplementedError

    # ----------------------------------------------------------------- jobs
    def write_job(self, job_id: str, spec: dict[str, Any], status: dict[str, Any]) -> None:
        """Persist a job's spec (msgpack-able, may hold arrays) and its status map (durable)."""
        raise NotImplementedError

    def append_job_records(self, job_id: str, records: list[dict[str, Any]]) -> None:
        """Append logged records (metrics, histograms) to a job's history (durable on return)."""
        raise NotImplementedError

    def load_jobs(self) -> list[tuple[str, dict[str, Any], dict[str, Any], list[dict[str, Any]]]]:
        """Every persisted job as (id, spec, status, records in order), torn last record dropped."""
        raise NotImplementedError

    def tensorboard_dir(self, job_id: str) -> Path:
        """Where a job's TensorBoard event files go."""
        return self.root / "tensorboard" / job_id

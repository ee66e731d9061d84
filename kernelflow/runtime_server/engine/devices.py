"""Device placement: maps node device specs to a backend (numpy or cupy) and moves arrays.

CuPy is imported only when a GPU device is first asked for. ``soft_placement`` sends nodes
asking for a missing GPU to the CPU and says so once.

Contents: Placement, DeviceManager.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any

import numpy as np

from ...errors import FailedPreconditionError
from ...graph.ir import normalize_device

log = logging.getLogger("kernelflow.devices")


@dataclass(frozen=True)
class Placement:
    """Where a node runs: ``backend`` "numpy" or "cupy", and the GPU index for cupy."""

    backend: str
    index: int | None = None

    @property
    def name(self) -> str:
        return "cpu" if self.backend == "numpy" else f"gpu:{self.index}"


CPU = Placement("numpy")


class DeviceManager:
    """Resolves device specs against the GPUs present.

    Args:
        default: device for nodes with none: "cpu", "gpu", "gpu:N" or "auto" (GPU if present).
        soft_placement: fall back to the CPU when a requested GPU is missing.
        cuda_graphs: capture GPU plans as CUDA graphs (None: ``$KERNELFLOW_CUDA_GRAPHS`` = 1).
    """

    def __init__(self, default: str = "cpu", soft_placement: bool = False, cuda_graphs: bool | None = None):
        self.soft_placement = soft_placement
        if cuda_graphs is None:
            cuda_graphs = os.environ.get("KERNELFLOW_CUDA_GRAPHS", "") in ("1", "on", "true")
        self.cuda_graphs = bool(cuda_graphs)  # capture GPU plans as CUDA graphs (engine/cuda_graphs.py)
        self._gpu_count: int | None = None
        self._warned: set[str] = set()
        if default == "auto":
            default = "gpu:0" if self.gpu_count() > 0 else "cpu"
        self.default = normalize_device(default) or "cpu"
        if self.default != "cpu":
            self.resolve(self.default, "<runtime default device>")

    def gpu_count(self) -> int:
        """Number of CUDA GPUs CuPy sees (0 when CuPy or a GPU is missing)."""
        if self._gpu_count is None:
            try:
                import cupy

                self._gpu_count = int(cupy.cuda.runtime.getDeviceCount()) if cupy.cuda.is_available() else 0
            except Exception:  # ImportError, or CUDA present but unusable  # noqa: BLE001
                self._gpu_count = 0
        return self._gpu_count

    def devices(self) -> list[str]:
        """Names of every usable device."""
        return ["cpu"] + [f"gpu:{i}" for i in range(self.gpu_count())]

    def resolve(self, spec: str | None, node: str) -> Placement:
        """The placement of a node asking for ``spec``.

        Raises:
            FailedPreconditionError: naming ``node`` when a GPU is asked for and missing,
                unless soft placement is on.
        """
        spec = normalize_device(spec) or self.default
        if spec == "cpu":
            return CPU
        index = int(spec.split(":")[1])
        count = self.gpu_count()
        if index < count:
            return Placement("cupy", index)
        why = "CuPy or a CUDA GPU is not available" if count == 0 else f"only {count} GPU(s) are present"
        if self.soft_placement:
            if spec not in self._warned:
                self._warned.add(spec)
                log.warning("device %s requested (first by node %s) but %s; soft placement runs it on the CPU",
                            spec, node, why)
            return CPU
        raise FailedPreconditionError(
            f"node '{node}' is placed on {spec} but {why}; place it on 'cpu' or create the runtime with "
            "soft_placement=True", node=node)

    def to_device(self, x: Any, place: Placement) -> Any:
        """``x`` as an array of ``place`` (no copy when it is there already)."""
        if x is None:
            return None
        if place.backend == "numpy":
            return to_host(x)
        import cupy

        with cupy.cuda.Device(place.index):
            return cupy.asarray(x)

    def memory_in_use(self) -> dict[str, int]:
        """Bytes held by the GPU memory pools (empty without CuPy in use)."""
        out: dict[str, int] = {}
        if self._gpu_count:
            import cupy

            out["gpu_pool_bytes"] = int(cupy.get_default_memory_pool().used_bytes())
        return out


def to_host(x: Any) -> Any:
    """A numpy array (cupy arrays are copied to the host)."""
    if x is None or isinstance(x, np.ndarray):
        return x
    if hasattr(x, "get") and type(x).__module__.startswith("cupy"):
        return x.get()
    return np.asarray(x)

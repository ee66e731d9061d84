"""`Dataset`: a handle on named arrays held resident by the runtime, and `open_dataset`.

Arrays go up in chunks, each a slice of the caller's array sent as it is (one copy of a
chunk at most, when the slice is not contiguous), so a dataset larger than one message, or
than the client's spare memory, uploads fine. A fingerprint of the contents lets a
re-run notebook cell re-attach to the dataset it uploaded before instead of sending it again.

Contents: Dataset, open_dataset.
"""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import InvalidArgumentError

if TYPE_CHECKING:
    from .runtime import Runtime

DEFAULT_CHUNK_BYTES = 64 << 20
PROGRESS_MIN_BYTES = 64 << 20  # smaller uploads take well under a second: no bar


class Dataset:
    """A dataset on the runtime. Made by ``rt.dataset(name, arrays)`` (upload) or
    ``rt.dataset(name)`` (re-attach); a split is a dataset too.

    Attributes:
        name: the dataset's name on the runtime.
    """

    def __init__(self, runtime: Runtime, info: dict):
        self.runtime = runtime
        self.name: str = info["name"]
        self._info = info

    def __repr__(self) -> str:
        i = self._info
        arrays = ", ".join(f"{c}: {a['dtype']}{tuple(a['shape'])}" for c, a in i["arrays"].items())
        view = f" view of '{i['view_of']}'" if i.get("view_of") else ""
        return f"<kf.Dataset '{self.name}' {i['length']} rows ({arrays}) on {i['device']}{view}>"

    def __len__(self) -> int:
        return int(self._info["length"])

    @property
    def arrays(self) -> list[str]:
        """Names of the dataset's arrays."""
        return list(self._info["arrays"])

    def info(self) -> dict:
        """``{"name", "length", "arrays": {name: {"dtype", "shape", "bytes"}}, "bytes", "device",
        "view_of", "created", "split"}``, fresh from the runtime."""
        self._info = self.runtime.call("dataset.info", [self.name])
        return self._info

    def delete(self) -> list[str]:
        """Delete the dataset from the runtime (and splits made from it); returns the names deleted."""
        return self.runtime.call("dataset.delete", [self.name])

    def split(self, fraction: float, seed: int = 0, shuffle: bool = True,
              names: tuple[str, str] | None = None) -> tuple[Dataset, Dataset]:
        """Two views of this dataset, without copying it: a ``fraction`` of its rows and the rest.

        Args:
            fraction: share of rows in the first part, in (0, 1).
            seed: seed of the row shuffle (same seed, same split).
            shuffle: False keeps rows in order (first part: the leading rows).
            names: names of the two parts (default ``"<name>.train"``, ``"<name>.val"``).

        Returns:
            ``(first, second)`` datasets.

        Example:
            >>> train, val = ds.split(0.9, seed=0)
        """
        a, b = self.runtime.call("dataset.split", [self.name, float(fraction), int(seed), bool(shuffle),
                                                    list(names) if names else None])
        return Dataset(self.runtime, a), Dataset(self.runtime, b)

    def read(self, array: str, start: int = 0, stop: int | None = None) -> np.ndarray:
        """Rows ``start:stop`` of one of the dataset's arrays, as numpy."""
        return self.runtime.call("dataset.read", [self.name, array, int(start), stop])


def _fingerprint(arrays: dict[str, np.ndarray], chunk_rows: dict[str, int]) -> str:
    h = hashlib.blake2b(digest_size=16)
    for c, a in arrays.items():
        h.update(f"{c}|{a.dtype.str}|{a.shape}|".encode())
        for lo in range(0, a.shape[0], chunk_rows[c]):
            h.update(np.ascontiguousarray(a[lo:lo + chunk_rows[c]]).data)
    return h.hexdigest()


def open_dataset(runtime: Runtime, name: str, arrays: dict | None = None, *, overwrite: bool = False,
                 chunk_bytes: int | None = None, progress: bool | None = None) -> Dataset:
    """Upload ``arrays`` as dataset ``name`` (``rt.dataset``), or re-attach when ``arrays`` is None.

    Args:
        runtime: the runtime.
        name: the dataset's name (letters, digits, ``_``, ``.``, ``-``).
        arrays: ``{name: array}``, all with the same first dimension (one row per example).
        overwrite: replace a dataset of that name with other contents (else AlreadyExistsError).
            A dataset with the same contents is re-attached without uploading.
        chunk_bytes: bytes per upload message (default 64 MiB, within the server's limit).
        progress: show a progress bar (tqdm; default: for uploads over 64 MiB).

    Returns:
        A `Dataset`.

    Raises:
        InvalidArgumentError: arrays disagreeing on their first dimension (naming them), or of
            an unsupported dtype.
        AlreadyExistsError: a different dataset of that name exists and ``overwrite`` is False.
        NotFoundError: re-attaching to a dataset that does not exist.

    Example:
        >>> ds = rt.dataset("digits", {"x": X.astype("float32"), "y": y})
        >>> train, val = ds.split(0.9, seed=0)
    """
    if arrays is None:
        return Dataset(runtime, runtime.call("dataset.info", [name]))
    if not isinstance(arrays, dict) or not arrays:
        raise InvalidArgumentError(f"dataset '{name}': arrays must be a non-empty dict of name -> array; got "
                                   f"{type(arrays).__name__}")
    arrs = {str(c): np.asarray(a) for c, a in arrays.items()}
    for c, a in arrs.items():
        if a.ndim == 0:
            raise InvalidArgumentError(f"dataset '{name}': array '{c}' is a scalar; arrays need a first "
                                       "dimension (one row per example)")
    limit = getattr(runtime._transport, "server_max_message_bytes", None)
    chunk_bytes = int(chunk_bytes or DEFAULT_CHUNK_BYTES)
    if limit:
        chunk_bytes = min(chunk_bytes, max(1 << 16, limit // 2))
    rows = {c: max(1, chunk_bytes // max(1, a[:1].nbytes)) for c, a in arrs.items()}
    specs = {c: {"dtype": a.dtype.str, "shape": list(a.shape)} for c, a in arrs.items()}
    fp = _fingerprint(arrs, rows)
    begun = runtime.call("dataset.begin", [name, specs, {"overwrite": bool(overwrite), "fingerprint": fp}])
    if begun.get("reused"):
        return Dataset(runtime, begun["info"])
    uid = begun["upload"]
    total = sum(a.nbytes for a in arrs.values())
    bar = _progress_bar(name, total) if (progress or (progress is None and total >= PROGRESS_MIN_BYTES)) else None
    try:
        for c, a in arrs.items():
            for lo in range(0, a.shape[0], rows[c]):
                chunk = np.ascontiguousarray(a[lo:lo + rows[c]])
                runtime.call("dataset.put", [uid, c, lo, chunk])
                if bar is not None:
                    bar.update(chunk.nbytes)
        info = runtime.call("dataset.commit", [uid])
    except BaseException:
        try:
            runtime.call("dataset.abort", [uid])
        except Exception:  # the connection may be what failed; the server drops the upload with it  # noqa: BLE001
            pass
        raise
    finally:
        if bar is not None:
            bar.close()
    return Dataset(runtime, info)


def _progress_bar(name: str, total: int) -> Any:
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return None
    return tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=f"upload {name}")

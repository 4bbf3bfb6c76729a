"""A pickle reader that can rebuild numpy arrays and nothing else.

CIFAR-10's python batches are pickles, and unpickling runs whatever callables a file names. This
reader resolves only the globals a plain ndarray needs and refuses every other one with a DataError,
before anything is called.
"""

import pickle
from pathlib import Path

import numpy as np

from nnmark.errors import DataError, first_line

# ndarray.__reduce__ names numpy's _reconstruct under whichever module path this numpy uses.
_RECONSTRUCT = np.empty(0).__reduce__()[0]
_ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"): _RECONSTRUCT,
    ("numpy._core.multiarray", "_reconstruct"): _RECONSTRUCT,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
}


class NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickler whose ``find_class`` allows only the numpy globals listed in ``_ALLOWED``."""

    def __init__(self, file, source: str) -> None:
        super().__init__(file, encoding="bytes")
        self._source = source

    def find_class(self, module: str, name: str) -> object:
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise DataError(
                f"{self._source}: refusing to unpickle {module}.{name}; only numpy array globals are allowed"
            ) from None


def read_numpy_pickle(path: Path, source: str) -> object:
    """Unpickle ``path`` with :class:`NumpyOnlyUnpickler` (bytes encoding, for Python 2 pickles)."""
    with path.open("rb") as fh:
        try:
            return NumpyOnlyUnpickler(fh, source).load()
        except DataError:
            raise
        except Exception as exc:
            raise DataError(f"{source}: not a readable pickle ({first_line(exc)})") from exc

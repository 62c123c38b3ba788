"""mmap_ninja: machine-learning datasets as memory-mapped files, read at random at memory speed.

- ``mmap_ninja.numpy``: fixed-shape arrays (``np.memmap``), growable along the first axis;
- ``mmap_ninja.ragged.RaggedMmap``: arrays of different shapes;
- ``mmap_ninja.string.StringsMmap``: strings;
- ``mmap_ninja.table.TableMmap``: several fields per sample, one map per column;
- ``mmap_ninja.generic.open_existing``: open any of them from its directory.
"""

from ._version import __version__

try:
    from . import _core  # noqa: F401  (imported here to fail early, with the message below)
except ImportError as exc:  # pragma: no cover - exercised only on a broken install
    raise ImportError(
        "mmap_ninja's compiled extension mmap_ninja._core is not built. Install the package "
        "with `pip install .` (or `pip install -e .` for development) from its source tree; "
        "this compiles the extension and needs a C compiler."
    ) from exc

from ._lifecycle import Report
from ._storage import ChangedWhileOpening, durability, set_durability
from .base import Wrapped
from .generic import VERIFY_LIMIT, open_existing, verify
from .numpy import append as np_append
from .numpy import extend as np_extend
from .numpy import extend_dir as np_extend_dir
from .numpy import from_generator as np_from_generator
from .numpy import from_ndarray as np_from_ndarray
from .numpy import open_existing as np_open_existing
from .ragged import RaggedBatch, RaggedMmap
from .string import StringsMmap
from .table import TableMmap

__all__ = [
    "__version__",
    "Wrapped",
    "RaggedMmap",
    "RaggedBatch",
    "StringsMmap",
    "TableMmap",
    "open_existing",
    "verify",
    "VERIFY_LIMIT",
    "Report",
    "ChangedWhileOpening",
    "durability",
    "set_durability",
    "np_from_ndarray",
    "np_from_generator",
    "np_open_existing",
    "np_extend_dir",
    "np_extend",
    "np_append",
]

"""Type stub of the key index kernels (mmap_ninja/_keyindex.pyx)."""

from typing import Sequence

import numpy as np
import numpy.typing as npt

POSITION_BITS: int
TAG_BITS: int
MAX_POSITIONS: int

def hash_keys(data: npt.NDArray[np.uint8], starts: npt.NDArray[np.int64],
              ends: npt.NDArray[np.int64]) -> npt.NDArray[np.uint64]:
    """The hash of each key ``data[starts[i]:ends[i]]``; the offsets are checked first."""

def insert(slots: npt.NDArray[np.uint64], hashes: npt.NDArray[np.uint64], first: int) -> None:
    """Fill a slot for each key ``i`` of ``hashes`` at position ``first + i``."""

def find(slots: npt.NDArray[np.uint64], stored: npt.NDArray[np.uint8], ends: npt.NDArray[np.int64], count: int,
         keys: npt.NDArray[np.uint8], offsets: npt.NDArray[np.int64], source: str = ...) -> npt.NDArray[np.int64]:
    """The position of each key ``keys[offsets[i]:offsets[i + 1]]`` among the first ``count``
    stored (key ``j`` is ``stored[ends[j - 1]:ends[j]]``), -1 where absent."""

def find_strings(slots: npt.NDArray[np.uint64], stored: npt.NDArray[np.uint8], ends: npt.NDArray[np.int64],
                 count: int, keys: Sequence[str], source: str = ...) -> npt.NDArray[np.int64]:
    """``find`` of each ``str`` of ``keys``, read as UTF-8 where Python keeps it (-1 for text
    that is not valid UTF-8)."""

def misplaced(slots: npt.NDArray[np.uint64], stored: npt.NDArray[np.uint8], ends: npt.NDArray[np.int64],
              count: int) -> int:
    """The first stored key the table does not find at its own position; -1 when none."""

"""Type stub of the compiled kernels that build ragged maps (mmap_ninja/_build.pyx)."""

from typing import Any, Callable, List, Optional

import numpy as np
import numpy.typing as npt

Int64Array = npt.NDArray[np.int64]

class PackedSamples:
    """A batch of samples checked for a ragged map of ``dtype`` and laid out for writing."""

    dtype: np.dtype
    counts: Int64Array
    ndims: Int64Array
    dims: Int64Array
    flat: bool
    size: int
    nbytes: int
    def __len__(self) -> int: ...
    @property
    def lengths(self) -> Int64Array:
        """The length of each sample, 0 for a scalar (of a flat batch)."""
    def values(self) -> np.ndarray:
        """All the samples' values back to back, as a new 1-d array."""
    def write_to(self, fd: int, offset: int, checksum: bool = ...) -> Optional[int]:
        """Write the values of all samples, back to back, into the file ``fd`` from byte
        ``offset``; their CRC-32 (``None`` without ``checksum``)."""

def pack(
    samples: List[Any],
    dtype: Any,
    first_index: int = ...,
    convert: Optional[Callable[[Any, np.dtype, int], np.ndarray]] = ...,
    bar: Any = ...,
) -> PackedSamples:
    """``samples`` checked for a ragged map of ``dtype`` and laid out for writing."""

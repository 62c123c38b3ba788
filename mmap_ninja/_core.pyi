"""Type stub of the compiled core (mmap_ninja/_core.pyx)."""

from typing import Any, Callable, Iterator, List, Optional, Tuple, Union

import numpy as np
import numpy.typing as npt

Int64Array = npt.NDArray[np.int64]
Allocator = Callable[[Tuple[int, ...], np.dtype], np.ndarray]

def normalize_index(item: Any, n: int) -> Union[int, Int64Array]:
    """An ``int`` in ``[0, n)`` for an integer scalar, else a new 1-d ``int64`` array of checked
    positions (slice, sequence or array of integers, boolean mask of length ``n``)."""

def batch_index(item: Any, n: int) -> Int64Array:
    """Like ``normalize_index``, always an ``int64`` array (``TypeError`` for a scalar)."""

def prefetch_rows(src: np.ndarray, indices: Int64Array) -> None:
    """Start reading the rows ``src[indices]`` into the page cache in the background."""

def gather_rows(src: np.ndarray, indices: Int64Array, out: np.ndarray) -> np.ndarray:
    """``out[k] = src[indices[k]]`` for a C-contiguous ``src``, without the GIL; returns ``out``."""

def packed_layout(
    offsets: Int64Array, row_elems: int = ..., alloc: Optional[Allocator] = ...
) -> Tuple[npt.NDArray[np.int32], Int64Array, int]:
    """``(cu_seqlens int32 (B + 1,), position_ids int64 (rows,), max_seqlen)`` of samples packed
    back to back at element ``offsets`` (``int64``, ``B + 1``, from 0), rows of ``row_elems``."""

def shuffle_windows(order: Int64Array, window: int, seed: int) -> None:
    """Shuffle ``order`` in place within each run of ``window`` positions (SplitMix64 from ``seed``)."""

def blend_choices(weights: npt.NDArray[np.float64], size: int) -> Tuple[npt.NDArray[np.int32], Int64Array]:
    """The dataset of each position of a blend, and the draws from it before (each within one of its share)."""

class RaggedBatch:
    """Samples copied back to back into one buffer, with their offsets and shapes."""

    values: np.ndarray
    offsets: Int64Array
    shape_values: Int64Array
    shape_offsets: Int64Array
    def __init__(self, values: np.ndarray, offsets: Any, shape_values: Any, shape_offsets: Any) -> None: ...
    def __len__(self) -> int: ...
    def __getitem__(self, k: int) -> Any: ...
    def __iter__(self) -> Iterator[Any]: ...
    def arrays(self) -> List[Any]: ...
    @property
    def shapes(self) -> List[Tuple[int, ...]]: ...
    @property
    def lengths(self) -> Int64Array: ...
    @property
    def nbytes(self) -> int: ...
    def __reduce__(self) -> Any: ...

class RaggedReader:
    """Offset lookup, zero-copy sample views and batch gathers over a ragged map."""

    n: int
    source: str
    def __init__(
        self,
        data: np.ndarray,
        starts: Int64Array,
        ends: Int64Array,
        sizes: Optional[Int64Array] = ...,
        shape_values: Optional[Int64Array] = ...,
        shape_starts: Optional[Int64Array] = ...,
        shape_ends: Optional[Int64Array] = ...,
        source: str = ...,
    ) -> None: ...
    def __len__(self) -> int: ...
    @property
    def dtype(self) -> np.dtype: ...
    def sample(self, i: int) -> Any:
        """Sample ``i`` as a view of the data, or a Python scalar for a 0-d sample."""
    def samples(self, indices: Int64Array) -> List[Any]: ...
    def samples_in(self, item: slice) -> List[Any]: ...
    def prefetch(self, indices: Int64Array) -> None: ...
    def span(self, i: int) -> Tuple[int, int]: ...
    def verify(self, limit: int = ...) -> Tuple[List[str], int]:
        """The first ``limit`` problems of one pass over every sample, and the number of
        unsound samples in all."""
    def take(self, indices: Int64Array, alloc: Optional[Allocator] = ...) -> RaggedBatch: ...
    def padded(
        self,
        indices: Int64Array,
        pad_value: np.ndarray,
        max_len: int = ...,
        out: Optional[np.ndarray] = ...,
        dtype: Any = ...,
        alloc: Optional[Allocator] = ...,
        every_axis: bool = ...,
    ) -> Tuple[np.ndarray, ...]: ...

def pad_arrays(
    arrays: List[np.ndarray], pad_value: Any, max_len: int = ..., dtype: Any = ..., alloc: Optional[Allocator] = ...
) -> Tuple[np.ndarray, Int64Array, Int64Array]:
    """Arrays of one dtype and number of axes padded along every axis into one array, with
    their lengths and shapes."""

class StringsReader:
    """Offset lookup and UTF-8 decoding over a strings map."""

    n: int
    source: str
    def __init__(self, data: Any, starts: Int64Array, ends: Int64Array, source: str = ...) -> None: ...
    def __len__(self) -> int: ...
    def get(self, i: int, as_bytes: bool = ...) -> Union[str, bytes]: ...
    def get_many(self, indices: Int64Array, as_bytes: bool = ...) -> List[Union[str, bytes]]: ...
    def get_in(self, item: slice, as_bytes: bool = ...) -> List[Union[str, bytes]]: ...
    def prefetch(self, indices: Int64Array) -> None: ...
    def span(self, i: int) -> Tuple[int, int]: ...
    def verify(self, limit: int = ..., utf8: bool = ...) -> Tuple[List[str], int]:
        """The first ``limit`` problems of one pass over every string, and the number of
        unsound strings in all."""

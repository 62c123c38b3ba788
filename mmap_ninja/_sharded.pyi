"""Type stub of the compiled readers of sharded maps (mmap_ninja/_sharded.pyx)."""

from typing import Any, List, Optional, Tuple, Union

import numpy as np
import numpy.typing as npt

from ._core import Allocator, RaggedBatch

Int64Array = npt.NDArray[np.int64]

class _Parts:
    """The parts of a sharded map: part ``p`` holds samples ``bounds[p]:bounds[p + 1]``."""

    n: int
    n_parts: int
    source: str
    def __len__(self) -> int: ...
    def locate(self, indices: Int64Array, open_parts: bool = ...) -> Tuple[npt.NDArray[np.int32], Int64Array]:
        """The part of each index and the position in it; opens the parts read unless told not to."""
    def part(self, i: int) -> Tuple[int, int]: ...
    def prefetch(self, indices: Int64Array) -> None:
        """Start reading the samples at ``indices`` into the page cache in the background."""
    def release(self, p: int) -> None:
        """Forget part ``p``'s reader; its next read opens it again."""
    def opened(self) -> List[int]:
        """The parts whose readers are open."""

class ShardedRaggedReader(_Parts):
    """Samples of the ragged parts of a sharded map by their index in the whole map; batches
    gathered from every part in one pass without the GIL."""

    def __init__(self, bounds: Int64Array, opener: Any, dtype: Any, source: str = ...) -> None: ...
    @property
    def dtype(self) -> np.dtype: ...
    def sample(self, i: int) -> Any: ...
    def samples(self, indices: Int64Array) -> List[Any]: ...
    def samples_in(self, item: slice) -> List[Any]: ...
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

class ShardedStringsReader(_Parts):
    """Strings of the parts of a sharded map by their index in the whole map; batches gathered
    from every part in one pass without the GIL."""

    def __init__(self, bounds: Int64Array, opener: Any, source: str = ...) -> None: ...
    def get(self, i: int, as_bytes: bool = ...) -> Union[str, bytes]: ...
    def get_many(self, indices: Int64Array, as_bytes: bool = ...) -> List[Union[str, bytes]]: ...

class ShardedRowsReader(_Parts):
    """Rows of the fixed-shape parts of a sharded map by their index in the whole map; batches
    gathered from every part in one pass without the GIL."""

    row_shape: Optional[Tuple[int, ...]]
    def __init__(self, bounds: Int64Array, opener: Any, source: str = ...) -> None: ...
    @property
    def dtype(self) -> np.dtype: ...
    def row(self, i: int) -> np.ndarray: ...
    def take(self, indices: Int64Array) -> np.ndarray: ...

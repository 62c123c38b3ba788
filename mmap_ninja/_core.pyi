"""Type stub of the compiled core (mmap_ninja/_core.pyx)."""

from typing import Any, List, Optional, Tuple, Union

import numpy as np
import numpy.typing as npt

def normalize_index(item: Any, n: int) -> Union[int, npt.NDArray[np.int64]]:
    """An ``int`` in ``[0, n)`` for an integer scalar, else a new 1-d ``int64`` array of checked
    positions (slice, sequence or array of integers, boolean mask of length ``n``)."""

class RaggedReader:
    n: int
    source: str
    def __init__(
        self,
        data: np.ndarray,
        starts: npt.NDArray[np.int64],
        ends: npt.NDArray[np.int64],
        sizes: Optional[npt.NDArray[np.int64]] = ...,
        shape_values: Optional[npt.NDArray[np.int64]] = ...,
        shape_starts: Optional[npt.NDArray[np.int64]] = ...,
        shape_ends: Optional[npt.NDArray[np.int64]] = ...,
        source: str = ...,
    ) -> None: ...
    def __len__(self) -> int: ...
    def sample(self, i: int) -> Any:
        """Sample ``i`` as a view of the data, or a Python scalar for a 0-d sample."""
    def samples(self, indices: npt.NDArray[np.int64]) -> List[Any]: ...
    def samples_in(self, item: slice) -> List[Any]: ...
    def span(self, i: int) -> Tuple[int, int]: ...

class StringsReader:
    n: int
    source: str
    def __init__(
        self,
        data: Any,
        starts: npt.NDArray[np.int64],
        ends: npt.NDArray[np.int64],
        source: str = ...,
    ) -> None: ...
    def __len__(self) -> int: ...
    def get(self, i: int, as_bytes: bool = ...) -> Union[str, bytes]: ...
    def get_many(self, indices: npt.NDArray[np.int64], as_bytes: bool = ...) -> List[Union[str, bytes]]: ...
    def get_in(self, item: slice, as_bytes: bool = ...) -> List[Union[str, bytes]]: ...
    def span(self, i: int) -> Tuple[int, int]: ...

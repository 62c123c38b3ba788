"""Type stub of the compiled file-system primitives (mmap_ninja/_mapping.pyx)."""

import os
from typing import Optional, Tuple, Union

PathLike = Union[str, "os.PathLike[str]"]

MODES: Tuple[str, ...]

class Mapping:
    """The first ``size`` bytes of a file (all of it for ``None``) mapped into memory, holding
    no file descriptor; ``mode`` ``"r"``, ``"r+"`` or ``"c"``. Supports the buffer protocol."""

    readonly: bool
    mode: str
    path: str
    inode: Tuple[int, int]
    def __init__(
        self, path: PathLike, size: Optional[int] = ..., mode: str = ..., random_access: bool = ...
    ) -> None: ...
    def __len__(self) -> int: ...
    def resident(self) -> Tuple[int, int]:
        """``(resident, total)`` pages of the mapping (``mincore``)."""
    def flush(self) -> None:
        """``msync`` a shared writable mapping."""

def exchange(a: PathLike, b: PathLike) -> None:
    """Swap the directory entries ``a`` and ``b`` atomically (``OSError`` where unsupported)."""

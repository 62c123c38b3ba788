"""What every kind of map shares: the ``Wrapped`` view, map folders, the rule for casting values
into a map's dtype, and the names of mmap_ninja 0.9.0's ``base`` module. Progress bars and
batching of sample streams are ``mmap_ninja._iteration``'s (imported here too)."""

from __future__ import annotations

import contextlib
import os
import re
from copy import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, List, Optional, Tuple, TypeVar, Union

import numpy as np

from . import _meta
from ._iteration import build_in_batches as build_in_batches
from ._iteration import check_positive as check_positive
from ._iteration import in_batches as in_batches
from ._iteration import known_length as known_length
from ._iteration import progress as progress
from .parallel import ParallelBatchCollector as ParallelBatchCollector  # kept: mmap_ninja 0.9.0 had it here
from .parallel import indexable_batches

PathLike = Union[str, "os.PathLike[str]"]
# ``alloc(shape, dtype)``: makes the writable C-contiguous array a batch is written into
Allocator = Callable[[Tuple[int, ...], np.dtype], np.ndarray]
M = TypeVar("M")


class Wrapped:
    """A sequence whose items are ``wrapper_fn(data[i])``, computed lazily on ``[]``.

    ``data`` is anything indexable (a map, a list, an array). With ``copy_before_wrapper_fn``
    (the default) each item is copied first, so that ``wrapper_fn`` may keep or change it
    without touching the mapped file.
    """

    def __init__(self, data: Any, wrapper_fn: Callable[[Any], Any], copy_before_wrapper_fn: bool = True):
        self.data = data
        self.wrapper_fn = wrapper_fn
        self.copy_before_wrapper_fn = copy_before_wrapper_fn

    def __getitem__(self, item):
        sample = self.data[item]
        if self.copy_before_wrapper_fn:
            sample = copy(sample)
        return self.wrapper_fn(sample)

    def __len__(self) -> int:
        return len(self.data)

    def __iter__(self):
        for i in range(len(self)):
            yield self[i]

    def __repr__(self) -> str:
        return f"Wrapped({self.data!r}, wrapper_fn={self.wrapper_fn!r})"


_URL = re.compile(r"[A-Za-z][A-Za-z0-9+.-]+://.+")


def is_url(path: Any) -> bool:
    """Whether ``path`` is a URL (``s3://bucket/prefix``) rather than a local path."""
    return isinstance(path, str) and _URL.fullmatch(path) is not None


def as_dir(out_dir: PathLike) -> Path:
    """A map directory given as ``str`` or any ``os.PathLike``, as an absolute path;
    ``ValueError`` for a URL (maps at URLs are read by ``ShardedMmap(url)`` and written by
    ``mmap_ninja.remote``)."""
    if isinstance(out_dir, (bytes, bytearray)):
        out_dir = os.fsdecode(out_dir)
    if not isinstance(out_dir, (str, os.PathLike)):
        raise TypeError(f"a map directory must be a str or os.PathLike, not {type(out_dir).__name__}")
    if is_url(out_dir):
        raise ValueError(f"{out_dir!r} is a URL, not a local folder: open it with ShardedMmap(url) or "
                         f"mmap_ninja.open_existing(url), write it with mmap_ninja.remote.push (or a Dask or Ray "
                         f"write)")
    # absolute: a rebuilt map's folder is a new one, which a relative path such as "." (the
    # process's working folder, the old one) would not reach
    return Path(os.path.abspath(out_dir))


def map_type(out_dir: Path, must_exist: bool = False) -> Optional[str]:
    """The kind of map at ``out_dir`` (its ``type.ninja``), or ``None`` where there is none.

    ``FileNotFoundError`` when ``must_exist`` and nothing is at ``out_dir``; ``ValueError``
    when ``out_dir`` is a file.
    """
    if not out_dir.exists():
        if must_exist:
            raise FileNotFoundError(f"no map at {out_dir}")
        return None
    if not out_dir.is_dir():
        raise ValueError(f"{out_dir} is a file, not a map directory")
    return _meta.read_type(out_dir)


def cast_values(values: np.ndarray, dtype: np.dtype, what: str) -> np.ndarray:
    """``values`` as ``dtype``, refusing casts that lose more than float rounding.

    Allowed: numpy's safe casts; integer, boolean or integral float values that all fit in an
    integer ``dtype``; and real or integer values into a floating or complex ``dtype``
    (rounded), as long as finite values stay finite. Anything else (fractional floats into
    integers, complex into real, strings into numbers, values that would overflow to infinity,
    ...) raises ``TypeError`` naming ``what``.
    """
    src = values.dtype
    if src == dtype:
        return values
    if np.can_cast(src, dtype, "safe"):
        return values.astype(dtype)
    if dtype.kind == "b" and src.kind in "iuf":
        if values.size and not np.isin(values, (0, 1)).all():
            raise TypeError(f"{what}: only 0 and 1 can be stored as bool")
        return values.astype(dtype)
    if src.kind in "biuf" and dtype.kind in "iu":
        if src.kind == "f" and not np.all(np.isfinite(values) & (values == np.trunc(values))):
            raise TypeError(f"{what}: {src} values with fractions or non-finite values cannot be "
                            f"stored as {dtype}; round or convert them explicitly")
        if values.size:
            info = np.iinfo(dtype)
            lo, hi = values.min(), values.max()
            if lo < info.min or hi > info.max:
                raise TypeError(f"{what}: values in [{lo}, {hi}] do not fit in {dtype}")
        return values.astype(dtype)
    if (src.kind in "biuf" and dtype.kind in "fc") or (src.kind == "c" and dtype.kind == "c"):
        with np.errstate(over="ignore", invalid="ignore"):
            cast = values.astype(dtype)
        overflow = np.isfinite(values) & ~np.isfinite(cast) if src.kind in "fc" else ~np.isfinite(cast)
        if overflow.any():
            first = values.reshape(-1)[np.flatnonzero(overflow.reshape(-1))[0]]
            raise TypeError(f"{what}: the value {first} does not fit in {dtype} (its largest magnitude is "
                            f"{np.finfo(dtype).max}); it would be stored as infinity")
        return cast
    raise TypeError(f"{what}: {src} values cannot be stored as {dtype} without losing "
                    f"information; convert them explicitly (e.g. with .astype({dtype.name!r}))")


def stored_dtype(dtype: Any) -> np.dtype:
    """``np.dtype(dtype)`` in native byte order, checked to be storable (its name round-trips
    through ``dtype.ninja``)."""
    dtype = np.dtype(dtype)
    if not dtype.isnative:
        dtype = dtype.newbyteorder("=")
    _meta.dtype_name(dtype)
    return dtype


def native(arr: np.ndarray) -> np.ndarray:
    """``arr`` in native byte order (the same values)."""
    return arr if arr.dtype.isnative else arr.astype(arr.dtype.newbyteorder("="))


class Legacy090Names:
    """The names that mmap_ninja 0.9.0's ``RaggedMmap`` and ``StringsMmap`` offered, kept for
    code written against it."""

    @property
    def n(self) -> int:
        return len(self)

    @property
    def range(self) -> np.ndarray:
        """``np.arange(len(self))``."""
        return np.arange(len(self))

    def get_single(self, item):
        return self[item]

    get_multiple = get_single

    def set_single(self, key, value) -> None:
        self[key] = value

    set_multiple = set_single


def component_names(given: dict, known: Tuple[str, ...]) -> dict:
    """mmap_ninja 0.9.0's ``starts_key=...`` arguments, checked to be among ``known``."""
    unknown = set(given) - set(known)
    if unknown:
        raise TypeError(f"unexpected keyword arguments: {', '.join(sorted(unknown))}")
    return given


def check_options(verbose: Any = False, wrapper_fn: Any = None, **unsupported: Any) -> None:
    """Refuse arguments that would be silently misread: a ``verbose`` that is not a bool, a
    ``wrapper_fn`` that cannot be called, and mmap_ninja 0.9.0's component names other than
    their defaults (``starts_key="starts"``, ...)."""
    if not isinstance(verbose, (bool, np.bool_)):
        raise TypeError(f"verbose must be True or False, not {verbose!r} (pass other options by keyword)")
    if wrapper_fn is not None and not callable(wrapper_fn):
        raise TypeError(f"wrapper_fn must be callable, not {wrapper_fn!r} (pass other options by keyword)")
    for name, value in unsupported.items():
        default = name[: -len("_key")]
        if value != default:
            raise ValueError(f"{name}={value!r} is not supported: the components of a map keep "
                             f"their standard names ({name}={default!r})")


# Component directories that a map may hold beside its ``.ninja`` files.
MAP_SUBDIRS = ("starts", "ends", "shapes", "flattened_shapes")


def reset_map_dir(out_dir: Path, keep: Tuple[str, ...] = ()) -> None:
    """Make ``out_dir`` an empty place for a new map: create it, or remove the map already
    there (``type.ninja`` first, so that an interrupted removal leaves no map) but for the
    files named in ``keep``. Only a map's own files go: its ``.ninja`` files (and their
    temporary or new versions) and the component folders that hold one; anything else in
    ``out_dir`` stays."""
    import shutil

    out_dir.mkdir(parents=True, exist_ok=True)
    if _meta.TYPE not in keep:
        (out_dir / _meta.TYPE).unlink(missing_ok=True)
    for name in MAP_SUBDIRS:
        component = out_dir / name
        if (component / _meta.DTYPE).exists() or (component / _meta.TYPE).exists():
            shutil.rmtree(component)
    for name in _meta.MAP_FILES:
        for suffix in ("", ".tmp", ".new"):
            if suffix or name not in keep:
                (out_dir / (name + suffix)).unlink(missing_ok=True)


def check_max_len(max_len: Any, out: Any) -> None:
    """The checks of the ``max_len`` and ``out`` arguments of a padded batch."""
    if max_len is not None and (isinstance(max_len, bool) or not isinstance(max_len, (int, np.integer))
                                or max_len < 0):
        raise ValueError(f"max_len must be a non-negative integer, got {max_len!r}")
    if out is not None and not isinstance(out, np.ndarray):
        raise TypeError(f"out must be a numpy array, not {type(out).__name__}")


# -- names of mmap_ninja 0.9.0, kept for code written against it -------------------------------

@dataclass
class BytesSlices:
    """Kept from mmap_ninja 0.9.0: encoded strings laid end to end in ``buffer``, item ``i``
    being ``buffer[starts[i]:ends[i]]``."""

    buffer: bytes
    starts: List[int]
    ends: List[int]


def _build_from_batches(out_dir: Path, batches: Iterable[List[Any]], batch_ctor: Callable[..., Any],
                        extend_fn: Optional[Callable[[Any, List[Any]], Any]], kwargs: dict) -> Any:
    """The map made by ``batch_ctor(out_dir, first batch, **kwargs)`` and grown by
    ``extend_fn(map, batch)`` (``map.extend(batch)`` by default) for each next batch; ``None``
    when there is no batch."""
    def create(batch: List[Any]) -> Any:
        return batch_ctor(out_dir, batch, **kwargs) if batch else None

    def extend(memmap: Any, batch: List[Any]) -> None:
        if extend_fn is not None:
            extend_fn(memmap, batch)
        else:
            memmap.extend(batch)

    out_dir.mkdir(parents=True, exist_ok=True)
    return build_in_batches(batches, create, extend)


def from_generator_base(out_dir: PathLike, sample_generator: Iterable[Any], batch_size: int,
                        batch_ctor: Callable[..., Any], extend_fn: Optional[Callable[[Any, List[Any]], Any]] = None,
                        **kwargs: Any) -> Any:
    """Kept from mmap_ninja 0.9.0: build a map from an iterable, ``batch_size`` samples at a
    time. The first batch goes to ``batch_ctor(out_dir, samples, **kwargs)``, each next one to
    ``extend_fn(map, samples)`` (by default ``map.extend(samples)``); the map ``batch_ctor``
    returned is returned (``None`` for no samples). ``verbose=True`` among ``kwargs`` shows a
    progress bar instead of being passed on."""
    verbose = kwargs.pop("verbose", False)
    with progress(known_length(sample_generator), verbose) as bar:
        def batches() -> Iterator[List[Any]]:
            for batch in in_batches(sample_generator, batch_size):
                bar.update(len(batch))
                yield batch

        return _build_from_batches(Path(out_dir), batches(), batch_ctor, extend_fn, kwargs)


def from_indexable_base(out_dir: PathLike, indexable: Any, batch_size: int, batch_ctor: Callable[..., Any],
                        extend_fn: Optional[Callable[[Any, List[Any]], Any]] = None, n_jobs: Optional[int] = None,
                        verbose: bool = False, **kwargs: Any) -> Any:
    """Kept from mmap_ninja 0.9.0: ``from_generator_base`` over ``indexable[0], indexable[1],
    ...`` (or ``indexable(i)``), read as ``mmap_ninja.parallel.indexable_batches`` reads them:
    until ``len(indexable)`` or the first ``IndexError``/``KeyError``, in ``n_jobs`` worker
    processes when ``n_jobs`` is not ``None`` or 1. No empty batch is passed on."""
    batches = indexable_batches(indexable, batch_size, n_jobs, verbose)
    with contextlib.closing(batches):
        return _build_from_batches(Path(out_dir), batches, batch_ctor, extend_fn, kwargs)

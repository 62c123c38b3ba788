"""Maps built and read with Dask (the ``dask`` extra; ``import mmap_ninja`` never imports Dask).

- ``to_mmap(collection, out_dir)``: every partition of a ``dask.bag.Bag`` (or every
  ``dask.delayed`` object of a list, each giving samples) is written as one part of a sharded
  map by the worker that computes it (``sharded.write_part``); the client then commits the
  parts in the collection's order, in one step (``ShardedMmap.commit_parts``), whatever order
  the tasks finished in (elements that are dicts make a sharded map of tables, one column per
  key). A task that dies mid-part and is retried writes a new part: the
  abandoned one is never committed, so no sample is missing or doubled (``gc`` removes it).
  With ``keyed=True`` the elements are ``(key, sample)`` pairs, and the map is keyed.
- ``read_mmap(path)``: a ``Bag`` of the samples of any map (a table's rows as dicts), for
  preprocessing that starts from a map (one partition per part of a sharded map, else ranges
  of samples).

The workers must see ``out_dir`` at the same path (one host, or a shared file system).
"""

from __future__ import annotations

from typing import Any, Iterable, List, Optional

import numpy as np

from ._extras import require
from .base import PathLike, as_dir, is_url
from .sharded import ShardedMmap, check_joining, write_part

require(__name__, "dask", {"dask": "dask", "dask.bag": "dask", "distributed": "distributed"})


def _write_partition(out_dir: str, samples: Iterable[Any], kind: Optional[str], keyed: bool,
                     storage_options: Optional[dict] = None) -> Optional[dict]:
    """Write one partition as a part; ``None`` for an empty partition. ``keyed``: its elements
    are ``(key, sample)`` pairs."""
    samples = list(samples)
    if not samples:
        return None
    if not keyed:
        return write_part(out_dir, samples, kind, storage_options=storage_options)
    for k, pair in enumerate(samples):
        if not (isinstance(pair, tuple) and len(pair) == 2):
            raise TypeError(f"with keyed=True every element is a (key, sample) pair; element {k} of this partition "
                            f"is a {type(pair).__name__}")
    return write_part(out_dir, [sample for _, sample in samples], kind, keys=[key for key, _ in samples])


def to_mmap(collection: Any, out_dir: PathLike, kind: Optional[str] = None, *, keyed: bool = False,
            storage_options: Optional[dict] = None) -> ShardedMmap:
    """Write ``collection`` (a ``dask.bag.Bag``, or a list of ``dask.delayed`` objects each
    giving an iterable of samples) as the parts of a sharded map at ``out_dir``, one part per
    partition, written on the workers and committed by the client in the collection's order
    (appended to the sharded map already there, if any). ``kind`` as in ``write_part``.
    ``ValueError`` before any task runs when ``out_dir`` holds another kind of map, or files
    but no map.

    ``keyed``: every element is a ``(key, sample)`` pair (``bag.map(lambda r: (r["id"], r["x"]))``),
    the key a ``str``, unique across the whole map (``ValueError`` naming a repeated one when
    the parts are committed, and nothing is committed). Look samples up with ``index_of`` and
    ``by_key``.

    ``out_dir`` may be a URL (``s3://bucket/corpus``, see ``mmap_ninja.remote``): each worker
    writes its part in local scratch and uploads it, and the client commits the next version
    with a conditional put; no disk is shared. ``storage_options`` go to the fsspec filesystem.
    A task that dies mid-upload leaves objects no version lists (``mmap_ninja.remote.gc``)."""
    import dask
    import dask.bag

    out_dir = out_dir if is_url(out_dir) else as_dir(out_dir)
    check_joining(out_dir, keyed)  # before the workers write anything
    if isinstance(collection, dask.bag.Bag):
        partitions = collection.to_delayed()
    else:
        partitions = list(collection)
    tasks = [dask.delayed(_write_partition, pure=False)(str(out_dir), part, kind, keyed, storage_options)
             for part in partitions]
    records = [record for record in dask.compute(*tasks) if record is not None]
    if not records:
        raise ValueError(f"the collection holds no samples, so {out_dir} cannot be created")
    if is_url(out_dir):
        return ShardedMmap.commit_parts(out_dir, records, storage_options=storage_options)
    return ShardedMmap.commit_parts(out_dir, records)


def _read_range(path: str, start: int, stop: int) -> List[Any]:
    from .generic import open_existing

    m = open_existing(path)
    items = m[start:stop]
    if isinstance(items, dict):  # a table's rows: one dict each, of copies
        names = list(items)
        return [{name: value if isinstance(value, str) else np.array(value) for name, value in zip(names, values)}
                for values in zip(*items.values())]
    return [item if isinstance(item, str) else np.array(item) for item in items]


def read_mmap(path: PathLike, npartitions: Optional[int] = None):
    """The samples of the map at ``path`` (any kind) as a ``dask.bag.Bag``: one partition per
    part of a sharded map, else ``npartitions`` ranges (default: about 10,000 samples each)."""
    import dask
    import dask.bag

    from .generic import open_existing

    path = as_dir(path)
    m = open_existing(path)
    n = len(m)
    if isinstance(m, ShardedMmap) and npartitions is None:
        bounds = m.part_bounds
    else:
        count = max(1, npartitions or -(-n // 10_000))
        bounds = np.linspace(0, n, count + 1).astype(np.int64)
    ranges = [(int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:])]
    return dask.bag.from_delayed([dask.delayed(_read_range, pure=True)(str(path), a, b) for a, b in ranges])

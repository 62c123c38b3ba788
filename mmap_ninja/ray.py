"""Maps built and read with Ray Data (the ``ray`` extra; ``import mmap_ninja`` never imports Ray,
and this module needs it).

- ``ds.write_datasink(MmapNinjaDatasink(out_dir))``: every write task writes the samples of its
  blocks as one part of a sharded map (``sharded.write_part``) on the worker that runs it; the
  driver then commits the parts in the order of the write tasks, in one step
  (``ShardedMmap.commit_parts``), whatever order they finished in. With
  ``DataContext.get_current().execution_options.preserve_order = True`` that is the dataset's
  order; without it, the order the write tasks started in, which is the dataset's order when
  the writes run in the tasks that make the blocks (Ray fuses them) but not after a shuffle or
  a repartition. A task whose worker dies mid-part and is retried writes a new part: the
  abandoned one is never committed (``verify`` lists it, ``gc`` removes it), so no sample is
  missing or doubled.
- ``read_mmap(path)``: a ``ray.data.Dataset`` of the samples of any map, one row per sample in
  one column (``"item"``, as ``ray.data.from_items`` names it; a table's rows in its own
  columns): one read task per part of a
  sharded map, else ranges of samples; each task opens the map from its path. The rows come in
  the map's order with ``preserve_order`` (without it, in the order the read tasks finish).

The workers must see the map at the same path (one host, or a shared file system).
"""

from __future__ import annotations

import functools
import itertools
import os
from pathlib import Path
from typing import Any, Dict, Iterable, Iterator, List, Optional

import numpy as np

from . import _keys
from ._extras import require
from ._format.kinds import KINDS, Kind
from .base import PathLike, as_dir, is_url, map_type
from .ragged import RaggedMmap
from .sharded import PARTS, ShardedMmap, check_joining, write_part
from .table import TYPE as TABLE

require(__name__, "ray", {"ray": "ray", "ray.data": "ray", "pyarrow": "pyarrow"})

import ray  # noqa: E402  (the Ray package, not this module; checked above)
import ray.data  # noqa: E402
from ray.data import Datasink, Datasource, ReadTask  # noqa: E402
from ray.data.block import Block, BlockAccessor, BlockMetadata  # noqa: E402
from ray.data.datasource import WriteResult  # noqa: E402

__all__ = ["MmapNinjaDatasink", "MmapNinjaDatasource", "read_mmap"]

COLUMN = "item"
# dtypes that Ray's tensor columns hold (bool, integers, floats); ragged maps of others are read
# as a column of Python objects
_TENSOR_DTYPE_KINDS = "biuf"
_NOTHING = object()


def _pick_column(names: List[str], column: Optional[str], key_column: Optional[str] = None) -> str:
    """``column`` checked against the columns ``names`` of a block, or the only column besides
    ``key_column`` (which must be there too)."""
    if key_column is not None:
        if key_column not in names:
            raise ValueError(f"the dataset has no column {key_column!r} (key_column); its columns are {names}")
        if column == key_column:
            raise ValueError(f"column and key_column both name {column!r}: the keys come from another column")
    if column is None:
        others = [name for name in names if name != key_column]
        if len(others) != 1:
            raise ValueError(f"the dataset has the columns {names}: pass column= to name the one holding the samples")
        return others[0]
    if column not in names:
        raise ValueError(f"the dataset has no column {column!r}; its columns are {names}")
    return column


def _data_columns(names: List[str], column: Optional[str], key_column: Optional[str]) -> List[str]:
    """The columns a sink writes: ``[column]`` (checked), else every column but ``key_column``."""
    if column is not None or len([name for name in names if name != key_column]) <= 1:
        return [_pick_column(names, column, key_column)]
    if key_column is not None and key_column not in names:
        raise ValueError(f"the dataset has no column {key_column!r} (key_column); its columns are {names}")
    return [name for name in names if name != key_column]


def _rows_of(block: Block, column: Optional[str], key_column: Optional[str] = None) -> List[Any]:
    """The samples of ``block``: those of ``column`` (or of its only column besides
    ``key_column``), else one dict per row of every column but ``key_column``."""
    accessor = BlockAccessor.for_block(block)
    if accessor.num_rows() == 0:
        return []
    names = _data_columns(list(accessor.column_names()), column, key_column)
    if column is not None or len(names) == 1:
        return _samples_of(block, names[0], key_column)
    values = [_samples_of(block, name, key_column) for name in names]
    return [dict(zip(names, row)) for row in zip(*values)]


def _samples_of(block: Block, column: Optional[str], key_column: Optional[str] = None) -> List[Any]:
    """The samples of ``column`` in ``block`` (arrow or pandas): arrays, numpy scalars or
    strings, one per row."""
    import pyarrow as pa
    from ray.data.extensions import ArrowPythonObjectType

    accessor = BlockAccessor.for_block(block)
    if accessor.num_rows() == 0:
        return []
    name = _pick_column(list(accessor.column_names()), column, key_column)
    if isinstance(block, pa.Table) and isinstance(block.schema.field(name).type, ArrowPythonObjectType):
        return block.column(name).to_pylist()  # Python objects as they are, not coerced by numpy
    return list(accessor.to_numpy(name))  # rows of a tensor column, elements of a scalar or string column


def _keys_of(block: Block, key_column: str) -> List[Any]:
    """The keys in ``key_column`` of ``block``, one per row, as Python objects (``str`` when the
    column holds strings; anything else is refused by ``write_part``)."""
    accessor = BlockAccessor.for_block(block)
    if accessor.num_rows() == 0:
        return []
    return [key.item() if isinstance(key, np.generic) else key for key in accessor.to_numpy(key_column)]


class MmapNinjaDatasink(Datasink):
    """A Ray Data sink writing the rows of a dataset into the sharded map at ``out_dir``
    (created, or appended to): ``ds.write_datasink(MmapNinjaDatasink(out_dir))``.

    Each write task writes its rows as one part; the driver commits the parts in the order of
    the write tasks once all succeeded, and nothing if the write fails (its parts are left
    uncommitted: never read, removed by ``ShardedMmap.gc``). Tasks with no rows write no part.

    ``column``: the column holding the samples. ``None``: the dataset's only column (besides
    ``key_column``), or, when it has several, every one of them: each part is then a table
    (``mmap_ninja.table``) of those columns, their kinds inferred from the first row (arrays
    ragged, scalars numpy, ``str`` strings), and the map reads dict batches. Samples
    are numpy arrays of any shape and dtype (ragged), ``str`` (strings), or arrays of one shape
    with ``kind="numpy"``; ``kind`` as in ``sharded.write_part``. ``min_rows_per_part``: Ray
    bundles blocks until a write task has at least that many rows (the last may have fewer), for
    parts larger than the dataset's blocks. After the write, ``committed`` holds the names of
    the parts committed.

    ``key_column``: a column of ``str`` holding each row's key, unique across the whole map
    (a repeated key raises ``ValueError`` naming it when the parts are committed, and nothing
    is committed); the map then finds samples by key (``index_of``, ``by_key``).

    ``out_dir`` may be a URL (``s3://bucket/corpus``, see ``mmap_ninja.remote``): each task
    writes its part in local scratch and uploads it, and the driver commits the next version
    with a conditional put; ``storage_options`` go to the fsspec filesystem.
    """

    def __init__(self, out_dir: PathLike, column: Optional[str] = None, kind: Optional[str] = None, *,
                 key_column: Optional[str] = None, min_rows_per_part: Optional[int] = None,
                 storage_options: Optional[Dict[str, Any]] = None):
        self.out_dir = out_dir if is_url(out_dir) else str(as_dir(out_dir))
        self.storage_options = storage_options
        self.column = column
        self.kind = kind
        self.key_column = key_column
        self.min_rows_per_part = min_rows_per_part
        self.committed: List[str] = []

    @property
    def min_rows_per_write(self) -> Optional[int]:
        return self.min_rows_per_part

    def on_write_start(self, schema: Optional[Any] = None) -> None:
        """Check the column on the driver before any task runs, when Ray knows the schema."""
        names = getattr(schema, "names", None)
        if names:
            _data_columns(list(names), self.column, self.key_column)
        check_joining(self.out_dir, self.key_column is not None)  # another kind of map, files, keys

    def write(self, blocks: Iterable[Block], ctx: Any) -> Optional[Dict[str, Any]]:
        """Write the rows of this task's blocks as one part (on the worker). Returns the part's
        record with the task's index (``ctx.task_idx``, which a retry keeps), or ``None`` when
        the task has no rows. Ray hands the results to the driver in the order the tasks
        finished, unless ``preserve_order``: the index puts them back in the tasks' order."""
        keys = None
        if self.key_column is not None:
            keys = _keys.KeysAlongside()
            blocks = self._keys_taken(blocks, keys)
        samples = (sample for block in blocks for sample in _rows_of(block, self.column, self.key_column))
        first = next(samples, _NOTHING)
        if first is _NOTHING:
            return None
        # block by block: the keys of each block are taken as it is read, before its samples
        record = write_part(self.out_dir, itertools.chain([first], samples), self.kind,
                            keys=keys, storage_options=self.storage_options)
        return {"task": ctx.task_idx, "record": record}

    def _keys_taken(self, blocks: Iterable[Block], keys: _keys.KeysAlongside) -> Iterator[Block]:
        """``blocks``, each one's keys put in ``keys`` before it is handed on."""
        for block in blocks:
            keys.pending.extend(_keys_of(block, self.key_column))
            yield block

    def on_write_complete(self, write_result: WriteResult) -> None:
        """Commit every task's part, in the order of the tasks, in one step (on the driver)."""
        results = sorted((r for r in write_result.write_returns if r is not None), key=lambda r: r["task"])
        records = [r["record"] for r in results]
        if not records:
            if is_url(self.out_dir):
                from .remote import Store, latest_manifest

                if latest_manifest(Store(self.out_dir, self.storage_options)) is None:
                    raise ValueError(f"the dataset holds no samples, so {self.out_dir} cannot be created")
            elif map_type(Path(self.out_dir)) is None:
                raise ValueError(f"the dataset holds no samples, so {self.out_dir} cannot be created")
            self.committed = []
            return
        if is_url(self.out_dir):
            ShardedMmap.commit_parts(self.out_dir, records, storage_options=self.storage_options)
        else:
            ShardedMmap.commit_parts(self.out_dir, records)
        self.committed = [record["name"] for record in records]

    def on_write_failed(self, error: Exception) -> None:
        """Commit nothing: the parts written so far stay uncommitted (``ShardedMmap.gc``)."""
        self.committed = []

    def get_name(self) -> str:
        return "MmapNinja"


def _ragged_layout(maps: List[RaggedMmap]) -> str:
    """How ragged samples travel in Ray: ``"tensor"`` (Ray's variable-shaped tensor column)
    when every sample has the same number of axes (at least 1) and a dtype Ray's tensors hold,
    ``"scalar"`` (a plain column) when every sample is a scalar, else ``"object"`` (a column of
    pickled arrays). One layout for the whole map, so that every block has the same type."""
    maps = [m for m in maps if len(m)]
    if not maps:
        return "tensor"
    ranks = set()
    for m in maps:
        if m.shapes_are_flat:  # 1-d samples and scalars: a scalar is a length of 0 with one element
            lengths = np.asarray(m.shapes).reshape(-1)
            scalar = (lengths == 0) & (np.asarray(m.flattened_shapes) == 1)
            ranks.update({0} if scalar.all() else {1} if not scalar.any() else {0, 1})
        else:
            ranks.update(np.unique(np.asarray(m.shapes.flattened_shapes)).tolist())
        if len(ranks) > 1:
            return "object"
    if ranks == {0}:
        return "scalar"
    dtype = maps[0].dtype
    return "tensor" if dtype is not None and dtype.kind in _TENSOR_DTYPE_KINDS else "object"


def _block(m: Any, kind: Kind, start: int, stop: int, column: str, layout: str) -> Block:
    """The samples ``[start, stop)`` of the open map ``m`` of ``kind`` as one block, copied out
    of the mapped files (no block refers to them)."""
    import pyarrow as pa
    from ray.data.extensions import ArrowPythonObjectArray, ArrowVariableShapedTensorArray

    if kind.text:
        values = pa.array(m[start:stop], type=pa.string())
    elif kind.rows:  # Ray's own conversion: a plain column, or a fixed-shape tensor column
        return BlockAccessor.batch_to_block({column: np.array(m[start:stop])})
    else:
        dtype = m.dtype
        samples = m.take(np.arange(start, stop)).arrays()  # copies in one new buffer
        if layout == "scalar":
            return BlockAccessor.batch_to_block({column: np.array(samples, dtype=dtype)})
        samples = [np.asarray(s, dtype=dtype) for s in samples]  # scalars among arrays as 0-d arrays
        if layout == "tensor":
            values = ArrowVariableShapedTensorArray.from_numpy(samples)
        else:
            values = ArrowPythonObjectArray.from_objects(samples)
    return pa.Table.from_arrays([values], names=[column])


def _table_block(m: Any, kinds: Dict[str, str], start: int, stop: int, layouts: Dict[str, str]) -> Block:
    """The rows ``[start, stop)`` of the table (or map of tables) ``m`` as one block of a
    column per column of the table, each as ``_block`` makes that of a map of its kind."""
    import pyarrow as pa

    columns = [_block(m[name], KINDS[kind], start, stop, name, layouts[name]) for name, kind in kinds.items()]
    return pa.Table.from_arrays([table.column(0) for table in columns],
                                schema=pa.schema([table.schema.field(0) for table in columns]))


def _read_range(path: str, start: int, stop: int, column: str, layout: Any, rows_per_block: int) -> Iterator[Block]:
    """The samples ``[start, stop)`` of the map at ``path`` as blocks of at most
    ``rows_per_block`` rows (run by a read task, which opens the map itself); ``layout``: a
    dict per column for a table or a map of tables."""
    from .generic import open_existing

    m = open_existing(path)
    if isinstance(layout, dict):
        for a in range(start, stop, rows_per_block):
            yield _table_block(m, m.schema, a, min(stop, a + rows_per_block), layout)
        return
    kind = KINDS[m.kind if isinstance(m, ShardedMmap) else map_type(Path(path))]
    for a in range(start, stop, rows_per_block):
        yield _block(m, kind, a, min(stop, a + rows_per_block), column, layout)


def _layouts(m: Any, out_dir: Path) -> Dict[str, str]:
    """How each column of the table (or map of tables) ``m`` travels (see ``_ragged_layout``)."""
    layouts = {}
    for name, kind in m.schema.items():
        if not KINDS[kind].arrays:
            layouts[name] = "plain"
        elif isinstance(m, ShardedMmap):
            layouts[name] = _ragged_layout([RaggedMmap(out_dir / PARTS / part / "columns" / name)
                                            for part, length in zip(m.part_names, np.diff(m.part_bounds)) if length])
        else:
            layouts[name] = _ragged_layout([m[name]])
    return layouts


def _size_on_disk(path: Path) -> int:
    """Bytes of the files under ``path``: the datasource's estimate of the data's size."""
    total = 0
    for root, _, files in os.walk(path):
        for name in files:
            try:
                total += os.path.getsize(os.path.join(root, name))
            except OSError:
                pass
    return total


class MmapNinjaDatasource(Datasource):
    """A Ray Data source of the samples of the map at ``path`` (any kind), one row per sample
    in ``column``: one read task per part of a sharded map (unless ``num_tasks``), else
    ``num_tasks`` (default: Ray's parallelism) ranges of samples. Only the path and a range
    travel to a task, which opens the map and reads its samples in blocks of at most
    ``DataContext.target_max_block_size`` bytes (about).

    A table, or a sharded map of tables, gives a column per column of the table (``column`` is
    not used), each as below for a map of its kind. The column, by kind of map:

    - numpy map of shape ``(n, *shape)``: a plain column of its dtype when ``shape`` is ``()``,
      else Ray's fixed-shape tensor column (each row an array of ``shape``);
    - strings map: a string column (rows are ``str``);
    - ragged map: Ray's variable-shaped tensor column (each row an array of its own shape, of
      the map's dtype) when every sample has the same number of axes, at least 1, and a bool,
      integer or float dtype; a plain column when every sample is a scalar; else (samples of
      several ranks, other dtypes) a column of Python objects, each sample an array (a 0-d
      array for a scalar). The driver decides this once for the whole map from its stored
      shapes, so that every block has the same type.
    """

    def __init__(self, path: PathLike, column: str = COLUMN, num_tasks: Optional[int] = None):
        super().__init__()
        from .generic import open_existing

        out_dir = as_dir(path)
        self._path = str(out_dir)
        self._column = column
        self._num_tasks = num_tasks
        m = open_existing(out_dir)
        self._n = len(m)
        self._bounds = m.part_bounds if isinstance(m, ShardedMmap) else None
        type_name = m.kind if self._bounds is not None else map_type(out_dir)
        self._layout: Any = "plain"
        if type_name == TABLE:
            self._layout = _layouts(m, out_dir)
        elif KINDS[type_name].arrays:
            parts = [RaggedMmap(out_dir / PARTS / name) for name in m.part_names] if self._bounds is not None else [m]
            self._layout = _ragged_layout(parts)
        del m
        self._size = _size_on_disk(out_dir)

    def estimate_inmemory_data_size(self) -> Optional[int]:
        return self._size

    def get_read_tasks(self, parallelism: int, per_task_row_limit: Optional[int] = None,
                       data_context: Optional[Any] = None) -> List[ReadTask]:
        n = self._n
        if n == 0:
            return []
        if self._bounds is not None and self._num_tasks is None:
            bounds = self._bounds
        else:
            count = min(n, max(1, self._num_tasks or parallelism))
            bounds = np.linspace(0, n, count + 1).astype(np.int64)
        per_sample = max(1, self._size // n)
        context = data_context or ray.data.DataContext.get_current()
        target = context.target_max_block_size
        rows_per_block = n if target is None else max(1, target // per_sample)
        tasks = []
        for a, b in zip(bounds[:-1].tolist(), bounds[1:].tolist()):
            if b <= a:
                continue  # an empty part
            metadata = BlockMetadata(num_rows=b - a, size_bytes=per_sample * (b - a), input_files=None,
                                     exec_stats=None)
            read = functools.partial(_read_range, self._path, a, b, self._column, self._layout, rows_per_block)
            tasks.append(ReadTask(read, metadata, per_task_row_limit=per_task_row_limit))
        return tasks

    def get_name(self) -> str:
        return "MmapNinja"


def read_mmap(path: PathLike, *, column: str = COLUMN, override_num_blocks: Optional[int] = None,
              **read_args: Any) -> "ray.data.Dataset":
    """The samples of the map at ``path`` (any kind) as a ``ray.data.Dataset`` with one column,
    ``column`` (see ``MmapNinjaDatasource`` for its type; a table's columns for a table or a
    sharded map of tables): one read task per part of a sharded
    map, else ranges of samples; ``override_num_blocks`` asks for that many ranges instead.
    Rows are in the map's order when ``DataContext.execution_options.preserve_order`` is set.
    ``read_args`` go to ``ray.data.read_datasource`` (``concurrency``, ``num_cpus``, ...)."""
    source = MmapNinjaDatasource(path, column, num_tasks=override_num_blocks)
    return ray.data.read_datasource(source, override_num_blocks=override_num_blocks, **read_args)

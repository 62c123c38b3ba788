"""The public names of mmap_ninja 0.9.0 kept for code written against it:
``mmap_ninja.base.from_generator_base``, ``from_indexable_base``, ``BytesSlices`` and
``ParallelBatchCollector``, ``mmap_ninja.parallel.make_indexable``, ``ParallelBatchCollector`` and
``EXHAUSTED``, ``mmap_ninja.numpy.NumpyBytesSlices`` and ``from_generator_base``.

Each imports from the module 0.9.0 had it in, takes the same arguments and gives the same
results as in 0.9.0, which runs in a subprocess (the ``ref090`` fixture): the same batches are
handed to the same callbacks, and maps built here with the kept helpers read back in 0.9.0.
Two differences are fixes, tested here alone: no empty batch is handed on (0.9.0 passed one
when an indexable of unknown length ended on a batch boundary, or had no sample), and the
reading stops at ``len(indexable)`` even when indexing past it would not raise.
"""

from __future__ import annotations

import importlib
import json
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict, List

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mmap_ninja import base, parallel
from mmap_ninja import numpy as np_ninja
from mmap_ninja.ragged import RaggedMmap
from mmap_ninja.string import StringsMmap

KEPT = [
    "mmap_ninja.base.from_generator_base",
    "mmap_ninja.base.from_indexable_base",
    "mmap_ninja.base.BytesSlices",
    "mmap_ninja.base.ParallelBatchCollector",
    "mmap_ninja.parallel.make_indexable",
    "mmap_ninja.parallel.ParallelBatchCollector",
    "mmap_ninja.numpy.NumpyBytesSlices",
    "mmap_ninja.numpy.from_generator_base",
]

# Run here and under 0.9.0: a JSON description of a function or class, and the public functions
# and classes of 0.9.0's modules, with the module each comes from.
_DESCRIBE = """
import dataclasses, importlib, inspect

def params(fn):
    return [[p.name, p.kind.name, None if p.default is inspect.Parameter.empty else repr(p.default)]
            for p in inspect.signature(fn).parameters.values()]

def describe(obj):
    if dataclasses.is_dataclass(obj):
        return {"fields": [[f.name, f.default is dataclasses.MISSING] for f in dataclasses.fields(obj)],
                "init": params(obj)}
    if inspect.isclass(obj):
        methods = {name: params(getattr(obj, name)) for name in vars(obj)
                   if not name.startswith("_") and callable(getattr(obj, name))}
        return {"init": params(obj), "methods": methods}
    return {"params": params(obj)}

def public_names(modules):
    found = {}
    for module_name in modules:
        module = importlib.import_module(module_name)
        for name, obj in vars(module).items():
            if name.startswith("_") or not (inspect.isfunction(obj) or inspect.isclass(obj)):
                continue
            if getattr(obj, "__module__", "").split(".")[0] == "mmap_ninja":
                found[module_name + "." + name] = obj.__module__
    return found
"""
_MODULES_090 = ["mmap_ninja", "mmap_ninja.base", "mmap_ninja.numpy", "mmap_ninja.ragged", "mmap_ninja.string",
                "mmap_ninja.parallel", "mmap_ninja.generic"]
_here: Dict[str, Any] = {}
exec(_DESCRIBE, _here)


def _resolve(dotted: str) -> Any:
    module, name = dotted.rsplit(".", 1)
    return getattr(importlib.import_module(module), name)


def _run_090(ref090, tmp_path: Path, code: str, **values: Any) -> Any:
    """``code`` run under 0.9.0 in ``tmp_path``, with ``values`` (JSON) as globals."""
    prelude = "".join(f"{name} = json.loads({json.dumps(value)!r})\n" for name, value in values.items())
    return ref090.run(prelude + code, tmp_path)


# -- the names and their signatures ------------------------------------------------------------


def test_every_public_function_and_class_of_090_in_these_modules_imports_with_its_signature(ref090, tmp_path):
    """Every public function and class that 0.9.0 defined in one of its modules imports from
    that module here, and so do the ones that its modules imported from elsewhere; the kept
    names have 0.9.0's parameters (names, kinds and defaults), fields
    and methods."""
    code = _DESCRIBE + """
found = public_names(MODULES)
result = {"names": found, "kept": {}}
for dotted in KEPT:
    module, name = dotted.rsplit(".", 1)
    result["kept"][dotted] = describe(getattr(importlib.import_module(module), name))
"""
    ref = _run_090(ref090, tmp_path, code, MODULES=_MODULES_090, KEPT=KEPT)
    assert set(KEPT) <= set(ref["names"])
    own_modules = {"mmap_ninja", "mmap_ninja.base", "mmap_ninja.numpy", "mmap_ninja.parallel", "mmap_ninja.string",
                   "mmap_ninja.generic"}
    expected = [dotted for dotted, home in ref["names"].items()
                if dotted.rsplit(".", 1)[0] in own_modules or dotted.rsplit(".", 1)[0] == home]
    missing = []
    for dotted in expected:
        try:
            _resolve(dotted)
        except AttributeError:
            missing.append(dotted)
    assert not missing, f"names of mmap_ninja 0.9.0 that do not import: {missing}"
    for dotted, ref_description in ref["kept"].items():
        description = _here["describe"](_resolve(dotted))
        if "methods" in ref_description:
            assert description["init"] == ref_description["init"], dotted
            for method, params in ref_description["methods"].items():
                assert description["methods"].get(method) == params, f"{dotted}.{method}"
        else:
            assert description == ref_description, dotted


def test_kept_names_import_first_thing_in_a_new_interpreter():
    """The names ``base`` keeps from ``parallel`` (which imports ``base``) are there when
    ``base`` is the first module imported, and are the same objects as ``parallel``'s."""
    code = ("from mmap_ninja.base import ParallelBatchCollector, from_indexable_base, from_generator_base, "
            "BytesSlices\n"
            "from mmap_ninja.numpy import NumpyBytesSlices, from_generator_base as g\n"
            "from mmap_ninja import parallel\n"
            "assert ParallelBatchCollector is parallel.ParallelBatchCollector and g is from_generator_base\n"
            "from mmap_ninja.parallel import make_indexable, EXHAUSTED\n"
            "print('ok')")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr
    assert base.ParallelBatchCollector is parallel.ParallelBatchCollector
    assert np_ninja.from_generator_base is base.from_generator_base
    with pytest.raises(AttributeError):
        base.no_such_name  # noqa: B018
    assert not hasattr(base, "no_such_name")


# -- BytesSlices, NumpyBytesSlices ---------------------------------------------------------------

_SLICES = """
import numpy as np
from mmap_ninja.base import BytesSlices
from mmap_ninja.numpy import NumpyBytesSlices

def slices():
    a = BytesSlices("héllo wörld".encode(), [0, 6], [6, 13])
    b = NumpyBytesSlices(np.arange(6, dtype=np.int32), [0, 2], [2, 6], [2, 4], [(2,), (2, 2)])
    return a, b

a, b = slices()
a2, b2 = slices()
result = {"repr": [repr(a), repr(b)], "equal": a == a2, "unequal": a == BytesSlices(b"", [], []),
          "args": repr(BytesSlices(buffer=b"x", starts=[0], ends=[1])),
          "tuple": repr(NumpyBytesSlices(*[getattr(b2, f) for f in ("buffer", "starts", "ends",
                                                                    "flattened_shapes", "shapes")]))}
"""


def test_bytes_slices_dataclasses_repr_and_compare_as_in_090(ref090, tmp_path):
    ref = _run_090(ref090, tmp_path, _SLICES)
    here: Dict[str, Any] = {}
    exec(_SLICES, here)
    assert here["result"] == ref
    assert ref["equal"] is True and ref["unequal"] is False


# -- from_generator_base ---------------------------------------------------------------------

# A map that records what it is given, and an extend_fn that records on it.
_RECORDER = """
import os

class Recorder:
    def __init__(self, out_dir, samples, **kwargs):
        self.calls = [["ctor", list(samples), os.path.basename(str(out_dir)), os.path.isdir(out_dir), kwargs]]

    def extend(self, samples):
        self.calls.append(["extend", list(samples)])

def extend_fn(memmap, samples):
    memmap.calls.append(["extend_fn", list(samples)])

def calls_of(memmap):
    return None if memmap is None else memmap.calls
"""

_GENERATOR_CASES = [[n, batch_size, use_fn] for n in range(8) for batch_size in range(1, 5) for use_fn in (0, 1)]

_FROM_GENERATOR = _RECORDER + """
from mmap_ninja.base import from_generator_base

result = []
for n, batch_size, use_fn in CASES:
    memmap = from_generator_base(f"gen-{n}-{batch_size}-{use_fn}", (i * i for i in range(n)), batch_size, Recorder,
                                 extend_fn=extend_fn if use_fn else None, verbose=bool(n % 2), tag=n)
    result.append(calls_of(memmap))
"""


def test_from_generator_base_hands_the_same_batches_to_the_same_callbacks_as_090(ref090, tmp_path):
    (tmp_path / "ref").mkdir()
    (tmp_path / "here").mkdir()
    ref = _run_090(ref090, tmp_path / "ref", _FROM_GENERATOR, CASES=_GENERATOR_CASES)
    here: Dict[str, Any] = {"CASES": _GENERATOR_CASES}
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(tmp_path / "here")
        exec(_FROM_GENERATOR, here)
    assert json.loads(json.dumps(here["result"])) == ref
    assert ref[0] is None and ref[-1][0] == ["ctor", [0, 1, 4, 9], "gen-7-4-1", True, {"tag": 7}]


def _expected_calls(samples: List[Any], batch_size: int, extend_name: str, ctor_tail: List[Any]) -> Any:
    """The calls 0.9.0 makes: the constructor with the first batch, then an extend per batch."""
    batches = [samples[i:i + batch_size] for i in range(0, len(samples), batch_size)]
    if not batches:
        return None
    return [["ctor", batches[0], *ctor_tail]] + [[extend_name, batch] for batch in batches[1:]]


_recorder: Dict[str, Any] = {}
exec(_RECORDER, _recorder)


@settings(max_examples=60, deadline=None)
@given(samples=st.lists(st.integers(), max_size=30), batch_size=st.integers(1, 8), use_fn=st.booleans())
def test_from_generator_base_makes_one_constructor_call_then_one_extend_per_batch(tmp_path_factory, samples,
                                                                                  batch_size, use_fn):
    out_dir = tmp_path_factory.mktemp("gen") / "out"
    memmap = base.from_generator_base(out_dir, iter(samples), batch_size, _recorder["Recorder"],
                                      extend_fn=_recorder["extend_fn"] if use_fn else None, a=1)
    want = _expected_calls(samples, batch_size, "extend_fn" if use_fn else "extend", ["out", True, {"a": 1}])
    assert _recorder["calls_of"](memmap) == want
    assert out_dir.is_dir()


# -- from_indexable_base and ParallelBatchCollector ------------------------------------------------

# Indexables of n samples: a list, a dict, a function that raises IndexError past the end (no
# length), and the same through make_indexable with and without the length.
_INDEXABLES = """
from mmap_ninja.parallel import make_indexable

def function_of(n):
    def sample(i):
        if i >= n:
            raise IndexError(i)
        return i * i + 1
    return sample

def indexable(kind, n):
    if kind == "list":
        return [i * i + 1 for i in range(n)]
    if kind == "dict":
        return {i: i * i + 1 for i in range(n)}
    if kind == "function":
        return function_of(n)
    if kind == "unsized":
        return make_indexable(function_of(n))
    return make_indexable(function_of(n), n)
"""
_KINDS = ["list", "dict", "function", "unsized", "sized"]
_INDEXABLE_CASES = [[kind, n, batch_size] for kind in _KINDS for n in range(7) for batch_size in range(1, 4)]

_FROM_INDEXABLE = _RECORDER + _INDEXABLES + """
from mmap_ninja.base import from_indexable_base
from mmap_ninja.parallel import ParallelBatchCollector

result = []
for kind, n, batch_size in CASES:
    memmap = from_indexable_base(f"idx-{kind}-{n}-{batch_size}", indexable(kind, n), batch_size, Recorder,
                                 n_jobs=N_JOBS, tag=kind)
    collector = ParallelBatchCollector(indexable(kind, n), batch_size, n_jobs=N_JOBS)
    _, length, num_batches = collector.verify(indexable(kind, n), batch_size)
    batches = list(collector.batches())
    result.append({"calls": calls_of(memmap), "batches": batches, "length": length, "num_batches": num_batches,
                   "exhausted": collector.exhausted(), "completed": collector.completed_batches()})
"""


def _without_empty_batches(read: Dict[str, Any]) -> Dict[str, Any]:
    """What 0.9.0 read, but the empty batches it handed on (see the module's docstring)."""
    calls = [call for call in read["calls"] or [] if call[1]]
    return {**read, "calls": calls or None, "batches": [batch for batch in read["batches"] if batch]}


def _indexable_here(cases: List[List[Any]], n_jobs: Any, cwd: Path) -> List[Dict[str, Any]]:
    here: Dict[str, Any] = {"CASES": cases, "N_JOBS": n_jobs}
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(cwd)
        exec(_FROM_INDEXABLE, here)
    return json.loads(json.dumps(here["result"]))


@pytest.fixture(scope="module")
def indexable_reads_090(ref090, tmp_path_factory) -> List[Dict[str, Any]]:
    return _run_090(ref090, tmp_path_factory.mktemp("ref"), _FROM_INDEXABLE, CASES=_INDEXABLE_CASES, N_JOBS=None)


def test_from_indexable_base_and_collector_give_the_batches_of_090(indexable_reads_090, tmp_path):
    """Same calls and batches as 0.9.0 for lists, dicts, functions and ``make_indexable``, of
    every length up to 6 and batch sizes 1 to 3, but the empty batches 0.9.0 also handed on;
    ``verify``, ``exhausted`` and ``completed_batches`` agree too."""
    here = _indexable_here(_INDEXABLE_CASES, None, tmp_path)
    empties = 0
    for case, mine, ref in zip(_INDEXABLE_CASES, here, indexable_reads_090):
        assert mine == _without_empty_batches(ref), case
        empties += mine != ref
        assert all(call[1] for call in mine["calls"] or []) and all(mine["batches"]), case
    assert empties  # the cases where 0.9.0 handed on an empty batch are among them
    known = [read for case, read in zip(_INDEXABLE_CASES, here) if case[0] in ("list", "dict", "sized") and case[1]]
    assert all(read["completed"] and read["num_batches"] == len(read["batches"]) for read in known)


def test_reading_in_two_worker_processes_gives_the_batches_of_090(indexable_reads_090, tmp_path):
    chosen = [i for i, (kind, n, batch_size) in enumerate(_INDEXABLE_CASES) if n in (0, 4, 5) and batch_size != 1]
    here = _indexable_here([_INDEXABLE_CASES[i] for i in chosen], 2, tmp_path)
    for i, mine in zip(chosen, here):
        assert mine == _without_empty_batches(indexable_reads_090[i]), _INDEXABLE_CASES[i]


@settings(max_examples=60, deadline=None)
@given(samples=st.lists(st.integers(), max_size=30), batch_size=st.integers(1, 8),
       kind=st.sampled_from(["list", "sized", "unsized"]))
def test_collector_batches_are_the_samples_in_order_cut_every_batch_size(samples, batch_size, kind):
    def sample(i):
        return samples[i]

    indexable = {"list": samples, "sized": parallel.make_indexable(sample, len(samples)),
                 "unsized": parallel.make_indexable(sample)}[kind]
    collector = parallel.ParallelBatchCollector(indexable, batch_size)
    batches = list(collector.batches())
    assert batches == [samples[i:i + batch_size] for i in range(0, len(samples), batch_size)]
    assert collector.exhausted() and collector.collect_batch() == []
    length = None if kind == "unsized" else len(samples)
    assert collector.verify(indexable, batch_size)[1:] == (length, None if length is None else len(batches))


def test_reading_stops_at_the_length_of_make_indexable(tmp_path):
    """``make_indexable(func, n)`` of a ``func`` that takes any index gives ``n`` samples (0.9.0
    read on to the end of the last batch)."""
    indexable = parallel.make_indexable(lambda i: i, 5)
    assert list(parallel.ParallelBatchCollector(indexable, 2).batches()) == [[0, 1], [2, 3], [4]]
    m = base.from_indexable_base(tmp_path / "m", indexable, 2, RaggedMmap.from_lists)
    assert [int(m[i]) for i in range(len(m))] == [0, 1, 2, 3, 4]


def test_collector_arguments():
    with pytest.raises(TypeError, match="__getitem__"):
        parallel.ParallelBatchCollector(3, 2)
    collector = parallel.ParallelBatchCollector(len, 2)  # a function is wrapped by make_indexable
    assert collector.indexable.wrapped is len and not hasattr(collector.indexable, "__len__")
    collector.close()
    # joblib.Parallel's options are taken (and not needed); this module's are passed on
    assert list(parallel.ParallelBatchCollector([1, 2, 3], 2, n_jobs=2, backend="loky", chunk_size=1).batches()) \
        == [[1, 2], [3]]
    with pytest.raises(TypeError, match="no_such_option"):
        parallel.ParallelBatchCollector([1], 1, no_such_option=1)
    assert parallel.ParallelBatchCollector.begin(None) is None and parallel.ParallelBatchCollector.begin(2) == 2
    assert parallel.ParallelBatchCollector([1, 2], 1).exhausted([1, parallel.EXHAUSTED])


def test_stopping_early_stops_the_workers():
    collector = parallel.ParallelBatchCollector(parallel.make_indexable(lambda i: i), 3, n_jobs=2)
    batches = collector.batches()
    assert next(batches) == [0, 1, 2]
    collector.close()
    assert collector.collect_batch() == [] and collector.exhausted()


# -- make_indexable --------------------------------------------------------------------------

_MAKE_INDEXABLE = """
from mmap_ninja.parallel import make_indexable

def square(i):
    if i >= 5:
        raise IndexError(i)
    return i * i

result = {}
for length in (None, 5, 3):
    m = make_indexable(square, length)
    try:
        m[7]
        past = "no error"
    except IndexError:
        past = "IndexError"
    result[str(length)] = {"items": [m[i] for i in range(5)], "past": past, "wrapped": m.wrapped is square,
                           "len": len(m) if hasattr(m, "__len__") else None, "length": getattr(m, "length", None)}
"""


def test_make_indexable_behaves_as_in_090(ref090, tmp_path):
    ref = _run_090(ref090, tmp_path, _MAKE_INDEXABLE)
    here: Dict[str, Any] = {}
    exec(_MAKE_INDEXABLE, here)
    assert here["result"] == ref
    assert ref["5"]["len"] == 5 and ref["None"]["len"] is None


# -- maps built here with the kept helpers, read by 0.9.0 -------------------------------------------

_RAGGED = [np.arange(k * 2, dtype=np.int32).reshape(k, 2) if k % 3 == 0 else np.arange(k, dtype=np.int32) + k
           for k in range(1, 9)]
_ROWS = [np.full((2, 3), k, dtype=np.float32) + np.arange(3) for k in range(7)]
_STRINGS = ["plain", "", "Здравей", "中文", "emoji 🎉", "tab\tand\nnewline", "x" * 100]

_READ_090 = """
import numpy as np
from mmap_ninja import generic

def encode(x):
    a = np.asarray(x)
    return {"dtype": a.dtype.str, "shape": list(a.shape), "values": a.reshape(-1).tolist()}

result = {}
for out_dir, kind in TARGETS:
    m = generic.open_existing(out_dir)
    if kind == "numpy":
        result[out_dir] = encode(m)
    elif kind == "ragged":
        result[out_dir] = [encode(m[i]) for i in range(len(m))]
    else:
        result[out_dir] = [m[i] for i in range(len(m))]
"""


def _decode(entry: Dict[str, Any]) -> np.ndarray:
    return np.array(entry["values"], dtype=np.dtype(entry["dtype"])).reshape(entry["shape"])


def _assert_same_array(actual: np.ndarray, expected: np.ndarray, what: str) -> None:
    assert actual.dtype == expected.dtype and actual.shape == expected.shape, what
    np.testing.assert_array_equal(actual, expected, err_msg=what)


def test_maps_built_with_the_kept_helpers_read_back_in_090(ref090, tmp_path):
    """Ragged, numpy and strings maps built by ``from_generator_base`` and
    ``from_indexable_base`` (serially and in two worker processes, with ``make_indexable``),
    with this library's constructors, read back in 0.9.0 as the samples they were built from."""
    built = {
        "ragged_gen": ("ragged", base.from_generator_base(
            tmp_path / "ragged_gen", iter(_RAGGED), 3, RaggedMmap.from_lists, verbose=True)),
        "ragged_idx": ("ragged", base.from_indexable_base(
            tmp_path / "ragged_idx", parallel.make_indexable(lambda i: _RAGGED[i], len(_RAGGED)), 3,
            RaggedMmap.from_lists, n_jobs=2)),
        "numpy_gen": ("numpy", np_ninja.from_generator_base(
            tmp_path / "numpy_gen", iter(_ROWS), 3, batch_ctor=np_ninja.from_ndarray, extend_fn=np_ninja.extend)),
        "numpy_idx": ("numpy", base.from_indexable_base(
            tmp_path / "numpy_idx", _ROWS, 2, np_ninja.from_ndarray, extend_fn=np_ninja.extend)),
        "strings_gen": ("string", base.from_generator_base(
            tmp_path / "strings_gen", iter(_STRINGS), 2, StringsMmap.from_strings)),
        "strings_idx": ("string", base.from_indexable_base(
            tmp_path / "strings_idx", _STRINGS.__getitem__, 4, StringsMmap.from_strings, n_jobs=2)),
    }
    expected = {"ragged": _RAGGED, "numpy": np.stack(_ROWS), "string": _STRINGS}
    targets = [[str(tmp_path / name), kind] for name, (kind, _) in built.items()]
    reads = _run_090(ref090, tmp_path, _READ_090, TARGETS=targets)
    for name, (kind, memmap) in built.items():
        read = reads[str(tmp_path / name)]
        if kind == "numpy":
            _assert_same_array(_decode(read), expected[kind], name)
            # the map the constructor returned, as in 0.9.0: the first batch's rows
            assert len(memmap) == (3 if name == "numpy_gen" else 2)
            _assert_same_array(np.asarray(np_ninja.open_existing(tmp_path / name)), expected[kind], name)
        elif kind == "ragged":
            assert len(read) == len(_RAGGED) == len(memmap), name
            for i, (entry, sample) in enumerate(zip(read, _RAGGED)):
                _assert_same_array(_decode(entry), sample, f"{name}[{i}]")
                _assert_same_array(np.asarray(memmap[i]), sample, f"{name}[{i}] here")
        else:
            assert read == _STRINGS and [memmap[i] for i in range(len(memmap))] == _STRINGS, name


@settings(max_examples=25, deadline=None)
@given(lengths=st.lists(st.integers(0, 6), min_size=1, max_size=12), batch_size=st.integers(1, 5))
def test_ragged_map_built_in_batches_equals_one_built_at_once(tmp_path_factory, lengths, batch_size):
    samples = [np.arange(k, dtype=np.int64) * (i + 1) for i, k in enumerate(lengths)]
    folder = tmp_path_factory.mktemp("ragged")
    batched = base.from_generator_base(folder / "batched", iter(samples), batch_size, RaggedMmap.from_lists)
    whole = RaggedMmap.from_lists(folder / "whole", samples)
    assert len(batched) == len(whole) == len(samples)
    for i in range(len(samples)):
        _assert_same_array(np.asarray(batched[i]), np.asarray(whole[i]), f"sample {i}")

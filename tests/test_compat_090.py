"""Compatibility with the published mmap_ninja 0.9.0, in both directions.

Reading: every dataset that 0.9.0 wrote (``tests/fixtures/mmap_ninja-0.9.0``) opens with this
library and reads back exactly as ``expected.json`` says, sample by sample and in batches.
Extending a copy of such a dataset with this library gives the old samples followed by the new
ones, and 0.9.0 still reads the result.

Writing: numpy, ragged and strings maps written with this library (fresh, and after
``extend``/``append``/``extend_dir``) open in 0.9.0, through the specific classes and through
``mmap_ninja.generic.open_existing``, with the same shapes, dtypes and values.

0.9.0 runs in a subprocess (the ``ref090`` fixture); each test makes one such call that reads
every directory it checks. Arrays cross over as JSON: dtype string, shape and C-order values.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Sequence, Tuple

import numpy as np
import pytest
from conftest import assert_sample_equal

import mmap_ninja
from mmap_ninja import generic
from mmap_ninja import numpy as np_ninja
from mmap_ninja.ragged import RaggedMmap
from mmap_ninja.string import StringsMmap

NUMPY_FIXTURES = ["numpy_c", "numpy_f", "numpy_gen"]
RAGGED_FIXTURES = ["ragged_flat", "ragged_nd", "ragged_images", "ragged_mixed_ndim", "ragged_scalars", "ragged_gen"]
STRINGS_FIXTURES = ["strings", "strings_zstd", "strings_zstd_dict", "strings_gen", "strings_empty"]

NEW_STRINGS = ["plain ascii", "", "Здравей, свят", "中文字符串", "emoji 🎉🚀 end", "tab\tand\nnewline", ""]

# -- helpers ---------------------------------------------------------------------------------


def _array(entry: Dict[str, Any]) -> np.ndarray:
    """An array from its JSON form: ``{"dtype", "shape", "values"}`` (values in C order)."""
    return np.array(entry["values"], dtype=np.dtype(entry["dtype"])).reshape(entry["shape"])


def _expected_contents(entry: Dict[str, Any]):
    """What a fixture folder must read back as: an array, a list of arrays or a list of str."""
    if entry["type"] == "numpy":
        return _array(entry["array"])
    if entry["type"] == "ragged":
        return [_array(sample) for sample in entry["samples"]]
    return list(entry["strings"])


def _is_python_scalar(value: Any) -> bool:
    return type(value) in (int, float, bool)


def _assert_samples_equal(actual: Sequence[Any], expected: Sequence[np.ndarray], what: str) -> None:
    assert len(actual) == len(expected), f"{what}: {len(actual)} samples, expected {len(expected)}"
    for i, (sample, expected_sample) in enumerate(zip(actual, expected)):
        try:
            assert_sample_equal(sample, expected_sample)
        except AssertionError as exc:
            raise AssertionError(f"{what}: sample {i} differs: {exc}") from None


def _assert_numpy_equal(actual: Any, expected: np.ndarray, what: str) -> None:
    actual = np.asarray(actual)
    assert actual.dtype.str == expected.dtype.str, f"{what}: dtype {actual.dtype.str}, expected {expected.dtype.str}"
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape}, expected {expected.shape}"
    np.testing.assert_array_equal(actual, expected, err_msg=what)


def _assert_contents(kind: str, actual: Any, expected: Any, what: str) -> None:
    if kind == "numpy":
        _assert_numpy_equal(actual, expected, what)
    elif kind == "ragged":
        _assert_samples_equal(actual, expected, what)
    else:
        assert list(actual) == list(expected), what


def _read_with_library(kind: str, out_dir: Path):
    """Contents of the map at ``out_dir`` read sample by sample with this library."""
    if kind == "numpy":
        return np.array(np_ninja.open_existing(out_dir))
    if kind == "ragged":
        m = RaggedMmap(out_dir)
        return [m[i] for i in range(len(m))]
    m = StringsMmap(out_dir, mode="rb")
    return [m[i] for i in range(len(m))]


def _copy_fixture(fixtures_dir: Path, name: str, dest: Path) -> Path:
    """A writable copy of a fixture folder at ``dest`` (an empty folder for one git cannot
    store)."""
    if (fixtures_dir / name).exists():
        shutil.copytree(fixtures_dir / name, dest)
    else:
        dest.mkdir(parents=True)
    return dest


_READ_WITH_090 = """
import os
import numpy as np
from mmap_ninja import generic
from mmap_ninja import numpy as np_ninja
from mmap_ninja.ragged import RaggedMmap
from mmap_ninja.string import StringsMmap

def encode(x):
    a = np.asarray(x)
    return {"dtype": a.dtype.str, "shape": list(a.shape), "values": a.reshape(-1).tolist(),
            "fortran": bool(np.isfortran(a))}

def read(kind, m):
    if kind == "numpy":
        return encode(m)
    if kind == "ragged":
        return [encode(m[i]) for i in range(len(m))]
    return [m[i] for i in range(len(m))]

openers = {"numpy": np_ninja.open_existing, "ragged": RaggedMmap, "string": StringsMmap}
result = {}
for out_dir, kind in TARGETS:
    out = {"specific": read(kind, openers[kind](out_dir))}
    if os.path.exists(os.path.join(out_dir, "type.ninja")):
        out["generic"] = read(kind, generic.open_existing(out_dir))
    result[out_dir] = out
"""


def _read_with_090(ref090, targets: List[Tuple[Path, str]], cwd: Path) -> Dict[str, Dict[str, Any]]:
    """Read every ``(directory, kind)`` with 0.9.0 in one subprocess: for each directory, what
    the specific opener and (when ``type.ninja`` exists) ``generic.open_existing`` return."""
    listing = json.dumps([[str(path), kind] for path, kind in targets])
    code = f"TARGETS = json.loads({listing!r})\n" + _READ_WITH_090
    return ref090.run(code, cwd)


def _decode(kind: str, read: Any):
    if kind == "numpy":
        return _array(read)
    if kind == "ragged":
        return [_array(sample) for sample in read]
    return read


def _assert_090_reads(kind: str, reads: Dict[str, Any], expected: Any, what: str,
                      fortran: bool = False) -> None:
    """What 0.9.0 read (specific opener and generic opener) equals ``expected``."""
    assert "generic" in reads, f"{what}: no type.ninja, so 0.9.0's generic.open_existing cannot open it"
    for opener in ("specific", "generic"):
        label = f"{what}, read by 0.9.0 ({opener} opener)"
        _assert_contents(kind, _decode(kind, reads[opener]), expected, label)
        if kind == "numpy":
            assert reads[opener]["fortran"] == fortran, f"{label}: Fortran order is {reads[opener]['fortran']}"


# -- reading 0.9.0's files -------------------------------------------------------------------


def test_fixture_lists_cover_expected_json(expected):
    """Every folder that expected.json describes is checked below, with its type."""
    assert sorted(expected) == sorted(NUMPY_FIXTURES + RAGGED_FIXTURES + STRINGS_FIXTURES)
    for names, type_name in ((NUMPY_FIXTURES, "numpy"), (RAGGED_FIXTURES, "ragged"), (STRINGS_FIXTURES, "string")):
        assert {expected[name]["type"] for name in names} == {type_name}


@pytest.mark.parametrize("name", NUMPY_FIXTURES)
def test_numpy_fixture_from_090_reads_back_as_expected(name, expected, fixture_copy):
    out_dir = fixture_copy(name)
    want = _expected_contents(expected[name])
    for opener in (np_ninja.open_existing, generic.open_existing):
        m = opener(out_dir)
        what = f"{name} via {opener.__module__}.open_existing"
        assert isinstance(m, np.memmap), what
        assert m.dtype.str == expected[name]["array"]["dtype"], what
        assert list(m.shape) == expected[name]["array"]["shape"], what
        _assert_numpy_equal(m, want, what)
        _assert_numpy_equal(m[:], want, what)
        _assert_numpy_equal(m[[0, -1]], want[[0, -1]], what)
        _assert_numpy_equal(m[-1], want[len(want) - 1], what)
    assert np.isfortran(np_ninja.open_existing(out_dir)) == (name == "numpy_f")


@pytest.mark.parametrize("name", RAGGED_FIXTURES)
def test_ragged_fixture_from_090_reads_back_as_expected(name, expected, fixture_copy):
    out_dir = fixture_copy(name)
    want = _expected_contents(expected[name])
    for m, what in ((RaggedMmap(out_dir), f"{name} via RaggedMmap"),
                    (generic.open_existing(out_dir), f"{name} via generic.open_existing")):
        assert isinstance(m, RaggedMmap), what
        samples = [m[i] for i in range(len(m))]
        _assert_samples_equal(samples, want, what)
        for i, (sample, expected_sample) in enumerate(zip(samples, want)):
            if expected_sample.ndim == 0:
                assert _is_python_scalar(sample), f"{what}: sample {i} is {sample!r}, not a Python scalar"
            else:
                assert isinstance(sample, np.ndarray), f"{what}: sample {i} is {type(sample)}"


@pytest.mark.parametrize("name", STRINGS_FIXTURES)
def test_strings_fixture_from_090_reads_back_as_expected(name, expected, fixture_copy):
    out_dir = fixture_copy(name)
    want = _expected_contents(expected[name])
    maps = [(StringsMmap(out_dir), f"{name} via StringsMmap"),
            (StringsMmap(out_dir, mode="rb"), f"{name} via StringsMmap(mode='rb')")]
    if (out_dir / "type.ninja").exists():
        maps.append((generic.open_existing(out_dir), f"{name} via generic.open_existing"))
    else:
        assert name == "strings_empty"
    for m, what in maps:
        assert len(m) == len(want), what
        assert [m[i] for i in range(len(m))] == want, what
        assert list(m) == want, what


@pytest.mark.parametrize("name", RAGGED_FIXTURES + STRINGS_FIXTURES)
def test_batch_reads_of_090_fixture_agree_with_single_reads(name, expected, fixture_copy):
    out_dir = fixture_copy(name)
    m = RaggedMmap(out_dir) if expected[name]["type"] == "ragged" else StringsMmap(out_dir, mode="rb")
    n = len(m)
    singles = [m[i] for i in range(n)]
    assert len(singles) == len(_expected_contents(expected[name]))

    def same(batch, indices, what):
        assert isinstance(batch, list), f"{what}: {type(batch)}"
        assert len(batch) == len(indices), what
        for k, i in enumerate(indices):
            if isinstance(batch[k], str) or isinstance(singles[i], str):
                assert batch[k] == singles[i], f"{what}: item {k}"
            else:
                assert_sample_equal(batch[k], np.asarray(singles[i]))
                assert _is_python_scalar(batch[k]) == _is_python_scalar(singles[i]), f"{what}: item {k}"

    same(m[:], list(range(n)), "m[:]")
    same(m[::2], list(range(n))[::2], "m[::2]")
    same(m[::-1], list(range(n))[::-1], "m[::-1]")
    same(m[1:-1], list(range(n))[1:-1], "m[1:-1]")
    if n:
        picks = [n - 1, 0, -1, -n, n // 2, 0]
        normalised = [i % n for i in picks]
        same(m[picks], normalised, "m[list]")
        same(m[np.array(picks)], normalised, "m[np.array]")
        for k in range(1, n + 1):
            same([m[-k]], [n - k], f"m[-{k}]")
        with pytest.raises(IndexError):
            m[n]
        with pytest.raises(IndexError):
            m[-n - 1]
    else:
        assert m[[]] == []
        with pytest.raises(IndexError):
            m[0]


# -- extending 0.9.0's files with this library -----------------------------------------------


@pytest.mark.parametrize("name", NUMPY_FIXTURES)
def test_extending_numpy_fixture_from_090_appends_rows_readable_by_both(name, expected, fixture_copy, ref090, tmp_path):
    out_dir = fixture_copy(name)
    old = _expected_contents(expected[name])
    rng = np.random.default_rng(1)
    rows = rng.integers(-50, 50, size=(3, *old.shape[1:])).astype(old.dtype)
    one_more = np.full(old.shape[1:], 7, dtype=old.dtype)
    np_ninja.extend_dir(out_dir, rows[:2])
    np_ninja.extend(np_ninja.open_existing(out_dir), np.asfortranarray(rows[2:]))
    np_ninja.append(np_ninja.open_existing(out_dir), one_more)
    want = np.concatenate([old, rows, one_more[None]])

    _assert_numpy_equal(np_ninja.open_existing(out_dir), want, f"extended {name}")
    _assert_numpy_equal(generic.open_existing(out_dir), want, f"extended {name} via generic")
    reads = _read_with_090(ref090, [(out_dir, "numpy")], tmp_path)
    _assert_090_reads("numpy", reads[str(out_dir)], want, f"extended {name}", fortran=name == "numpy_f")


def _arange(shape: Tuple[int, ...], dtype: np.dtype, start: int = 0) -> np.ndarray:
    size = int(np.prod(shape))
    return ((np.arange(size) + start) % 200).astype(dtype).reshape(shape)


def _ragged_extensions(name: str, dtype: np.dtype) -> Dict[str, List[Any]]:
    """New samples for a ragged fixture: of the ranks it already holds, and of other ranks."""
    a = lambda *shape, start=3: _arange(shape, dtype, start)  # noqa: E731
    return {
        "ragged_flat": {"same_rank": [a(3), a(0), a(1), a(6)],
                        "other_rank": [a(2, 3), a(4), a(1, 2, 2), a(0)]},
        "ragged_nd": {"same_rank": [a(3, 2), a(1, 1), a(0, 4), a(2, 5)],
                      "other_rank": [a(5), a(2, 2, 2), a(0), a(3, 1)]},
        "ragged_images": {"same_rank": [a(4, 6, 3), a(2, 2, 3), a(1, 9, 3)],
                          "other_rank": [a(4, 6), a(7), a(2, 3, 3)]},
        "ragged_mixed_ndim": {"same_rank": [a(3), a(1, 4), a(2, 2)],
                              "other_rank": [a(2, 1, 3), a(0, 2), a(4)]},
        "ragged_scalars": {"same_rank": [np.asarray(7, dtype=dtype), -4, np.int64(12)],
                           "other_rank": [a(3), a(0), np.asarray(9, dtype=dtype), a(2, 2)]},
        "ragged_gen": {"same_rank": [a(12), a(5), a(0)],
                       "other_rank": [a(3, 4), a(12), a(2, 1, 2)]},
    }[name]


@pytest.mark.parametrize("name", RAGGED_FIXTURES)
def test_extending_ragged_fixture_from_090_appends_samples_readable_by_both(
        name, expected, fixtures_dir, ref090, tmp_path):
    old = _expected_contents(expected[name])
    dtype = old[0].dtype
    targets, wants = [], {}
    for variant, new in _ragged_extensions(name, dtype).items():
        out_dir = _copy_fixture(fixtures_dir, name, tmp_path / f"{name}_{variant}")
        m = RaggedMmap(out_dir)
        m.extend(new[:-1])
        m.append(new[-1])
        want = old + [np.asarray(sample).astype(dtype) for sample in new]
        what = f"{name} extended with {variant} samples"
        _assert_samples_equal([m[i] for i in range(len(m))], want, f"{what} (same RaggedMmap)")
        _assert_samples_equal(_read_with_library("ragged", out_dir), want, f"{what} (reopened)")
        reopened = RaggedMmap(out_dir)
        for i, expected_sample in enumerate(want):
            assert _is_python_scalar(reopened[i]) == (expected_sample.ndim == 0), f"{what}: sample {i}"
        targets.append((out_dir, "ragged"))
        wants[str(out_dir)] = (want, what)
    reads = _read_with_090(ref090, targets, tmp_path)
    for out_dir, (want, what) in wants.items():
        _assert_090_reads("ragged", reads[out_dir], want, what)


@pytest.mark.parametrize("name", STRINGS_FIXTURES)
def test_extending_strings_fixture_from_090_appends_strings_readable_by_both(
        name, expected, fixture_copy, ref090, tmp_path):
    out_dir = fixture_copy(name)
    old = _expected_contents(expected[name])
    compressed = (out_dir / "zstd_level.ninja").exists()
    m = StringsMmap(out_dir)
    m.extend(NEW_STRINGS)
    m.append("the very last one")
    want = old + NEW_STRINGS + ["the very last one"]
    assert [m[i] for i in range(len(m))] == want
    assert _read_with_library("string", out_dir) == want
    assert list(generic.open_existing(out_dir)) == want
    assert (out_dir / "zstd_level.ninja").exists() == compressed
    reads = _read_with_090(ref090, [(out_dir, "string")], tmp_path)
    _assert_090_reads("string", reads[str(out_dir)], want, f"extended {name}")


# -- writing with this library, reading with 0.9.0 -------------------------------------------


@dataclass
class WriteCase:
    """A map written with this library: ``build`` writes it (contents ``initial``), ``grow``
    extends it (appending ``added``)."""

    kind: str
    build: Callable[[Path], Any]
    grow: Callable[[Path], Any]
    initial: Any
    added: Any
    fortran: bool = False

    def after_growth(self):
        if self.kind == "numpy":
            return np.concatenate([self.initial, self.added])
        return list(self.initial) + list(self.added)


def _numpy_case(arr: np.ndarray, more: np.ndarray, via_generator: bool = False, n=None) -> WriteCase:
    def build(d):
        if via_generator:
            np_ninja.from_generator(d, iter(list(arr)), batch_size=3, n=n)
        else:
            np_ninja.from_ndarray(d, arr)

    def grow(d):
        np_ninja.extend_dir(d, more[:2])
        np_ninja.append(np_ninja.open_existing(d), more[2])
        np_ninja.extend(np_ninja.open_existing(d), more[3:])

    return WriteCase("numpy", build, grow, np.array(arr), np.array(more), fortran=np.isfortran(arr))


def _ragged_case(samples: List[np.ndarray], more: List[np.ndarray], batch_size=None) -> WriteCase:
    def build(d):
        if batch_size is None:
            RaggedMmap.from_lists(d, samples)
        else:
            RaggedMmap.from_generator(d, iter(samples), batch_size=batch_size)

    def grow(d):
        m = RaggedMmap(d)
        m.extend(more[:-1])
        m.append(more[-1])

    dtype = np.asarray(samples[0]).dtype
    as_arrays = lambda items: [np.asarray(x).astype(dtype) for x in items]  # noqa: E731
    return WriteCase("ragged", build, grow, as_arrays(samples), as_arrays(more))


def _strings_case(strings: List[str], more: List[str], batch_size=None, **zstd) -> WriteCase:
    def build(d):
        if batch_size is None:
            StringsMmap.from_strings(d, strings, **zstd)
        else:
            StringsMmap.from_generator(d, iter(strings), batch_size=batch_size, **zstd)

    def grow(d):
        m = StringsMmap(d)
        m.extend(more[:-1])
        generic.open_existing(d).append(more[-1])

    return WriteCase("string", build, grow, list(strings), list(more))


def _images(rng, sizes) -> List[np.ndarray]:
    return [rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8) for h, w in sizes]


def _flat(rng, dtype, lengths) -> List[np.ndarray]:
    return [(rng.standard_normal(k) * 100).astype(dtype) for k in lengths]


UNICODE_STRINGS = ["Torba", "", "Привет, мир", "日本語のテキスト", "中文", "emoji 😀 ok 👍🏽", "", "x" * 300,
                   "mixed ascii и кириллица 漢字 🎉", ""]


def _varied_strings(count: int, seed: int) -> List[str]:
    rng = np.random.default_rng(seed)
    words = ["alpha", "beta", "gamma", "дельта", "эпсилон", "ζήτα", "η", "theta", "イオタ", "kappa", "🦙",
             "lambda", "mu", "nu", "ξι", "omicron", "pi", "rho", "sigma", "tau"]
    return [" ".join(rng.choice(words, size=rng.integers(1, 12))) + f" #{i}" for i in range(count)]


def _write_cases() -> Dict[str, WriteCase]:
    rng = np.random.default_rng(2024)
    e64 = np.empty(0, np.int64)
    cases = {
        "numpy_c_order": _numpy_case(np.arange(24, dtype=np.float32).reshape(8, 3) * 0.5 - 3,
                                     rng.standard_normal((5, 3)).astype(np.float32)),
        "numpy_f_order": _numpy_case(np.asfortranarray(np.arange(24, dtype=np.int16).reshape(4, 3, 2)),
                                     np.asfortranarray(-np.arange(30, dtype=np.int16).reshape(5, 3, 2))),
        "numpy_from_generator": _numpy_case(np.array([[i, i * i] for i in range(10)], dtype=np.int64),
                                            np.array([[-i, i] for i in range(4)], dtype=np.int64),
                                            via_generator=True, n=10),
        "numpy_from_generator_fewer_than_n": _numpy_case(
            rng.integers(0, 255, size=(7, 2, 2), dtype=np.uint8), rng.integers(0, 255, size=(4, 2, 2), dtype=np.uint8),
            via_generator=True, n=20),
        "ragged_flat_int64": _ragged_case([np.arange(k, dtype=np.int64) * 3 - 7 for k in (4, 1, 7, 2)],
                                          [np.arange(k, dtype=np.int64) - 100 for k in (3, 5, 1)]),
        "ragged_flat_float32": _ragged_case(_flat(rng, np.float32, (5, 2, 9)), _flat(rng, np.float32, (1, 4, 6))),
        "ragged_flat_uint8": _ragged_case([rng.integers(0, 256, k, dtype=np.uint8) for k in (10, 3, 255, 1)],
                                          [rng.integers(0, 256, k, dtype=np.uint8) for k in (2, 17)]),
        "ragged_images": _ragged_case(_images(rng, [(5, 7), (3, 4), (8, 2), (1, 1)]),
                                      _images(rng, [(6, 5), (2, 9), (4, 4)])),
        "ragged_mixed_ndim": _ragged_case(
            [np.arange(5, dtype=np.int64), np.arange(6, dtype=np.int64).reshape(2, 3),
             np.arange(24, dtype=np.int64).reshape(2, 3, 4), np.arange(2, dtype=np.int64)],
            [np.arange(4, dtype=np.int64).reshape(1, 4), np.arange(3, dtype=np.int64) + 9,
             np.zeros((0, 3), dtype=np.int64), np.ones((2, 1, 2), dtype=np.int64)]),
        "ragged_scalars": _ragged_case([3, -1, np.int64(2**40), 0], [np.asarray(5), 6, np.int64(-7)]),
        "ragged_empty_among_non_empty": _ragged_case(
            [np.arange(3, dtype=np.int64), e64, np.arange(2, dtype=np.int64) + 5, e64, e64, np.array([42])],
            [e64, np.arange(4, dtype=np.int64), e64]),
        "ragged_from_generator": _ragged_case(
            [np.full(k % 5 + 1, k, dtype=np.float64) for k in range(11)],
            [np.full(3, -1.5), np.full(1, 2.25)], batch_size=4),
        "ragged_from_generator_ranks_change_between_batches": _ragged_case(
            [np.arange(3, dtype=np.int32), np.arange(2, dtype=np.int32), np.arange(6, dtype=np.int32).reshape(3, 2),
             np.arange(1, dtype=np.int32), np.arange(8, dtype=np.int32).reshape(2, 2, 2)],
            [np.arange(4, dtype=np.int32), np.arange(4, dtype=np.int32).reshape(2, 2)], batch_size=2),
        "strings_plain": _strings_case(UNICODE_STRINGS, NEW_STRINGS),
        "strings_only_empty": _strings_case(["", ""], ["", "after empties", ""]),
        "strings_zstd": _strings_case(UNICODE_STRINGS, NEW_STRINGS, zstd_level=3),
        "strings_zstd_dictionary": _strings_case(_varied_strings(400, 1), _varied_strings(20, 2) + NEW_STRINGS,
                                                 zstd_level=3, zstd_train_dictionary_size=2048),
        "strings_from_generator": _strings_case([f"{i} {UNICODE_STRINGS[i % len(UNICODE_STRINGS)]}" for i in range(30)],
                                                NEW_STRINGS, batch_size=7),
        "strings_from_generator_zstd": _strings_case(_varied_strings(300, 3), NEW_STRINGS, batch_size=120,
                                                     zstd_level=3, zstd_train_dictionary_size=1024),
    }
    return cases


WRITE_CASES = _write_cases()


@pytest.mark.parametrize("case_name", list(WRITE_CASES))
def test_map_written_and_extended_by_this_library_reads_identically_in_090(case_name, ref090, tmp_path):
    case = WRITE_CASES[case_name]
    fresh, grown = tmp_path / "fresh", tmp_path / "grown"
    case.build(fresh)
    case.build(grown)
    case.grow(grown)
    checks = [(fresh, case.initial, f"{case_name} as written"),
              (grown, case.after_growth(), f"{case_name} after extending")]
    for out_dir, want, what in checks:
        _assert_contents(case.kind, _read_with_library(case.kind, out_dir), want, f"{what}, read by this library")
    reads = _read_with_090(ref090, [(out_dir, case.kind) for out_dir, _, _ in checks], tmp_path)
    for out_dir, want, what in checks:
        _assert_090_reads(case.kind, reads[str(out_dir)], want, what, fortran=case.fortran)


def test_ragged_map_whose_first_batch_is_all_empty_extends_correctly(ref090, tmp_path):
    """A map built from only empty samples (which 0.9.0 itself cannot build correctly) grows
    with this library and reads back right here and in 0.9.0."""
    e = np.empty(0, np.int64)
    only_empty = tmp_path / "only_empty"
    RaggedMmap.from_lists(only_empty, [e, e])

    flat = tmp_path / "flat"
    RaggedMmap.from_lists(flat, [e, e])
    m = RaggedMmap(flat)
    m.extend([np.arange(3), e, np.array([7, 8])])
    m.append(np.array([-1]))

    nested = tmp_path / "nested"
    RaggedMmap.from_lists(nested, [e, e, e])
    m = RaggedMmap(nested)
    m.extend([np.arange(6).reshape(2, 3), e])
    m.append(np.arange(4))

    generated = tmp_path / "generated"
    RaggedMmap.from_generator(generated, iter([e, e, np.arange(2), e, np.arange(3) + 10]), batch_size=2)

    checks = {
        only_empty: [e, e],
        flat: [e, e, np.arange(3), e, np.array([7, 8]), np.array([-1])],
        nested: [e, e, e, np.arange(6).reshape(2, 3), e, np.arange(4)],
        generated: [e, e, np.arange(2), e, np.arange(3) + 10],
    }
    checks = {d: [np.asarray(s, dtype=np.int64) for s in want] for d, want in checks.items()}
    for out_dir, want in checks.items():
        _assert_samples_equal(_read_with_library("ragged", out_dir), want, f"{out_dir.name}, read by this library")
        _assert_samples_equal(generic.open_existing(out_dir)[:], want, f"{out_dir.name}, batch read")
    reads = _read_with_090(ref090, [(d, "ragged") for d in checks], tmp_path)
    for out_dir, want in checks.items():
        _assert_090_reads("ragged", reads[str(out_dir)], want, out_dir.name)


def test_maps_with_replaced_samples_extend_correctly_in_090(ref090, tmp_path):
    """Replacing a sample appends its new bytes; the last sample moves along, so that 0.9.0,
    which appends after the end of the last sample, still extends the map correctly."""
    ragged, strings = tmp_path / "ragged", tmp_path / "strings"
    RaggedMmap.from_lists(ragged, [np.arange(3), np.arange(2), np.arange(4)])
    RaggedMmap(ragged, mode="r+")[0] = [7, 7, 7]
    StringsMmap.from_strings(strings, ["abc", "de", "fgh"])
    StringsMmap(strings)[1] = "XY"
    ref090.run(f"""
import numpy as np
from mmap_ninja.ragged import RaggedMmap
from mmap_ninja.string import StringsMmap
RaggedMmap({str(ragged)!r}).extend([np.array([9, 9])])
StringsMmap({str(strings)!r}).extend(["new"])
result = 0
""", tmp_path)
    want_ragged = [np.array([7, 7, 7]), np.arange(2), np.arange(4), np.array([9, 9])]
    want_strings = ["abc", "XY", "fgh", "new"]
    _assert_contents("ragged", _read_with_library("ragged", ragged), want_ragged, "ragged, read here")
    _assert_contents("string", _read_with_library("string", strings), want_strings, "strings, read here")
    reads = _read_with_090(ref090, [(ragged, "ragged"), (strings, "string")], tmp_path)
    _assert_090_reads("ragged", reads[str(ragged)], want_ragged, "ragged")
    _assert_090_reads("string", reads[str(strings)], want_strings, "strings")
    for path in (ragged, strings):
        report = mmap_ninja.verify(path, deep=True)
        assert report == [] and any("carry no checksum" in note for note in report.notes), report.notes

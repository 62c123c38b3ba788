"""Tests of mmap_ninja._meta: reading and writing the .ninja metadata files."""

from __future__ import annotations

import numpy as np
import pytest

from mmap_ninja import _meta


@pytest.mark.parametrize("dtype", ["int8", "uint64", "float16", "float64", "complex64", "bool", "U7", "S3",
                                   "datetime64[ns]", "timedelta64[25us]"])
def test_dtype_names_round_trip(tmp_path, dtype):
    name = _meta.dtype_name(np.dtype(dtype))
    assert name == np.dtype(dtype).name
    assert _meta.dtype_from_name(name, tmp_path) == np.dtype(dtype)


@pytest.mark.parametrize("name", [",nt16", "int64,int64", "O", "object", "bytes0", "(2,)i4", "", "in t8", "<i4"])
def test_malformed_dtype_names_raise_value_errors_naming_the_file(tmp_path, name):
    with pytest.raises(ValueError, match="dtype.ninja"):
        _meta.dtype_from_name(name, tmp_path / "dtype.ninja")


def test_shapes_ints_and_texts(tmp_path):
    _meta.write_bytes(tmp_path / "shape.ninja", _meta.shape_bytes((3, 0, 2**40)))
    assert _meta.read_shape(tmp_path / "shape.ninja") == (3, 0, 2**40)
    _meta.write_bytes(tmp_path / "shape.ninja", _meta.shape_bytes(()))
    assert (tmp_path / "shape.ninja").read_bytes() == b"" and _meta.read_shape(tmp_path / "shape.ninja") == ()
    (tmp_path / "bad.ninja").write_bytes(b"1234567")
    with pytest.raises(ValueError, match="multiple of 8"):
        _meta.read_shape(tmp_path / "bad.ninja")
    (tmp_path / "huge.ninja").write_bytes(np.array([2**63 - 1], "<u8").tobytes())
    with pytest.raises(ValueError, match="implausible shape"):
        _meta.read_shape(tmp_path / "huge.ninja")
    (tmp_path / "flag.ninja").write_bytes(_meta.int32_bytes(1))
    assert _meta.read_int32(tmp_path / "flag.ninja") == 1
    with pytest.raises(ValueError, match="4-byte integer"):
        _meta.read_int32(tmp_path / "bad.ninja")
    (tmp_path / "text.ninja").write_bytes(b"\xff\xfe")
    with pytest.raises(ValueError, match="UTF-8"):
        _meta.read_text(tmp_path / "text.ninja")
    with pytest.raises(FileNotFoundError, match="missing metadata file"):
        _meta.read_text(tmp_path / "nothing.ninja")


def test_writes_replace_atomically_and_leave_no_temporary_file(tmp_path):
    for durable in (False, True):
        _meta.write_bytes(tmp_path / "f.ninja", b"new", durable=durable)
        assert (tmp_path / "f.ninja").read_bytes() == b"new"
        assert sorted(p.name for p in tmp_path.iterdir()) == ["f.ninja"]

"""Tests of mmap_ninja.megatron: Megatron's indexed datasets in and out, read back by the real
megatron-core."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mmap_ninja import megatron
from mmap_ninja.ragged import RaggedMmap

with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # megatron-core warns that Transformer Engine and Apex are missing
    from megatron.core.datasets.indexed_dataset import IndexedDataset, IndexedDatasetBuilder

SHARED = sorted(megatron.DTYPE_CODES, key=str)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(dtype=st.sampled_from(SHARED), lengths=st.lists(st.integers(0, 9), min_size=1, max_size=12))
def test_exported_maps_read_back_identically_in_megatron_and_back(tmp_path_factory, dtype, lengths):
    folder = tmp_path_factory.mktemp("x")
    rng = np.random.default_rng(len(lengths))
    samples = [(rng.random(n) * 100).astype(dtype) for n in lengths]
    m = RaggedMmap.from_lists(folder / "m", samples)
    megatron.export(m, folder / "corpus", chunk=5)
    if sum(lengths):  # megatron-core cannot map an empty .bin
        theirs = IndexedDataset(str(folder / "corpus"))
        assert len(theirs) == len(samples)
        for i, sample in enumerate(samples):
            assert theirs[i].dtype == dtype and np.array_equal(theirs[i], sample)
    back = megatron.to_ragged(folder / "corpus", folder / "back", batch_size=4)
    assert back.dtype == dtype and len(back) == len(samples)
    assert all(np.array_equal(back[i], sample) for i, sample in enumerate(samples))


def test_files_written_by_megatrons_builder_become_a_map(tmp_path):
    import torch

    samples = [np.arange(n, dtype=np.int32) * 3 for n in (5, 0, 2, 7)]
    builder = IndexedDatasetBuilder(str(tmp_path / "theirs.bin"), dtype=np.int32)
    for sample in samples:
        builder.add_item(torch.from_numpy(sample))
        builder.end_document()
    builder.finalize(str(tmp_path / "theirs.idx"))
    m = megatron.to_ragged(tmp_path / "theirs", tmp_path / "m")
    assert m.dtype == np.int32 and [m[i].tolist() for i in range(4)] == [s.tolist() for s in samples]


def test_what_megatron_cannot_hold_is_refused_and_damaged_indexes_are_named(tmp_path):
    nested = RaggedMmap.from_lists(tmp_path / "n", [np.zeros((2, 3), np.int32)])
    with pytest.raises(ValueError, match="1-d sequences"):
        megatron.export(nested, tmp_path / "x")
    wide = RaggedMmap.from_lists(tmp_path / "w", [np.zeros(3, np.uint64)])
    with pytest.raises(TypeError, match="not uint64"):
        megatron.export(wide, tmp_path / "x")
    assert not list(tmp_path.glob("x.*"))  # nothing left behind
    m = RaggedMmap.from_lists(tmp_path / "m", [np.arange(4, dtype=np.int16)] * 3)
    megatron.export(m, tmp_path / "c")
    idx = tmp_path / "c.idx"
    raw = bytearray(idx.read_bytes())
    raw[-8 * 4 - 8 * 3 - 4 * 3] = 99  # a length far past the end of c.bin
    idx.write_bytes(bytes(raw))
    with pytest.raises(ValueError, match=r"c.idx: a sequence lies outside .*c.bin"):
        megatron.to_ragged(tmp_path / "c", tmp_path / "bad")
    idx.write_bytes(b"not an index")
    with pytest.raises(ValueError, match="no MMIDIDX header"):
        megatron.read_index(tmp_path / "c")
    assert not (tmp_path / "bad").exists()

"""Maps across processes: pickled as their path and options, and read by torch's DataLoader
workers started by fork and by spawn."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch

from mmap_ninja import numpy as np_ninja
from mmap_ninja.base import Wrapped
from mmap_ninja.ragged import RaggedMmap
from mmap_ninja.string import StringsMmap


def test_pickles_are_small_and_reopen_the_map(tmp_path):
    big = [np.full(1000, i, dtype=np.int64) for i in range(1000)]  # 8 MB of samples
    ragged = RaggedMmap.from_lists(tmp_path / "r", big, wrapper_fn=np.sum, mode="r")
    strings = StringsMmap.from_strings(tmp_path / "s", ["x" * 1000] * 1000)
    for original in (ragged, strings, Wrapped(strings, wrapper_fn=len)):
        payload = pickle.dumps(original)
        assert len(payload) < 4096
        copy = pickle.loads(payload)
        assert type(copy) is type(original) and len(copy) == len(original)
        assert copy[999] == original[999]
    copy = pickle.loads(pickle.dumps(ragged))
    assert copy.wrapper_fn is np.sum and copy.mode == "r" and copy.out_dir == ragged.out_dir
    ragged.append(np.arange(3))
    assert len(pickle.loads(pickle.dumps(ragged))) == 1001  # the unpickled map reads the files as they are


@pytest.mark.parametrize("context", ["fork", "spawn"])
def test_dataloader_workers_read_correct_samples(tmp_path, context):
    samples = [np.full(i % 5 + 1, i, dtype=np.int64) for i in range(40)]
    ragged = RaggedMmap(tmp_path / "r")
    ragged.extend(samples)
    texts = StringsMmap.from_strings(tmp_path / "s", [f"text {i} ж" for i in range(40)])
    rows = np_ninja.from_ndarray(tmp_path / "n", np.arange(80).reshape(40, 2))
    def ragged_index(got):
        np.testing.assert_array_equal(got, samples[int(got[0])])
        return int(got[0])

    def text_index(got):
        i = int(got.split()[1])
        assert got == f"text {i} ж"
        return i

    def row_index(got):
        i = int(got[0]) // 2
        np.testing.assert_array_equal(got, [2 * i, 2 * i + 1])
        return i

    for dataset, index_of in ((ragged, ragged_index), (texts, text_index),
                              (Wrapped(rows, wrapper_fn=np.asarray), row_index)):
        loader = torch.utils.data.DataLoader(dataset, batch_size=4, shuffle=True, num_workers=2, collate_fn=list,
                                             multiprocessing_context=context)
        seen = [index_of(got) for batch in loader for got in batch]
        assert sorted(seen) == list(range(40)) and seen != list(range(40))

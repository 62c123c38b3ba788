"""Tests of mmap_ninja.pytorch: batches that reach torch without a second copy, and real
DataLoaders over them."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mmap_ninja.pytorch import PaddedBatch, RaggedBatches, TokenizedCollate, collate
from mmap_ninja.ragged import RaggedBatch, RaggedMmap
from mmap_ninja.string import StringsMmap


def token_ids(text: str):
    """A tokenizer for the tests: one id per word (module level, so spawn workers can pickle it)."""
    return [len(word) for word in text.split()]


@pytest.fixture
def sequences(tmp_path):
    samples = [np.arange(i % 6, dtype=np.int32) + 10 * i for i in range(30)]
    return RaggedMmap.from_lists(tmp_path / "seq", samples), samples


def test_padded_batches_become_tensors_sharing_memory(sequences):
    m, samples = sequences
    dataset = RaggedBatches(m, pad_value=-1, max_len=4)
    assert len(dataset) == 30 and torch.equal(dataset[3], torch.as_tensor(samples[3]))
    batch = dataset.__getitems__([5, 0, 3])
    assert isinstance(batch, PaddedBatch)
    tensors = collate(batch)
    assert tensors["input"].data_ptr() == batch[0].ctypes.data  # torch.from_numpy: no copy
    assert tensors["input"].tolist() == [[50, 51, 52, 53], [-1, -1, -1, -1], [30, 31, 32, -1]]
    assert tensors["lengths"].tolist() == [4, 0, 3]
    assert tensors["attention_mask"].tolist() == [[True] * 4, [False] * 4, [True, True, True, False]]


def test_contiguous_batches_become_tensors_sharing_memory(sequences):
    m, samples = sequences
    batch = RaggedBatches(m, padded=False).__getitems__([2, 4])
    assert isinstance(batch, RaggedBatch)
    tensors = collate(batch)
    assert tensors["values"].data_ptr() == batch.values.ctypes.data
    assert tensors["values"].tolist() == samples[2].tolist() + samples[4].tolist()
    assert tensors["offsets"].tolist() == [0, 2, 6] and tensors["lengths"].tolist() == [2, 4]
    assert tensors["shapes"] == [(2,), (4,)]


def test_collate_pads_a_list_of_samples_and_refuses_other_things():
    tensors = collate([np.array([1, 2, 3]), np.array([4])])
    assert tensors["input"].tolist() == [[1, 2, 3], [4, 0, 0]] and tensors["lengths"].tolist() == [3, 1]
    with pytest.raises(ValueError, match="differ after their first axis"):
        collate([np.zeros((2, 3)), np.zeros((2, 4))])
    with pytest.raises(TypeError, match="collate takes"):
        collate("text")


def test_tokenized_collate_pads_token_ids(tmp_path):
    strings = StringsMmap.from_strings(tmp_path / "s", ["a bb ccc", "dddd", ""])
    tensors = TokenizedCollate(token_ids, pad_value=0, max_len=2)(strings[[0, 1, 2]])
    assert tensors["input_ids"].tolist() == [[1, 2], [4, 0], [0, 0]]
    assert tensors["lengths"].tolist() == [2, 1, 0]
    assert tensors["attention_mask"].tolist() == [[True, True], [True, False], [False, False]]


@pytest.mark.parametrize("context", ["fork", "spawn"])
def test_dataloaders_with_workers(sequences, tmp_path, context):
    m, samples = sequences
    loader = torch.utils.data.DataLoader(RaggedBatches(m, pad_value=-1), batch_size=4, shuffle=True, num_workers=2,
                                         multiprocessing_context=context, collate_fn=collate)
    seen = []
    for batch in loader:
        for row, length in zip(batch["input"], batch["lengths"]):
            values = row[:length].tolist()
            if values:
                i = values[0] // 10
                assert values == samples[i].tolist() and (row[length:] == -1).all()
                seen.append(i)
    assert sorted(seen) == sorted(i for i in range(30) if i % 6)
    texts = [f"sample {i} " + "x" * (i % 5) for i in range(12)]
    strings = StringsMmap.from_strings(tmp_path / "t", texts)
    loader = torch.utils.data.DataLoader(strings, batch_size=5, shuffle=True, num_workers=2,
                                         multiprocessing_context=context, collate_fn=TokenizedCollate(token_ids))
    ids = [row[:length].tolist() for batch in loader for row, length in zip(batch["input_ids"], batch["lengths"])]
    assert sorted(ids) == sorted(token_ids(text) for text in texts)

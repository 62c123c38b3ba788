"""Tests of mmap_ninja.pytorch: batches that reach torch without a second copy, and real
DataLoaders over them."""

from __future__ import annotations

import functools
import gc
import itertools
import threading

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mmap_ninja import numpy as np_ninja
from mmap_ninja.blend import Blend
from mmap_ninja.pytorch import (
    BLOCK_WINDOW,
    BufferPool,
    DistributedSampler,
    Loader,
    LookaheadSampler,
    PaddedBatch,
    RaggedBatches,
    TokenizedCollate,
    _handoff,
    collate,
    collate_packed,
    shared_array,
)
from mmap_ninja.pytorch._handoff import LentTensor
from mmap_ninja.ragged import RaggedBatch, RaggedMmap
from mmap_ninja.sharded import ShardedMmap
from mmap_ninja.string import StringsMmap

NUMERIC = [np.bool_, np.int8, np.uint8, np.int16, np.uint16, np.int32, np.uint32, np.int64, np.uint64,
           np.float16, np.float32, np.float64]
SAFE_PAIRS = [(a, b) for a in NUMERIC for b in NUMERIC if np.can_cast(a, b, "safe")]


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
    assert set(tensors) == {"input", "lengths"}  # the mask only when asked
    masked = collate(batch, attention_mask=True)
    assert masked["attention_mask"].tolist() == [[True] * 4, [False] * 4, [True, True, True, False]]


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
    assert "shapes" not in tensors
    with pytest.raises(ValueError, match="one number of axes"):
        collate([np.zeros((2, 3)), np.zeros(2)])
    with pytest.raises(TypeError, match="collate takes"):
        collate("text")
    with pytest.raises(TypeError, match="safe"):
        collate([np.array([1.5])], dtype=np.int64)


@settings(max_examples=30, deadline=None)
@given(shapes=st.lists(st.tuples(st.integers(0, 4), st.integers(0, 4), st.integers(1, 3)), min_size=1, max_size=6))
def test_collate_pads_images_of_different_heights_and_widths_along_every_axis(shapes):
    images = [np.random.default_rng(k).integers(1, 255, size=shape).astype(np.uint8) for k, shape in enumerate(shapes)]
    tensors = collate(images)
    padded = tensors["input"].numpy()
    assert padded.shape == (len(images), *np.max(shapes, axis=0))
    sizes = tensors["shapes"].tolist() if "shapes" in tensors else [list(image.shape) for image in images]
    assert sizes == [list(image.shape) for image in images] and tensors["lengths"].tolist() == [s[0] for s in shapes]
    for k, image in enumerate(images):
        h, w, c = image.shape
        np.testing.assert_array_equal(padded[k, :h, :w, :c], image)
        assert padded[k].sum() == image.sum()  # everything else is padding (0)


def _table_rows(count: int) -> list:
    return [{"image": np.full((2 + i % 3, 3 + i % 2, 3), i, np.uint8), "label": i, "caption": f"caption {i}",
             "tokens": np.arange(i % 4 + 1, dtype=np.int32)} for i in range(count)]


@pytest.fixture
def table(tmp_path):
    from mmap_ninja.table import TableMmap

    rows = _table_rows(24)
    return TableMmap.from_generator(tmp_path / "t", rows, batch_size=5), rows


def test_collate_of_a_table_batch_gives_each_column_its_tensors(table):
    t, rows = table
    batch = collate(t.__getitems__([5, 1, 2]), dtype={"label": np.float64, "tokens": np.int64}, packed=["tokens"])
    assert batch["label"].dtype == torch.float64 and batch["label"].tolist() == [5.0, 1.0, 2.0]
    assert batch["caption"] == ["caption 5", "caption 1", "caption 2"]
    assert batch["image"].shape == (3, 4, 4, 3) and batch["image_shapes"].tolist() == [[4, 4, 3], [3, 4, 3], [4, 3, 3]]
    np.testing.assert_array_equal(batch["image"][1, :3, :4].numpy(), rows[1]["image"])
    assert batch["tokens"].dtype == torch.int64 and batch["tokens"].tolist() == [0, 1, 0, 1, 0, 1, 2]
    assert batch["tokens_cu_seqlens"].tolist() == [0, 2, 4, 7] and batch["tokens_max_seqlen"] == 3
    with pytest.raises(KeyError, match="'nope'"):
        collate(t.__getitems__([0]), dtype={"nope": np.int64})
    taken = collate(t.take([3, 0]))  # a RaggedBatch column is padded as its samples
    assert taken["image"].shape == (2, 2, 4, 3) and taken["tokens_lengths"].tolist() == [4, 1]


@pytest.fixture
def sharded_table(tmp_path):
    from mmap_ninja.sharded import ShardedMmap

    rows = _table_rows(24)
    return ShardedMmap.from_generator(tmp_path / "s", rows, part_size=7), rows


@pytest.mark.parametrize("workers, context, sharded", [(0, None, False), (2, "fork", False), (2, "spawn", False),
                                                       (0, None, True), (2, "spawn", True)])
def test_a_dataloader_over_a_table_gets_dict_batches_without_warnings(request, workers, context, sharded, recwarn):
    t, rows = request.getfixturevalue("sharded_table" if sharded else "table")
    loader = torch.utils.data.DataLoader(t, batch_size=5, shuffle=True, num_workers=workers, collate_fn=collate,
                                         multiprocessing_context=context, generator=torch.Generator().manual_seed(3))
    seen = []
    for batch in loader:
        assert set(batch) >= {"image", "image_lengths", "label", "caption", "tokens", "tokens_lengths"}
        for k, label in enumerate(batch["label"].tolist()):
            assert batch["caption"][k] == rows[label]["caption"]
            h, w, _ = rows[label]["image"].shape
            np.testing.assert_array_equal(batch["image"][k, :h, :w].numpy(), rows[label]["image"])
        seen += batch["label"].tolist()
    assert sorted(seen) == list(range(24))
    assert not [w for w in recwarn if "not writable" in str(w.message) or "non-writable" in str(w.message)]


def test_loader_threads_make_the_same_dict_batches_as_a_dataloader(table):
    t, _ = table
    ours = [batch["label"].tolist() for batch in Loader(t, batch_size=7, shuffle=True, seed=4, collate_fn=collate)]
    theirs = [batch["label"].tolist() for batch in torch.utils.data.DataLoader(
        t, batch_size=7, shuffle=True, generator=torch.Generator().manual_seed(4), collate_fn=collate)]
    assert ours == theirs


def test_tokenized_collate_pads_token_ids(tmp_path):
    strings = StringsMmap.from_strings(tmp_path / "s", ["a bb ccc", "dddd", ""])
    tensors = TokenizedCollate(token_ids, pad_value=0, max_len=2)(strings[[0, 1, 2]])
    assert tensors["input_ids"].tolist() == [[1, 2], [4, 0], [0, 0]]
    assert tensors["lengths"].tolist() == [2, 1, 0]
    assert tensors["attention_mask"].tolist() == [[True, True], [True, False], [False, False]]


@pytest.mark.parametrize("workers, context", [(0, None), (2, "spawn")])
def test_ragged_batches_of_images_of_different_sizes_pad_every_axis_in_the_workers(tmp_path, workers, context):
    images = [np.full((2 + i % 3, 1 + i % 4, 3), i, np.uint8) for i in range(20)]
    m = RaggedMmap.from_lists(tmp_path / "images", images)
    loader = torch.utils.data.DataLoader(RaggedBatches(m, pad_value=255), batch_size=6, shuffle=True,
                                         num_workers=workers, multiprocessing_context=context, collate_fn=collate,
                                         generator=torch.Generator().manual_seed(1))
    seen = []
    for batch in loader:
        padded, shapes = batch["input"].numpy(), batch["shapes"].tolist()
        assert padded.shape[1:] == (4, 4, 3) or padded.shape[1] < 4 or padded.shape[2] < 4
        for k, (h, w, c) in enumerate(shapes):
            i = int(padded[k, 0, 0, 0])
            assert [h, w, c] == list(images[i].shape) and batch["lengths"][k] == h
            np.testing.assert_array_equal(padded[k, :h, :w], images[i])
            assert (padded[k, h:] == 255).all() and (padded[k, :, w:] == 255).all()
            seen.append(i)
    assert sorted(seen) == list(range(20))
    same_width = RaggedBatches(m).__getitems__([0, 4, 8])  # differing in the first axis only: no shapes
    assert same_width.shapes is None and same_width[0].shape == (3, 4, 1, 3)


@pytest.mark.parametrize("workers, context", [(0, None), (2, "fork"), (2, "spawn")])
def test_a_numpy_map_is_a_dataloader_dataset_without_warnings(tmp_path, workers, context, recwarn):
    rows = np.arange(40 * 3, dtype=np.float32).reshape(40, 3)
    np_ninja.from_ndarray(tmp_path / "rows", rows)
    m = np_ninja.open_existing(tmp_path / "rows")
    assert np.array_equal(m.__getitems__([3, 0]), rows[[3, 0]]) and m.__getitems__([3, 0]).flags.writeable
    loader = torch.utils.data.DataLoader(m, batch_size=8, shuffle=True, num_workers=workers,
                                         multiprocessing_context=context, generator=torch.Generator().manual_seed(2))
    seen = torch.cat(list(loader))
    assert seen.shape == (40, 3) and sorted(seen[:, 0].tolist()) == rows[:, 0].tolist()
    assert not [w for w in recwarn if "not writable" in str(w.message) or "non-writable" in str(w.message)]


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


# -- dtypes, shared memory and packed batches ----------------------------------------------


def random_samples(dtype, lengths, rng, row_shape=()):
    dtype = np.dtype(dtype)
    shapes = [(n, *row_shape) for n in lengths]
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        return [rng.integers(info.min, info.max, size=shape, endpoint=True, dtype=dtype) for shape in shapes]
    if dtype.kind == "f":
        return [(rng.random(shape) * 1e3 - 500).astype(dtype) for shape in shapes]
    return [rng.random(shape) < 0.5 for shape in shapes]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(pair=st.sampled_from(SAFE_PAIRS), lengths=st.lists(st.integers(0, 6), min_size=1, max_size=6),
       data=st.data())
def test_padded_batches_of_any_safe_dtype_equal_the_per_sample_reference(tmp_path_factory, pair, lengths, data):
    stored, wanted = map(np.dtype, pair)
    samples = random_samples(stored, lengths, np.random.default_rng(len(lengths)))
    m = RaggedMmap.from_lists(tmp_path_factory.mktemp("p") / "m", samples)
    max_len = data.draw(st.none() | st.integers(0, 7))
    dataset = RaggedBatches(m, pad_value=1, max_len=max_len, dtype=wanted)
    indices = data.draw(st.lists(st.integers(0, len(samples) - 1), min_size=1, max_size=8))
    tensors = collate(dataset.__getitems__(indices), attention_mask=True)
    width = max_len if max_len is not None else max(lengths[i] for i in indices)
    assert tensors["input"].dtype == torch.from_numpy(np.empty(0, wanted)).dtype
    assert tuple(tensors["input"].shape) == (len(indices), width)
    for row, mask, n, i in zip(tensors["input"].numpy(), tensors["attention_mask"], tensors["lengths"], indices):
        kept = min(lengths[i], width)
        assert n == kept and mask.tolist() == [True] * kept + [False] * (width - kept)
        assert np.array_equal(row[:kept], samples[i][:kept].astype(wanted)) and (row[kept:] == 1).all()
    assert torch.equal(dataset[indices[0]], torch.from_numpy(samples[indices[0]].astype(wanted)))


def test_ragged_batches_refuse_an_unsafe_dtype_and_a_bad_max_len(sequences):
    m, _ = sequences
    with pytest.raises(TypeError, match="cannot hold samples of int32 exactly"):
        RaggedBatches(m, dtype=np.int16)
    with pytest.raises(ValueError, match="max_len must be a non-negative integer"):
        RaggedBatches(m, max_len=-1)


def test_contiguous_batches_convert_to_the_dtype_asked(sequences):
    m, samples = sequences
    batch = RaggedBatches(m, padded=False, dtype=np.int64).__getitems__([3, 1])
    assert batch.values.dtype == np.int64 and batch.values.tolist() == samples[3].tolist() + samples[1].tolist()


def test_shared_array_is_in_shared_memory_and_collate_keeps_it():
    array = shared_array((3, 4), np.int64)
    array[:] = np.arange(12).reshape(3, 4)
    tensor = collate(PaddedBatch(array, np.array([4, 4, 4])))["input"]
    assert tensor.is_shared() and tensor.data_ptr() == array.ctypes.data and tensor.tolist() == array.tolist()
    text = shared_array((2,), "U3")  # torch has no tensor of these: ordinary memory
    assert text.dtype == np.dtype("U3") and text.shape == (2,) and not isinstance(text.base, torch.Tensor)


def handed_by_reference(tensor):
    """Whether a worker's tensor reaches the main process without its bytes being copied: lent
    from a worker's segment, or in torch's shared memory already."""
    return isinstance(tensor, LentTensor) or tensor.is_shared()


def record_sharing(batch):
    """A collate_fn for workers: ``collate``'s tensors, and whether each is handed over by
    reference."""
    tensors = collate(batch, attention_mask=True)
    tensors["shared_in_worker"] = {k: handed_by_reference(v) for k, v in tensors.items()}
    return tensors


def record_packed_sharing(batch):
    tensors = collate_packed(batch)
    tensors["shared_in_worker"] = {k: handed_by_reference(v) for k, v in tensors.items()
                                   if isinstance(v, torch.Tensor)}
    return tensors


@pytest.mark.parametrize("context", ["fork", "spawn"])
def test_worker_batches_are_written_into_shared_memory(sequences, context):
    m, samples = sequences
    loader = torch.utils.data.DataLoader(RaggedBatches(m, pad_value=-1, dtype=np.int64), batch_size=7,
                                         num_workers=2, multiprocessing_context=context, collate_fn=record_sharing)
    rows = []
    for batch in loader:
        assert all(batch["shared_in_worker"].values()), batch["shared_in_worker"]
        # the lengths travel in the segment of the batch, just before it: one handle for both
        assert 0 < batch["input"].data_ptr() - batch["lengths"].data_ptr() <= 4096
        rows += [row[:n].tolist() for row, n in zip(batch["input"], batch["lengths"])]
    assert rows == [sample.tolist() for sample in samples]
    packed = torch.utils.data.DataLoader(RaggedBatches(m, padded=False), batch_size=7, num_workers=2,
                                         multiprocessing_context=context, collate_fn=record_packed_sharing)
    values = []
    for batch in packed:
        assert all(batch["shared_in_worker"].values()), batch["shared_in_worker"]
        values += batch["input_ids"].tolist()
    assert values == np.concatenate(samples).tolist()


@pytest.mark.skipif(not _handoff.AVAILABLE, reason="worker segments need memfd_create (Linux)")
@pytest.mark.parametrize("padded", [True, False])
def test_worker_segments_are_used_again_only_once_the_main_process_is_done(tmp_path, padded):
    samples = [np.full(1 + i % 9, i, np.int64) for i in range(400)]
    m = RaggedMmap.from_lists(tmp_path / "m", samples)
    collate_fn = collate if padded else collate_packed

    def loader():
        return torch.utils.data.DataLoader(RaggedBatches(m, padded=padded, pad_value=-1), batch_size=4,
                                           shuffle=True, num_workers=2, multiprocessing_context="fork",
                                           collate_fn=collate_fn, generator=torch.Generator().manual_seed(5))

    def values(batch):
        if padded:
            return [row[:n].tolist() for row, n in zip(batch["input"], batch["lengths"])]
        cu = batch["cu_seqlens"].tolist()
        return [batch["input_ids"][a:b].tolist() for a, b in zip(cu, cu[1:])]

    def check(batch):
        for got in values(batch):
            assert got == samples[got[0]].tolist()

    before, segments = set(_handoff._mapped), set()
    for batch in loader():  # each batch dropped before the next: its segment goes back to its worker
        check(batch)
        segments |= set(_handoff._mapped) - before
    assert 0 < len(segments) < 40, len(segments)  # 100 batches through a few segments per worker
    held = list(loader())  # every batch kept: no segment may be written again meanwhile
    for batch in held:
        check(batch)
    assert sorted(v[0] for batch in held for v in values(batch)) == list(range(400))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(dtype=st.sampled_from(NUMERIC), lengths=st.lists(st.integers(0, 5), max_size=8),
       row_shape=st.sampled_from([(), (2,), (1, 3)]), data=st.data())
def test_packed_batches_equal_the_per_sample_reference(tmp_path_factory, dtype, lengths, row_shape, data):
    samples = random_samples(dtype, lengths, np.random.default_rng(len(lengths)), row_shape)
    if samples:
        m = RaggedMmap.from_lists(tmp_path_factory.mktemp("k") / "m", samples)
        indices = data.draw(st.lists(st.integers(0, len(samples) - 1), max_size=8))
        batch = m.take(indices)
    else:
        indices, batch = [], []
    packed = collate_packed(batch)
    chosen = [samples[i] for i in indices]
    expected_lengths = [len(sample) for sample in chosen]
    assert packed["cu_seqlens"].dtype == torch.int32
    assert packed["cu_seqlens"].tolist() == np.concatenate([[0], np.cumsum(expected_lengths)]).tolist()
    assert packed["position_ids"].tolist() == [p for n in expected_lengths for p in range(n)]
    assert packed["max_seqlen"] == max(expected_lengths, default=0)
    if chosen:
        assert np.array_equal(packed["input_ids"].numpy(), np.concatenate(chosen))
        if batch.values.size:  # the batch's buffer, not a copy
            assert packed["input_ids"].data_ptr() == batch.values.ctypes.data
        from_list = collate_packed([np.array(sample) for sample in chosen])
        assert all(torch.equal(from_list[k], packed[k]) for k in ("input_ids", "cu_seqlens", "position_ids"))


def test_packed_batches_need_samples_of_one_row_shape(tmp_path):
    m = RaggedMmap.from_lists(tmp_path / "m", [np.ones((2, 3)), np.ones((1, 4)), np.float64(5)])
    with pytest.raises(ValueError, match=r"sample 1 has shape \(1, 4\), sample 0 has shape \(2, 3\)"):
        collate_packed(m.take([0, 1]))
    with pytest.raises(ValueError, match="sample 1 of the batch is a scalar"):
        collate_packed(m.take([0, 2]))
    with pytest.raises(TypeError, match="collate_packed takes"):
        collate_packed((np.ones(3), np.ones(2)))


def test_packed_batches_of_a_sharded_map(tmp_path):
    samples = [np.arange(i % 5, dtype=np.int32) for i in range(40)]
    sharded = ShardedMmap.from_generator(tmp_path / "s", iter(samples), part_size=7)
    packed = collate_packed(RaggedBatches(sharded, padded=False).__getitems__([39, 3, 8]))
    assert packed["input_ids"].tolist() == samples[39].tolist() + samples[3].tolist() + samples[8].tolist()
    assert packed["cu_seqlens"].tolist() == [0, 4, 7, 10] and packed["max_seqlen"] == 4
    padded = collate(RaggedBatches(sharded, dtype=np.int64).__getitems__([4, 0]))
    assert padded["input"].tolist() == [[0, 1, 2, 3], [0, 0, 0, 0]] and padded["lengths"].tolist() == [4, 0]


# -- the threaded loader ---------------------------------------------------------------------


def as_lists(batch):
    if isinstance(batch, dict):
        return {k: as_lists(v) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return [as_lists(v) for v in batch]
    return batch.tolist() if isinstance(batch, (torch.Tensor, np.ndarray)) else batch


@pytest.fixture(scope="module")
def token_map(tmp_path_factory):
    rng = np.random.default_rng(3)
    samples = [rng.integers(0, 1000, size=rng.integers(0, 12), dtype=np.int32) for _ in range(97)]
    return RaggedMmap.from_lists(tmp_path_factory.mktemp("tokens") / "m", samples), samples


@settings(max_examples=40, deadline=None)
@given(batch_size=st.integers(1, 40), shuffle=st.booleans(), drop_last=st.booleans(), seed=st.integers(0, 2**32),
       num_threads=st.integers(0, 3), prefetch=st.integers(1, 3), padded=st.booleans(),
       dtype=st.sampled_from([b for a, b in SAFE_PAIRS if a == np.int32]), lookahead=st.integers(0, 5))
def test_loader_gives_the_batches_of_a_dataloader(token_map, batch_size, shuffle, drop_last, seed, num_threads,
                                                  prefetch, padded, dtype, lookahead):
    m, samples = token_map
    dataset = RaggedBatches(m, padded=padded, pad_value=-1, dtype=dtype)
    collate_fn = functools.partial(collate, attention_mask=True) if padded else collate_packed
    loader = Loader(dataset, batch_size=batch_size, shuffle=shuffle, drop_last=drop_last, collate_fn=collate_fn,
                    num_threads=num_threads, prefetch=prefetch, seed=seed, lookahead=lookahead)
    reference = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, drop_last=drop_last,
                                            collate_fn=collate_fn, generator=torch.Generator().manual_seed(seed))
    for _ in range(2):  # two epochs: each draws the next order
        ours = [as_lists(batch) for batch in loader]
        assert ours == [as_lists(batch) for batch in reference]
        assert len(ours) == len(loader) == len(reference)
    if not shuffle:  # and they hold the samples, in order
        expected = samples[:len(ours) * batch_size] if drop_last else samples
        if padded:
            got = [row[:n] for batch in ours for row, n in zip(batch["input"], batch["lengths"])]
        else:
            got = [batch["input_ids"][a:b] for batch in ours
                   for a, b in zip(batch["cu_seqlens"], batch["cu_seqlens"][1:])]
        assert got == [sample.astype(dtype).tolist() for sample in expected]


def test_loader_takes_samplers_batch_samplers_and_unbatched_reads(tmp_path, token_map):
    rows = np_ninja.from_ndarray(tmp_path / "rows", np.arange(60, dtype=np.float32).reshape(20, 3))
    sampler = [5, 3, 19, 0, 7]
    for kwargs in ({"sampler": sampler, "batch_size": 2}, {"batch_sampler": [[1, 2], [9], [4, 4, 0]]},
                   {"batch_size": None, "sampler": sampler}, {"batch_size": 6, "drop_last": True}):
        ours = [as_lists(batch) for batch in Loader(rows, num_threads=2, **kwargs)]
        assert ours == [as_lists(batch) for batch in torch.utils.data.DataLoader(rows, **kwargs)]
    torch.manual_seed(11)
    ours = [as_lists(b) for b in Loader(rows, batch_size=4, shuffle=True)]  # no seed: torch's global generator
    torch.manual_seed(11)
    assert ours == [as_lists(b) for b in torch.utils.data.DataLoader(rows, batch_size=4, shuffle=True)]


def test_loader_refuses_what_a_dataloader_refuses(token_map):
    m, _ = token_map
    with pytest.raises(ValueError, match="mutually exclusive"):
        Loader(m, batch_sampler=[[0]], shuffle=True)
    with pytest.raises(ValueError, match="mutually exclusive"):
        Loader(m, sampler=[0, 1], shuffle=True)
    with pytest.raises(ValueError, match="mutually exclusive"):
        Loader(m, batch_size=None, drop_last=True)
    with pytest.raises(ValueError, match="num_threads must be an integer of at least 0"):
        Loader(m, num_threads=-1)
    with pytest.raises(ValueError, match="prefetch must be an integer of at least 1"):
        Loader(m, prefetch=0)
    with pytest.raises(TypeError, match="map-style"):
        Loader(Stream())
    with pytest.warns(UserWarning, match="no accelerator"):
        loader = Loader(RaggedBatches(m), batch_size=4, collate_fn=collate, pin_memory=True)
    assert not loader.pin_memory and len(list(loader)) == 25


class Stream(torch.utils.data.IterableDataset):
    def __iter__(self):
        return iter(range(3))


class FailsAt(torch.utils.data.Dataset):
    """Samples 0..n, of which ``bad`` raises when read."""

    def __init__(self, n, bad):
        self.n, self.bad = n, bad

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        if i == self.bad:
            raise KeyError(f"sample {i} is damaged")
        return torch.tensor([i])


def loader_threads():
    return [t for t in threading.enumerate() if t.name.startswith("mmap_ninja-loader")]


def test_loader_raises_errors_where_the_loop_iterates_and_stops_its_threads():
    seen = []
    with pytest.raises(KeyError, match="sample 13 is damaged"):
        for batch in Loader(FailsAt(40, 13), batch_size=4, num_threads=2):
            seen += batch.flatten().tolist()
    assert seen == list(range(12))  # every batch before the bad one, in order
    gc.collect()
    assert loader_threads() == []


def test_leaving_the_loop_early_stops_the_threads(token_map):
    m, samples = token_map
    loader = Loader(RaggedBatches(m), batch_size=3, collate_fn=collate, num_threads=3, prefetch=4)
    for k, batch in enumerate(loader):
        assert batch["lengths"].tolist() == [len(s) for s in samples[3 * k:3 * k + 3]]
        if k == 2:
            break
    gc.collect()
    assert loader_threads() == []
    iterator = iter(loader)
    next(iterator)
    assert loader_threads()
    iterator.close()
    assert loader_threads() == []


def test_loaders_over_a_map_being_extended_by_another_thread(tmp_path):
    m = RaggedMmap.from_lists(tmp_path / "m", [np.full(i % 7, i, np.int64) for i in range(200)])
    writer = RaggedMmap(tmp_path / "m", mode="r+")
    stop = threading.Event()

    def extend():
        while not stop.is_set():
            writer.extend([np.full(3, -5, np.int64)] * 4)

    thread = threading.Thread(target=extend)
    thread.start()
    try:
        for _ in range(3):
            for batch in Loader(RaggedBatches(m), batch_size=16, shuffle=True, collate_fn=collate, seed=1):
                for row, n in zip(batch["input"], batch["lengths"]):
                    values = row[:n]
                    assert (values == values[0]).all() if n else True
                    assert n == (values[0].item() % 7 if n else 0)
    finally:
        stop.set()
        thread.join()


def test_buffer_pool_lends_memory_again_only_once_every_view_is_gone():
    pool = BufferPool(keep=2)
    first = pool((4, 5), np.int64)
    first[:] = 1
    address = first.ctypes.data
    tensor = torch.from_numpy(first[1:])
    del first
    second = pool((4, 5), np.int64)  # the first's memory is still viewed by the tensor
    assert second.ctypes.data != address
    second[:] = 2
    assert (tensor == 1).all()
    del tensor
    third = pool((3, 5), np.int64)  # fits in the first's memory, now free
    assert third.ctypes.data == address
    held = [pool((100 + k,), np.uint8) for k in range(5)]
    del held, second, third
    assert len(pool._free) == 2  # at most keep free buffers, the largest kept
    assert pool((0, 3), np.float32).shape == (0, 3)


@pytest.mark.skipif(not _handoff.AVAILABLE, reason="worker segments need memfd_create (Linux)")
def test_lent_tensors_travel_by_reference_and_free_their_segment_when_gone():
    import pickle
    from multiprocessing.reduction import ForkingPickler

    memory = _handoff.BatchMemory(batch=3)
    array = memory((3, 4), np.dtype(np.int32))
    array[:] = np.arange(12).reshape(3, 4)
    memory.lengths[:] = [4, 2, 0]
    lent, lengths = _handoff.lent_tensor(array), _handoff.lent_tensor(memory.lengths)
    assert isinstance(lent, LentTensor) and type(lent + 1) is torch.Tensor
    plain = pickle.loads(pickle.dumps(lent))  # pickled for a file: the values themselves
    assert type(plain) is torch.Tensor and plain.tolist() == array.tolist()
    segment = lent._handoff
    got = ForkingPickler.loads(bytes(ForkingPickler.dumps({"input": lent, "lengths": lengths})))
    assert segment.flag[0] == 1 and got["input"].tolist() == array.tolist() and got["lengths"].tolist() == [4, 2, 0]
    del lent, lengths, array, memory
    assert not segment.free()  # lent to the reader
    del got
    assert segment.flag[0] == 0 and segment.free()
    again = _handoff.BatchMemory()((2, 2), np.dtype(np.int32))
    assert again.base is not None and _handoff.lent_tensor(again)._handoff is segment  # used again
    assert _handoff.lent_tensor(np.zeros(3)) is None
    with pytest.raises(RuntimeError, match="which this process never received"):
        _handoff._main_segment((1, "unknown"), 7, None, 4096)


def changed_in_place(change, batch):
    """A collate_fn that changes the layout of ``collate``'s ``input`` in place."""
    out = collate(batch)
    tensor = out["input"]
    if change == "t_":
        tensor.t_()
    elif change == "resize_":
        tensor.resize_(2, 3)
    elif change == "as_strided_":
        tensor.as_strided_((3, 2), (1, 3), 1)
    elif change == "set_":
        tensor.set_(torch.arange(100, 112).reshape(3, 4))
    elif change == "set_ to lengths":  # another tensor of the same segment
        tensor.set_(out["lengths"])
    return out


def in_a_segment(tensor):
    """Whether ``tensor``'s memory lies in a worker's segment mapped by this process."""
    start = tensor.data_ptr()
    return any(m.ctypes.data <= start < m.ctypes.data + m.nbytes for m in _handoff._mapped.values())


@pytest.mark.skipif(not _handoff.AVAILABLE, reason="worker segments need memfd_create (Linux)")
@pytest.mark.parametrize("change, by_reference", [("t_", True), ("resize_", True), ("as_strided_", True),
                                                  ("set_", False), ("set_ to lengths", True)])
def test_a_batch_changed_in_place_in_a_worker_arrives_as_it_was_left(tmp_path, change, by_reference):
    samples = [np.arange(1 + i % 4, dtype=np.int64) * 100 + i for i in range(24)]
    m = RaggedMmap.from_lists(tmp_path / "m", samples)

    def batches(workers):
        loader = torch.utils.data.DataLoader(RaggedBatches(m, pad_value=-1), batch_size=4, num_workers=workers,
                                             collate_fn=functools.partial(changed_in_place, change))
        return [(batch["input"].tolist(), tuple(batch["input"].shape), in_a_segment(batch["input"]))
                for batch in loader]

    alone, workers = batches(0), batches(2)
    assert [(values, shape) for values, shape, _ in workers] == [(values, shape) for values, shape, _ in alone]
    assert all(shared == by_reference for _, _, shared in workers)
    if change == "t_":
        assert workers[0][0] == [[0, 1, 2, 3], [-1, 101, 102, 103], [-1, -1, 202, 203], [-1, -1, -1, 303]]


# -- distributed sampling ---------------------------------------------------------------------


@settings(max_examples=150, deadline=None)
@given(n=st.integers(0, 60), world=st.integers(1, 5), drop_last=st.booleans(), shuffle=st.booleans(),
       seed=st.integers(0, 2**31), epoch=st.integers(0, 3), data=st.data())
def test_distributed_sampler_gives_torchs_indices(n, world, drop_last, shuffle, seed, epoch, data):
    rank = data.draw(st.integers(0, world - 1))
    ours = DistributedSampler(range(n), world, rank, shuffle=shuffle, seed=seed, drop_last=drop_last)
    torchs = torch.utils.data.DistributedSampler(range(n), world, rank, shuffle=shuffle, seed=seed,
                                                 drop_last=drop_last)
    ours.set_epoch(epoch)
    torchs.set_epoch(epoch)
    assert list(ours) == list(torchs) and len(ours) == len(torchs)


@settings(max_examples=150, deadline=None)
@given(n=st.integers(1, 80), first=st.integers(1, 5), then=st.integers(1, 5), drop_last=st.booleans(),
       block_size=st.none() | st.integers(1, 9), data=st.data())
def test_an_epoch_resumed_on_another_number_of_ranks_reads_the_rest_once(n, first, then, drop_last, block_size,
                                                                         data):
    def ranks(world):
        samplers = [DistributedSampler(range(n), world, r, seed=3, drop_last=drop_last, block_size=block_size)
                    for r in range(world)]
        for sampler in samplers:
            sampler.set_epoch(1)
        return samplers

    before = ranks(first)
    steps = data.draw(st.integers(0, len(before[0])))
    read = []
    for sampler in before:  # every rank takes `steps` indices, then the run stops
        iterator = iter(sampler)
        read += [next(iterator) for _ in range(steps)]
    states = [sampler.state_dict() for sampler in before]
    assert all(state == states[0] for state in states)
    after = ranks(then)
    for sampler in after:
        sampler.load_state_dict(states[0])
        rest = list(sampler)
        assert len(rest) == len(sampler)
        read += rest
    counts = np.bincount(read, minlength=n)
    if drop_last:  # nothing twice; at most a rank's remainder left out, per run
        assert counts.max(initial=0) <= 1 and n - counts.sum() < first + then
    else:  # everything; twice only what torch's padding repeats, per run
        assert counts.min() >= 1 and counts.sum() - n < first + then


def test_block_shuffle_reads_a_bounded_region_at_a_time(tmp_path):
    sampler = DistributedSampler(range(1000), 1, 0, seed=9, block_size=25)
    order = sampler.order()
    assert sorted(order.tolist()) == list(range(1000))
    window = BLOCK_WINDOW * 25
    for start in range(0, 1000, window):
        blocks = set((order[start:start + window] // 25).tolist())
        assert len(blocks) <= BLOCK_WINDOW + 1
    assert np.array_equal(order, DistributedSampler(range(1000), 1, 0, seed=9, block_size=25).order())
    assert not np.array_equal(order, sampler.order(epoch=1))
    assert not np.array_equal(order[:window], np.sort(order[:window]))  # shuffled within a window
    samples = [np.array([i], np.int64) for i in range(300)]
    sharded = ShardedMmap.from_generator(tmp_path / "s", iter(samples), part_size=30)
    by_parts = DistributedSampler(sharded, 2, 1, seed=1, block_size="parts")
    indices = list(by_parts)
    assert len(indices) == 150 and set(indices) | set(DistributedSampler(sharded, 2, 0, seed=1,
                                                                         block_size="parts")) == set(range(300))


@pytest.mark.parametrize("block_window", [1, 2, 6])
def test_block_window_bounds_the_parts_a_stretch_of_the_order_reads(tmp_path, block_window):
    sharded = ShardedMmap.from_generator(tmp_path / "s", (np.array([i], np.int64) for i in range(600)), part_size=50)
    sampler = DistributedSampler(sharded, 1, 0, seed=3, block_size="parts", block_window=block_window)
    order = np.array(list(sampler))
    assert sorted(order.tolist()) == list(range(600))
    window = block_window * 50
    for start in range(0, 600, window):  # a window's worth of positions reads at most one part more
        assert len(set((order[start:start + window] // 50).tolist())) <= block_window + 1
    if block_window == 1:
        assert all(len(set((order[k:k + 25] // 50).tolist())) <= 2 for k in range(0, 600, 25))
    state = sampler.state_dict()
    assert state["block_window"] == block_window
    with pytest.raises(ValueError, match="block_window"):
        DistributedSampler(sharded, 1, 0, seed=3, block_size="parts", block_window=block_window + 1).load_state_dict(
            state)
    with pytest.raises(ValueError, match="block_window must be a positive integer"):
        DistributedSampler(sharded, 1, 0, block_size="parts", block_window=0)
    default = DistributedSampler(sharded, 1, 0, seed=3, block_size="parts")
    old_state = {k: v for k, v in default.state_dict().items() if k != "block_window"}  # saved before it existed
    default.load_state_dict(old_state)


@pytest.mark.parametrize("block_size", [None, 7])
def test_an_epoch_resumed_after_the_map_grew_reads_each_sample_of_its_length_once(tmp_path, block_size):
    m = RaggedMmap.from_lists(tmp_path / "m", [np.array([i]) for i in range(62)])
    first = [DistributedSampler(m, 2, r, seed=5, block_size=block_size) for r in range(2)]
    for sampler in first:
        sampler.set_epoch(2)
    iterators = [iter(sampler) for sampler in first]
    read = [next(iterator) for iterator in iterators for _ in range(9)]
    m.extend([np.array([i]) for i in range(62, 102)])  # the map grows mid-epoch
    read += [next(iterator) for iterator in iterators]
    states = [sampler.state_dict() for sampler in first]
    assert all(state == states[0] for state in states)
    assert states[0]["consumed"] == 20 and states[0]["epoch_len"] == 62 and states[0]["dataset_len"] == 102
    for world in (1, 3):
        grown = RaggedMmap(tmp_path / "m")
        rest = []
        for rank in range(world):
            sampler = DistributedSampler(grown, world, rank, seed=5, block_size=block_size)
            sampler.load_state_dict(states[0])
            indices = list(sampler)
            assert len(indices) == len(sampler) == 42 // world
            rest += indices
        counts = np.bincount(read + rest, minlength=102)
        assert counts[:62].tolist() == [1] * 62 and counts[62:].sum() == 0, world
    for sampler in first:  # the next epoch is drawn over the grown map
        sampler.set_epoch(3)
    assert sorted(list(first[0]) + list(first[1])) == list(range(102))


@pytest.mark.parametrize("field, value, error", [
    ("consumed", -1, ValueError), ("consumed", 63, ValueError), ("consumed", 2.5, TypeError),
    ("consumed", None, TypeError), ("epoch", -1, ValueError), ("epoch", "3", TypeError),
    ("epoch_len", 103, ValueError), ("epoch_len", -4, ValueError), ("epoch_len", True, TypeError),
    ("dataset_len", 200, ValueError), ("dataset_len", -1, ValueError), ("dataset_len", 1.0, TypeError),
    ("consumed", "missing", ValueError), ("seed", 6, ValueError),
])
def test_a_state_with_a_bad_field_is_refused_naming_it(tmp_path, field, value, error):
    m = RaggedMmap.from_lists(tmp_path / "m", [np.array([i]) for i in range(62)])
    sampler = DistributedSampler(m, 2, 0, seed=5)
    iterator = iter(sampler)
    [next(iterator) for _ in range(5)]
    m.extend([np.array([i]) for i in range(62, 102)])
    state = sampler.state_dict()
    bad = {k: v for k, v in state.items() if k != field}
    if value != "missing":
        bad[field] = value
    fresh = DistributedSampler(RaggedMmap(tmp_path / "m"), 1, 0, seed=5)
    with pytest.raises(error, match=field):
        fresh.load_state_dict(bad)
    assert fresh.state_dict()["consumed"] == 0  # nothing taken from the refused state
    fresh.load_state_dict(state)
    assert len(list(fresh)) == 52


def test_a_state_without_the_epochs_length_is_read_as_over_dataset_len(tmp_path):
    m = RaggedMmap.from_lists(tmp_path / "m", [np.array([i]) for i in range(40)])
    sampler = DistributedSampler(m, 2, 1, seed=2)
    read = list(itertools.islice(iter(sampler), 6))
    state = {k: v for k, v in sampler.state_dict().items() if k not in ("epoch_len", "block_window")}  # as before
    assert state == {"epoch": 0, "consumed": 12, "seed": 2, "shuffle": True, "block_size": None,
                     "dataset_len": 40}
    m.extend([np.array([i]) for i in range(40, 50)])
    resumed = DistributedSampler(RaggedMmap(tmp_path / "m"), 1, 0, seed=2)
    resumed.load_state_dict(state)
    rest = list(resumed)
    assert len(rest) == 28 and max(rest) < 40 and not set(rest) & set(read)

def test_distributed_sampler_refusals(token_map):
    m, _ = token_map
    with pytest.raises(RuntimeError, match="initialized process group"):
        DistributedSampler(m)
    with pytest.raises(ValueError, match=r"Invalid rank 2, rank should be in the interval \[0, 1\]"):
        DistributedSampler(m, 2, 2)
    with pytest.raises(ValueError, match="block_size must be a positive integer or 'parts'"):
        DistributedSampler(m, 1, 0, block_size=0)
    with pytest.raises(ValueError, match="needs a sharded map"):
        DistributedSampler(m, 1, 0, block_size="parts")
    state = DistributedSampler(m, 2, 0, seed=1).state_dict()
    with pytest.raises(ValueError, match="saved with seed=1"):
        DistributedSampler(m, 1, 0, seed=2).load_state_dict(state)
    with pytest.raises(ValueError, match="saved over 97 samples"):
        DistributedSampler(range(5), 1, 0, seed=1).load_state_dict(state)
    with pytest.raises(ValueError, match="consumed must be an integer"):
        DistributedSampler(m, 1, 0, seed=1).load_state_dict({**state, "consumed": 98})


def read_with_process_group(rank, world, address, out_dir):
    """A rank of a real gloo process group: reads its share of an epoch through a DataLoader."""
    torch.distributed.init_process_group("gloo", init_method=address, rank=rank, world_size=world)
    try:
        m = RaggedMmap(out_dir / "m")
        sampler = DistributedSampler(m, seed=4)  # ranks and world size from the group
        loader = torch.utils.data.DataLoader(RaggedBatches(m), batch_size=8, sampler=sampler, collate_fn=collate,
                                             num_workers=2, multiprocessing_context="fork")
        firsts = [row[0].item() for batch in loader for row in batch["input"]]
        np.save(out_dir / f"rank{rank}.npy", np.array(firsts))
        blend = Blend([m, RaggedMmap(out_dir / "m")], [0.7, 0.3], size=500, seed=6)  # the same in every process
        np.save(out_dir / f"blend{rank}.npy", np.stack([blend.dataset_index, blend.sample_index]))
        torch.distributed.barrier()
    finally:
        torch.distributed.destroy_process_group()


def test_a_real_process_group_reads_every_sample_once(tmp_path):
    import socket

    RaggedMmap.from_lists(tmp_path / "m", [np.full(1 + i % 4, i, np.int64) for i in range(101)])
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    torch.multiprocessing.spawn(read_with_process_group, args=(2, f"tcp://127.0.0.1:{port}", tmp_path), nprocs=2)
    read = [np.load(tmp_path / f"rank{r}.npy").tolist() for r in range(2)]
    assert len(read[0]) == len(read[1]) == 51  # padded to equal lengths, as torch pads
    assert set(read[0]) | set(read[1]) == set(range(101)) and len(read[0]) + len(read[1]) - 101 == 1
    blends = [np.load(tmp_path / f"blend{r}.npy") for r in range(2)]
    assert np.array_equal(blends[0], blends[1]) and abs((blends[0][0] == 0).sum() - 350) <= 1


def resumable_rank(rank, world, address, out_dir, phase, steps, states_from, url=None):
    """A rank of a real gloo process group reading a sharded map (at ``url`` if given, through
    the cache of ``$MMAP_NINJA_CACHE``) through a StatefulDataLoader with 2 workers: it stops
    after ``steps`` batches and saves its loader's state, or, given the states of an earlier run
    (``states_from`` ranks), goes on from them to the end of the epoch."""
    from torchdata.stateful_dataloader import StatefulDataLoader

    torch.distributed.init_process_group("gloo", init_method=address, rank=rank, world_size=world)
    try:
        sharded = ShardedMmap(url or out_dir / "sharded")
        sampler = DistributedSampler(sharded, seed=8, block_size="parts")
        sampler.set_epoch(3)
        loader = StatefulDataLoader(RaggedBatches(sharded), batch_size=4, sampler=sampler, num_workers=2,
                                    collate_fn=collate, multiprocessing_context="fork")
        if states_from:
            loader.load_state_dict(torch.load(out_dir / f"state{rank % states_from}.pt", weights_only=False))
        firsts = []
        for step, batch in enumerate(loader):
            firsts += [row[0].item() for row in batch["input"]]
            if steps is not None and step + 1 == steps:
                torch.save(loader.state_dict(), out_dir / f"state{rank}.pt")
                break
        np.save(out_dir / f"{phase}-rank{rank}.npy", np.array(firsts, dtype=np.int64))
        torch.distributed.barrier()
    finally:
        torch.distributed.destroy_process_group()


def free_address():
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"tcp://127.0.0.1:{s.getsockname()[1]}"


@pytest.mark.parametrize("where", ["local", "url"])
def test_a_run_stopped_mid_epoch_resumes_on_2_1_and_3_ranks(tmp_path, where, request, monkeypatch):
    n = 203
    ShardedMmap.from_generator(tmp_path / "sharded", (np.full(1 + i % 3, i, np.int64) for i in range(n)),
                               part_size=20)
    url = None
    if where == "url":  # in object storage, read through one cache by every rank and worker
        from mmap_ninja import remote

        url = request.getfixturevalue("s3") + "/sharded"
        remote.push(tmp_path / "sharded", url)
        monkeypatch.setenv("MMAP_NINJA_CACHE", str(tmp_path / "cache"))
    torch.multiprocessing.spawn(resumable_rank, args=(2, free_address(), tmp_path, "first", 7, 0, url), nprocs=2)
    first = [np.load(tmp_path / f"first-rank{r}.npy").tolist() for r in range(2)]
    assert len(first[0]) == len(first[1]) == 28
    for world in (2, 1, 3):
        phase = f"resumed{world}"
        torch.multiprocessing.spawn(resumable_rank, args=(world, free_address(), tmp_path, phase, None, 2, url),
                                    nprocs=world)
        rest = [np.load(tmp_path / f"{phase}-rank{r}.npy").tolist() for r in range(world)]
        counts = np.bincount(first[0] + first[1] + sum(rest, []), minlength=n)
        # the whole epoch, nothing read twice but what torch's padding repeats (at most a rank's worth)
        assert counts.min() == 1 and counts.sum() - n < world, (world, counts.sum())


# -- reading ahead from disk ------------------------------------------------------------------


class Recording(torch.utils.data.Dataset):
    """A dataset that records, in order, the batches asked of the kernel and the batches read."""

    def __init__(self, n):
        self.n = n
        self.events = []
        self.lock = threading.Lock()

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        return i

    def __getitems__(self, indices):
        with self.lock:
            self.events.append(("read", list(indices)))
        return list(indices)

    def prefetch(self, indices):
        with self.lock:
            self.events.append(("prefetch", [int(i) for i in indices]))


@pytest.mark.parametrize("lookahead", [0, 1, 3])
def test_the_loader_asks_for_the_batches_ahead_before_reading_each(lookahead):
    dataset = Recording(50)
    batches = [batch.tolist() for batch in Loader(dataset, batch_size=4, num_threads=0, lookahead=lookahead)]
    assert batches == [list(range(a, min(a + 4, 50))) for a in range(0, 50, 4)]
    asked = [indices for what, indices in dataset.events if what == "prefetch"]
    assert asked == (batches if lookahead else [])  # each batch once, in order
    for k, (what, indices) in enumerate(dataset.events):
        if what == "read" and lookahead:
            j = batches.index(indices)
            wanted = batches[j:j + lookahead + 1]
            assert all(("prefetch", later) in dataset.events[:k] for later in wanted), (j, dataset.events[:k])


def test_the_loader_refuses_a_negative_lookahead_and_reads_datasets_that_cannot_prefetch(token_map):
    m, samples = token_map
    with pytest.raises(ValueError, match="lookahead"):
        Loader(m, lookahead=-1)
    plain = [np.arange(3)] * 10  # no prefetch: read as it is
    assert len(list(Loader(plain, batch_size=3, lookahead=2))) == 4


def test_lookahead_sampler_asks_for_single_indices_a_batch_at_a_time():
    dataset = Recording(20)
    sampler = LookaheadSampler(range(20), dataset, batches=2, batch_size=3)
    assert len(sampler) == 20
    yielded = []
    for i in sampler:
        yielded.append(i)
        asked = [x for what, indices in dataset.events if what == "prefetch" for x in indices]
        assert asked == list(range(len(asked)))  # in order, each once
        assert len(asked) >= min(20, len(yielded) + 4)  # the next batch and the one after (of 3) begun
    assert yielded == list(range(20))
    assert [indices for _, indices in dataset.events] == [[0, 1, 2], [3, 4, 5], [6, 7, 8], [9, 10, 11],
                                                          [12, 13, 14], [15, 16, 17], [18, 19]]
    with pytest.raises(ValueError, match="batches"):
        LookaheadSampler(range(3), dataset, batches=-1)
    with pytest.raises(ValueError, match="batch_size"):
        LookaheadSampler(range(3), dataset, batch_size=0)


class Spanning(Recording):
    """A recording dataset that wants to be asked ``span`` samples ahead (as a map at a URL)."""

    def __init__(self, n, span):
        super().__init__(n)
        self.prefetch_span = span


@settings(max_examples=60, deadline=None)
@given(n=st.integers(0, 300), batch=st.integers(1, 40), batches=st.integers(1, 5), span=st.integers(0, 200),
       single=st.booleans())
def test_lookahead_asks_at_least_the_dataset_span_ahead(n, batch, batches, span, single):
    dataset = Spanning(n, span)
    items = range(n) if single else torch.utils.data.BatchSampler(range(n), batch, False)
    sampler = LookaheadSampler(items, torch.utils.data.Subset(dataset, list(range(n))), batches=batches,
                               batch_size=batch if single else None)
    yielded = []
    for item in sampler:
        yielded.extend([item] if single else item)
        asked = [x for what, indices in dataset.events if what == "prefetch" for x in indices]
        assert asked == list(range(len(asked)))  # in order, each once
        assert len(asked) >= min(n, len(yielded) + span)  # the dataset's span past what was yielded
    assert yielded == list(range(n))


def test_the_distributed_sampler_asks_a_dataset_with_a_span_ahead_and_yields_the_same_order():
    dataset = Spanning(500, 120)
    plain = DistributedSampler(Recording(500), num_replicas=3, rank=1, seed=4)
    sampler = DistributedSampler(dataset, num_replicas=3, rank=1, seed=4)
    yielded = []
    for index in sampler:
        yielded.append(index)
        asked = [x for what, indices in dataset.events if what == "prefetch" for x in indices]
        assert asked == list(sampler.order()[1::3][:len(asked)])  # this rank's order, each once
        assert len(asked) >= min(len(sampler), len(yielded) + 120)
    assert yielded == list(plain)
    half = DistributedSampler(dataset, num_replicas=3, rank=1, seed=4)
    it = iter(half)
    [next(it) for _ in range(40)]
    assert half.state_dict()["consumed"] == 120  # what was given, not what was asked ahead
    # given to a LookaheadSampler, the sampler leaves asking ahead to it: every index asked once
    wrapped = Spanning(500, 120)
    inner = DistributedSampler(wrapped, num_replicas=3, rank=1, seed=4)
    batches = list(LookaheadSampler(torch.utils.data.BatchSampler(inner, 10, False), wrapped, batches=2))
    assert not inner.prefetch_ahead and sum(batches, []) == yielded
    assert [x for what, indices in wrapped.events for x in indices] == yielded


def test_the_loader_looks_ahead_for_a_dataset_with_a_span_even_without_lookahead():
    dataset = Spanning(100, 30)
    seen = 0
    for batch in Loader(dataset, batch_size=10, num_threads=0):
        seen += len(batch)
        asked = [x for what, indices in dataset.events if what == "prefetch" for x in indices]
        assert len(asked) >= min(100, seen + 30)
    assert seen == 100


@pytest.mark.parametrize("context", ["fork", "spawn"])
def test_lookahead_sampler_with_dataloader_workers_and_a_distributed_sampler(tmp_path, context):
    from mmap_ninja import pagecache

    rng = np.random.default_rng(5)
    samples = [rng.integers(0, 1000, size=rng.integers(1, 400), dtype=np.int32) for _ in range(300)]
    m = RaggedMmap.from_lists(tmp_path / "m", samples)
    dataset = RaggedBatches(m, pad_value=-1)
    distributed = DistributedSampler(dataset, num_replicas=2, rank=1, shuffle=True, seed=4)
    sampler = LookaheadSampler(distributed, dataset, batches=3, batch_size=8)
    for epoch in (0, 1):
        sampler.set_epoch(epoch)
        assert distributed.epoch == epoch
        pagecache.evict(m.out_dir / "data.ninja")
        loader = torch.utils.data.DataLoader(dataset, batch_size=8, sampler=sampler, num_workers=2,
                                             multiprocessing_context=context, collate_fn=collate)
        got = [row[:n].tolist() for batch in loader for row, n in zip(batch["input"], batch["lengths"])]
        assert got == [samples[i].tolist() for i in distributed.order(epoch)[1::2]][:len(got)]
        assert len(got) == len(distributed) == len(sampler)
    state = sampler.state_dict()
    assert state == distributed.state_dict()
    sampler.load_state_dict(state)
    batch_sampler = torch.utils.data.BatchSampler(range(len(m)), 16, False)
    batches = LookaheadSampler(batch_sampler, m, batches=2)
    assert list(batches) == list(batch_sampler)


def test_collate_of_a_table_column_read_through_a_wrapper_fn_gives_one_tensor(tmp_path):
    from mmap_ninja.table import TableMmap

    t = TableMmap.from_generator(tmp_path / "t", _table_rows(6), wrapper_fn={"label": float})
    batch = collate(t.__getitems__([3, 1]))
    assert batch["label"].dtype == torch.float64 and batch["label"].tolist() == [3.0, 1.0]

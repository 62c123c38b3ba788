"""Tests of mmap_ninja.blend: datasets mixed by weight."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mmap_ninja.blend import Blend
from mmap_ninja.ragged import RaggedMmap
from mmap_ninja.string import StringsMmap


class Counted:
    """A dataset of ``(name, i)`` that counts its batch calls."""

    def __init__(self, name, n):
        self.name, self.n, self.batch_calls = name, n, 0

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        if not 0 <= i < self.n:
            raise IndexError(i)
        return (self.name, i)

    def __getitems__(self, indices):
        self.batch_calls += 1
        return [self[i] for i in indices]


@settings(max_examples=150, deadline=None)
@given(lengths=st.lists(st.integers(1, 30), min_size=1, max_size=5), data=st.data())
def test_every_prefix_keeps_the_weights_and_each_pass_reads_a_dataset_once(lengths, data):
    weights = data.draw(st.lists(st.floats(0, 10), min_size=len(lengths), max_size=len(lengths)))
    if sum(weights) <= 0:
        weights[0] = 1.0
    size = data.draw(st.none() | st.integers(0, 200))
    seed = data.draw(st.integers(-5, 2**40))
    blend = Blend([Counted(k, n) for k, n in enumerate(lengths)], weights, size=size, seed=seed)
    size = sum(lengths) if size is None else size
    assert len(blend) == size
    shares = np.asarray(weights) / sum(weights)
    counts = np.zeros(len(lengths))
    for prefix, d in enumerate(blend.dataset_index.tolist(), start=1):
        counts[d] += 1
        assert (np.abs(counts - shares * prefix) <= 1 + 1e-9).all()
    for d, n in enumerate(lengths):
        draws = blend.sample_index[blend.dataset_index == d]
        for start in range(0, len(draws), n):  # each pass a new order of all its samples
            chunk = draws[start:start + n]
            assert len(set(chunk.tolist())) == len(chunk) and chunk.max(initial=0) < n
    again = Blend([Counted(k, n) for k, n in enumerate(lengths)], weights, size=size, seed=seed)
    assert np.array_equal(again.dataset_index, blend.dataset_index)
    assert np.array_equal(again.sample_index, blend.sample_index)


@settings(max_examples=150, deadline=None)
@given(weights=st.lists(st.floats(min_value=0, max_value=1.7976931348623157e308, exclude_min=True,
                                  allow_subnormal=True), min_size=1, max_size=5),
       size=st.integers(0, 200), seed=st.integers(0, 2**40))
def test_any_finite_positive_weights_blend_in_their_proportions(weights, size, seed):
    blend = Blend([Counted(k, 7) for k in range(len(weights))], weights, size=size, seed=seed)
    scaled = np.asarray(weights) / max(weights)
    shares = scaled / scaled.sum()
    assert np.allclose(blend.weights, shares, rtol=1e-12, atol=0) and abs(blend.weights.sum() - 1) < 1e-12
    counts = np.zeros(len(weights))
    for prefix, d in enumerate(blend.dataset_index.tolist(), start=1):
        counts[d] += 1
        assert (np.abs(counts - shares * prefix) <= 1 + 1e-9).all()
    assert len(blend) == size


def test_the_largest_finite_weights_blend_evenly():
    blend = Blend([Counted("a", 5), Counted("b", 5)], [1e308, 1e308], size=10)
    assert blend.weights.tolist() == [0.5, 0.5] and sorted(blend.dataset_index.tolist()) == [0] * 5 + [1] * 5

def test_batches_are_gathered_once_per_dataset_in_the_order_asked():
    a, b = Counted("a", 10), Counted("b", 3)
    blend = Blend([a, b], [3, 1], size=40, seed=2)
    indices = [39, 0, 5, 5, 17, 2, -1]
    batch = blend.__getitems__(indices)
    assert batch == [blend[i] for i in indices]
    assert a.batch_calls == 1 and b.batch_calls == 1
    assert blend[[1, 2]] == [blend[1], blend[2]]
    assert sum(1 for name, _ in blend.__getitems__(range(40)) if name == "b") == 10
    with pytest.raises(IndexError):
        blend[40]


def test_a_blend_of_maps_pickles_by_path_and_rebuilds_the_same(tmp_path):
    tokens = RaggedMmap.from_lists(tmp_path / "t", [np.arange(i % 5) for i in range(50)])
    texts = StringsMmap.from_strings(tmp_path / "s", [f"text {i}" for i in range(7)])
    blend = Blend([tokens, texts], [0.5, 0.5], size=30, seed=1)
    data = pickle.dumps(blend)
    assert len(data) < 2000  # paths and arguments, not the index or the samples
    copy = pickle.loads(data)
    assert np.array_equal(copy.sample_index, blend.sample_index)
    for x, y in zip(copy.__getitems__(range(30)), blend.__getitems__(range(30))):
        assert (x == y) if isinstance(x, str) else np.array_equal(x, y)


def test_bad_blends_are_refused():
    with pytest.raises(ValueError, match="one weight per dataset"):
        Blend([Counted("a", 3)], [1, 2])
    with pytest.raises(ValueError, match="not all 0"):
        Blend([Counted("a", 3)], [0])
    with pytest.raises(ValueError, match="non-negative"):
        Blend([Counted("a", 3), Counted("b", 2)], [1, -1])
    for bad in ([1, float("nan")], [float("inf"), 1], [float("-inf"), 1], [0, 0]):
        with pytest.raises(ValueError, match="weights must be finite, non-negative and not all 0"):
            Blend([Counted("a", 3), Counted("b", 2)], bad)
    with pytest.raises(ValueError, match="dataset 1 is empty but has weight"):
        Blend([Counted("a", 3), Counted("b", 0)], [1, 1])
    with pytest.raises(ValueError, match="size must be a non-negative integer"):
        Blend([Counted("a", 3)], [1], size=-1)
    assert len(Blend([Counted("a", 3), Counted("b", 0)], [1, 0])) == 3  # an empty dataset of weight 0

"""Several datasets mixed by weight into one map-style dataset (numpy only; no torch needed).

    from mmap_ninja.blend import Blend
    mix = Blend([web, books, code], weights=[0.6, 0.3, 0.1], seed=0)
    mix[i]                      # a sample of one of them
    mix.__getitems__(indices)   # a batch, gathered from each dataset in one call

At every prefix of the blend, each dataset has been drawn within one sample of its weight times
the prefix's length, the bound Megatron's ``BlendedDataset`` aims at (its greedy rule can miss it
slightly; the schedule here, Tijdeman's, cannot). Dataset ``d``'s draws go
through its samples in a shuffled order, a new one each pass, so a dataset smaller than its
share is cycled. The same arguments give the same blend in every process; a blend pickles as its
datasets (maps pickle by path) and arguments, and rebuilds its index where it is unpickled.
"""

from __future__ import annotations

from typing import Any, List, Optional, Sequence

import numpy as np

from . import _core

__all__ = ["Blend"]


class Blend:
    """``datasets`` (anything with ``len`` and ``[i]``; ``__getitems__`` is used when present)
    mixed by ``weights`` (finite, non-negative, any scale) into ``size`` samples (default: the sum of
    their lengths). ``dataset_index`` (``int32``) and ``sample_index`` (``int64``) say where
    each sample of the blend comes from; building them is one compiled pass, a lookup O(1)."""

    def __init__(self, datasets: Sequence[Any], weights: Sequence[float], size: Optional[int] = None,
                 seed: int = 0):
        datasets = list(datasets)
        weights = np.asarray(weights, dtype=np.float64)
        if not datasets or weights.shape != (len(datasets),):
            raise ValueError(f"a blend needs one weight per dataset: {len(datasets)} datasets, "
                             f"weights of shape {weights.shape}")
        if not np.isfinite(weights).all() or (weights < 0).any() or not (weights > 0).any():
            raise ValueError(f"weights must be finite, non-negative and not all 0, not {weights.tolist()}")
        lengths = [len(dataset) for dataset in datasets]
        for d, (length, weight) in enumerate(zip(lengths, weights)):
            if weight > 0 and length == 0:
                raise ValueError(f"dataset {d} is empty but has weight {weight}")
        if size is None:
            size = sum(lengths)
        if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 0:
            raise ValueError(f"size must be a non-negative integer, not {size!r}")
        self.datasets = datasets
        scaled = weights / weights.max()  # at most 1 each: their sum cannot overflow
        self.weights = scaled / scaled.sum()
        self.size = int(size)
        self.seed = int(seed)
        self._build()

    def _build(self) -> None:
        self.dataset_index, nth = _core.blend_choices(self.weights, self.size)
        self.sample_index = np.empty(self.size, dtype=np.int64)
        for d, dataset in enumerate(self.datasets):
            positions = np.flatnonzero(self.dataset_index == d)
            if len(positions):
                self.sample_index[positions] = self._draws(d, len(dataset), int(nth[positions[-1]]) + 1)[
                    nth[positions]]

    def _draws(self, d: int, length: int, count: int) -> np.ndarray:
        """The first ``count`` samples drawn from dataset ``d``: a new permutation per pass."""
        passes = -(-count // length)
        return np.concatenate([np.random.default_rng([self.seed & (2**64 - 1), d, p]).permutation(length)
                               for p in range(passes)])[:count]

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, i: int) -> Any:
        i = _core.normalize_index(i, self.size)
        if not isinstance(i, int):
            return self.__getitems__(i)
        return self.datasets[self.dataset_index[i]][int(self.sample_index[i])]

    def __getitems__(self, indices: Sequence[int]) -> List[Any]:
        """The samples at ``indices``: each dataset's share fetched in one call (its
        ``__getitems__`` when it has one), returned in the order asked."""
        indices = _core.batch_index(indices, self.size)
        sets, samples = self.dataset_index[indices], self.sample_index[indices]
        batch: List[Any] = [None] * len(indices)
        for d in np.unique(sets).tolist():
            at = np.flatnonzero(sets == d)
            dataset = self.datasets[d]
            wanted = samples[at].tolist()
            getitems = getattr(dataset, "__getitems__", None)
            got = getitems(wanted) if getitems is not None else [dataset[j] for j in wanted]
            for k, sample in zip(at.tolist(), got):
                batch[k] = sample
        return batch

    def __getstate__(self) -> dict:
        return {"datasets": self.datasets, "weights": self.weights, "size": self.size, "seed": self.seed}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._build()

    def __repr__(self) -> str:
        return f"Blend({len(self.datasets)} datasets, weights={np.round(self.weights, 4).tolist()}, size={self.size})"

"""PyTorch data loading (the ``torch`` extra; ``import mmap_ninja`` alone never imports torch).

Every map already works as a map-style dataset: it has ``len``, ``__getitem__`` and
``__getitems__``, which ``torch.utils.data.DataLoader`` calls to fetch a whole batch at once.
This module adds batches that reach the model without a copy after the one from the map:

- ``RaggedBatches(ragged, padded=True, pad_value=0, max_len=None)``: a dataset whose batches are
  one padded array (``RaggedMmap.padded``), or with ``padded=False`` one contiguous buffer
  (``RaggedMmap.take``);
- ``collate``: turns those batches into tensors with ``torch.from_numpy`` (no copy), with the
  lengths and, for padded batches, an attention mask;
- ``TokenizedCollate(tokenizer, pad_value=0, max_len=None)``: a collate for ``StringsMmap``
  batches, tokenizing each string with your function and padding the token ids.

    loader = DataLoader(RaggedBatches(tokens, max_len=512), batch_size=32, shuffle=True,
                        num_workers=2, collate_fn=collate)
    for batch in loader:
        model(batch["input"], attention_mask=batch["attention_mask"])
"""

from __future__ import annotations

from typing import Any, Callable, Dict, List, Optional, Sequence, Union

import numpy as np
import torch

from .ragged import RaggedBatch, RaggedMmap

__all__ = ["RaggedBatches", "PaddedBatch", "collate", "TokenizedCollate"]


class PaddedBatch(tuple):
    """``(padded, lengths)``: a padded array ``(B, L, *row_shape)`` and the valid length of
    each row (``int64``), as ``RaggedMmap.padded`` returns them."""

    __slots__ = ()

    def __new__(cls, padded: np.ndarray, lengths: np.ndarray):
        return super().__new__(cls, (padded, lengths))


class RaggedBatches(torch.utils.data.Dataset):
    """A ``RaggedMmap`` as a dataset whose batches come out of the map in one copy.

    ``dataset[i]`` is sample ``i`` as a tensor; ``dataset.__getitems__(indices)`` (what the
    DataLoader calls) is a ``PaddedBatch`` (``padded=True``: rows padded with ``pad_value`` to
    the longest sample, or cut to ``max_len``) or a ``RaggedBatch`` (``padded=False``). Use
    ``collate`` as the DataLoader's ``collate_fn``.
    """

    def __init__(self, ragged: RaggedMmap, padded: bool = True, pad_value: Any = 0, max_len: Optional[int] = None):
        self.ragged = ragged
        self.padded = padded
        self.pad_value = pad_value
        self.max_len = max_len

    def __len__(self) -> int:
        return len(self.ragged)

    def __getitem__(self, i: int) -> torch.Tensor:
        return torch.as_tensor(np.array(self.ragged[i]))

    def __getitems__(self, indices: Sequence[int]) -> Union[PaddedBatch, RaggedBatch]:
        if self.padded:
            return PaddedBatch(*self.ragged.padded(indices, pad_value=self.pad_value, max_len=self.max_len))
        return self.ragged.take(indices)


def collate(batch: Union[PaddedBatch, RaggedBatch, List[Any]]) -> Dict[str, Any]:
    """Tensors of a batch, sharing its memory (``torch.from_numpy``):

    - a ``PaddedBatch``: ``input`` ``(B, L, ...)``, ``lengths`` ``(B,)`` and ``attention_mask``
      ``(B, L)``, ``True`` where a row holds a sample's values;
    - a ``RaggedBatch``: ``values`` (1-d), ``offsets`` ``(B + 1,)``, ``lengths`` ``(B,)`` and
      ``shapes`` (a list of tuples), sample ``k`` being ``values[offsets[k]:offsets[k + 1]]``;
    - a list of samples (what maps return without ``RaggedBatches``): padded first, as one
      ``PaddedBatch`` of their first axis, with a copy.
    """
    if isinstance(batch, list):
        batch = _pad(batch)
    if isinstance(batch, PaddedBatch):
        padded, lengths = batch
        lengths = torch.from_numpy(lengths)
        positions = torch.arange(padded.shape[1] if padded.ndim > 1 else 0)
        return {"input": torch.from_numpy(padded), "lengths": lengths,
                "attention_mask": positions[None, :] < lengths[:, None]}
    if isinstance(batch, RaggedBatch):
        return {"values": torch.from_numpy(batch.values), "offsets": torch.from_numpy(batch.offsets.copy()),
                "lengths": torch.from_numpy(batch.lengths), "shapes": batch.shapes}
    raise TypeError(f"collate takes a PaddedBatch, a RaggedBatch or a list of samples, not {type(batch).__name__}")


def _pad(samples: List[Any], pad_value: Any = 0, max_len: Optional[int] = None) -> PaddedBatch:
    """Samples (arrays with a first axis, or sequences of ids) padded into one array."""
    arrays = [np.asarray(sample) for sample in samples]
    if not arrays:
        return PaddedBatch(np.zeros((0, max_len or 0), np.int64), np.zeros(0, np.int64))
    if any(arr.ndim == 0 for arr in arrays):
        raise ValueError("a padded batch needs samples with at least one axis")
    rows = {arr.shape[1:] for arr in arrays}
    if len(rows) > 1:
        raise ValueError(f"samples differ after their first axis: {sorted(rows)}")
    lengths = np.array([len(arr) for arr in arrays], dtype=np.int64)
    width = int(lengths.max()) if max_len is None else max_len
    dtype = np.result_type(*arrays) if any(arr.size for arr in arrays) else np.int64
    padded = np.full((len(arrays), width, *arrays[0].shape[1:]), pad_value, dtype=dtype)
    for k, arr in enumerate(arrays):
        kept = min(len(arr), width)
        padded[k, :kept] = arr[:kept]
    return PaddedBatch(padded, np.minimum(lengths, width))


class TokenizedCollate:
    """A ``collate_fn`` for batches of a ``StringsMmap``: ``tokenizer(text)`` gives the token
    ids of each string (any sequence of ints), which are padded with ``pad_value`` (and cut to
    ``max_len``) into ``input_ids`` ``(B, L)``, with ``lengths`` and ``attention_mask``.

    Define the tokenizer at module level (not a lambda) to use DataLoader workers started by
    spawn, which pickle it.
    """

    def __init__(self, tokenizer: Callable[[str], Sequence[int]], pad_value: int = 0, max_len: Optional[int] = None):
        self.tokenizer = tokenizer
        self.pad_value = pad_value
        self.max_len = max_len

    def __call__(self, texts: List[str]) -> Dict[str, torch.Tensor]:
        ids = [np.asarray(self.tokenizer(text), dtype=np.int64).reshape(-1) for text in texts]
        batch = collate(_pad(ids, self.pad_value, self.max_len))
        return {"input_ids": batch["input"], "lengths": batch["lengths"], "attention_mask": batch["attention_mask"]}
